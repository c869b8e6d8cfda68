"""TF-IDF features of the pairs (assist/features.py) and their cache: verified by its own
sha256 and the data-bin's shape, rebuilt with a warning naming the file when it is damaged,
never unpickled."""
import json
import logging
import os
import shutil

import numpy as np
import pytest
import scipy.sparse as sp

from fairseq_efficiency.assist import features as F


class Payload:
    """Creates a file when unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def data(tiny_data_bin, tmp_path):
    d = str(tmp_path / "bin")
    shutil.copytree(tiny_data_bin, d)
    for f in os.listdir(d):
        if ".assist-tfidf." in f:
            os.remove(os.path.join(d, f))
    sv, nspec = F._dict_size(d, "src")
    tv, _ = F._dict_size(d, "tgt")
    return lambda: F.load_or_build(d, "train", "src", "tgt", sv, tv, nspec)


def _write_sidecar(path, shape, nnz):
    with open(F.sidecar_path(path), "w") as f:
        json.dump({"version": F.FEATURE_VERSION, "sha256": F.file_sha256(path),
                   "shape": list(shape), "nnz": nnz}, f)


@pytest.mark.parametrize("damage", ["truncated", "random-bytes", "wrong-rows", "wrong-rows-signed",
                                    "pickled-signed", "bad-indices-signed", "no-checksum"])
def test_damaged_cache_is_rebuilt_with_a_warning(data, damage, caplog, tmp_path):
    x, path = data()
    cache_files = sorted(f for f in os.listdir(os.path.dirname(path)) if ".assist-tfidf." in f)
    assert cache_files == [os.path.basename(path), os.path.basename(F.sidecar_path(path))]
    raw = open(path, "rb").read()
    marker = str(tmp_path / "MARKER")
    if damage == "truncated":
        open(path, "wb").write(raw[: len(raw) // 2])
    elif damage == "random-bytes":
        open(path, "wb").write(np.random.default_rng(0).bytes(len(raw)))
    elif damage == "wrong-rows":  # a valid matrix of another size, checksum file left stale
        sp.save_npz(path, x[:-7], compressed=False)
    elif damage == "wrong-rows-signed":  # ... and with a matching checksum file
        F.save_features(path, x[:-7])
    elif damage == "pickled-signed":  # object arrays (pickles) under a matching checksum
        np.savez(path, data=np.array([Payload(marker)] * x.nnz, dtype=object),
                 indices=x.indices, indptr=x.indptr, format=np.array(b"csr"),
                 shape=np.array(x.shape))
        _write_sidecar(path, x.shape, x.nnz)
    elif damage == "bad-indices-signed":  # column ids out of range, checksum matches
        bad = x.copy()
        bad.indices[::3] = x.shape[1] + 5
        sp.save_npz(path, bad, compressed=False)
        _write_sidecar(path, x.shape, x.nnz)
    elif damage == "no-checksum":
        os.remove(F.sidecar_path(path))
    with caplog.at_level(logging.WARNING):
        x2, path2 = data()
    assert path2 == path and x2.shape == x.shape and (x2 != x).nnz == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and path in warnings[0] and "rebuilding" in warnings[0], warnings
    assert "allow_pickle" not in caplog.text and "pickle" not in warnings[0]
    assert not os.path.exists(marker)
    # the rebuilt cache verifies: reused silently, nothing rewritten, no temporary file left
    caplog.clear()
    mtime = os.path.getmtime(path)
    with caplog.at_level(logging.WARNING):
        x3, _ = data()
    assert not caplog.records and os.path.getmtime(path) == mtime and (x3 != x).nnz == 0
    left = sorted(f for f in os.listdir(os.path.dirname(path)) if ".assist-tfidf." in f)
    assert left == cache_files


def test_oversized_array_header_is_refused_before_allocation(data, caplog):
    """A signed cache whose array header claims far more elements than the file holds is
    refused from the header (the read would otherwise allocate what the header says)."""
    import zipfile

    import numpy.lib.format as npy

    x, path = data()
    nnz = 10 ** 10  # 40 GB of float32 claimed by a few bytes
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for key, arr in (("indices", x.indices), ("indptr", x.indptr), ("format", np.array(b"csr")),
                         ("shape", np.array(x.shape))):
            with zf.open(f"{key}.npy", "w") as f:
                npy.write_array(f, arr)
        with zf.open("data.npy", "w") as f:
            npy.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (nnz,)})
            f.write(b"\0" * 64)
    _write_sidecar(path, x.shape, nnz)
    with pytest.raises(F.CorruptCache, match="array data is truncated or padded"):
        F.read_features(path, *x.shape)
    with caplog.at_level(logging.WARNING):
        x2, _ = data()
    assert (x2 != x).nnz == 0 and path in caplog.text


def test_features_match_tfidf_and_are_rebuilt_when_data_changes(tiny_data_bin, tmp_path):
    from sklearn.feature_extraction.text import TfidfTransformer

    data = str(tmp_path / "bin")
    shutil.copytree(tiny_data_bin, data)
    for f in os.listdir(data):
        if ".assist-tfidf." in f:
            os.remove(os.path.join(data, f))
    sv, nspec = F._dict_size(data, "src")
    tv, _ = F._dict_size(data, "tgt")
    x, path = F.load_or_build(data, "train", "src", "tgt", sv, tv, nspec)
    assert os.path.isfile(path) and x.dtype == np.float32
    # reference: dense term counts of the same token ids through sklearn's transformer
    prefix = F.split_prefix(data, "train", "src", "tgt")
    s_tok, s_sizes = F.read_token_ids(prefix + "src")
    t_tok, t_sizes = F.read_token_ids(prefix + "tgt")
    counts = np.zeros((len(s_sizes), sv + tv))
    so, to = np.concatenate([[0], np.cumsum(s_sizes)]), np.concatenate([[0], np.cumsum(t_sizes)])
    for i in range(len(s_sizes)):
        for t in s_tok[so[i]:so[i + 1]]:
            if t >= nspec:
                counts[i, t] += 1
        for t in t_tok[to[i]:to[i + 1]]:
            if t >= nspec:
                counts[i, sv + t] += 1
    ref = TfidfTransformer().fit_transform(sp.csr_matrix(counts))
    np.testing.assert_allclose(x.toarray(), ref.toarray(), rtol=1e-5, atol=1e-6)
    # cached: the same file is reused
    mtime = os.path.getmtime(path)
    x2, path2 = F.load_or_build(data, "train", "src", "tgt", sv, tv, nspec)
    assert path2 == path and os.path.getmtime(path) == mtime
    # data changed (same size, one token id altered): new checksum, features rebuilt
    bin_path = prefix + "tgt.bin"
    raw = np.fromfile(bin_path, dtype=t_tok.dtype)
    raw[0] = nspec if raw[0] != nspec else nspec + 1
    raw.tofile(bin_path)
    x3, path3 = F.load_or_build(data, "train", "src", "tgt", sv, tv, nspec)
    assert path3 != path and not os.path.exists(path)
    assert (x3 != x).nnz > 0


def test_featurize_cli(tiny_data_bin, tmp_path, capsys):
    data = str(tmp_path / "bin")
    shutil.copytree(tiny_data_bin, data)
    assert F.main([data]) == 0
    out = capsys.readouterr().out
    assert "600 pairs" in out and ".assist-tfidf." in out
    with pytest.raises(SystemExit) as e:
        F.main([str(tmp_path / "missing")])
    assert e.value.code == 2
