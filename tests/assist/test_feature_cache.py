"""The AutoAssist feature cache: verified by its own sha256 and the data-bin's shape, rebuilt
with a warning naming the file when it is damaged, never unpickled."""
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
