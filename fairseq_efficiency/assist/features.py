"""TF-IDF features of source-target pairs for the Assistant (AutoAssist, section 5.2).

Each training pair ``(x_i, y_i)`` is represented by the TF-IDF vector of its
token ids, with source and target in separate namespaces: column ``s`` is
source token ``s`` and column ``|V_src| + t`` is target token ``t`` (special
symbols such as ``</s>`` are left out). Because fairseq has already mapped every
token to an integer id, the term-count matrix is built directly from the
data-bin's flat token buffer with numpy -- an exact, collision-free "hashing"
of the terms -- and scikit-learn's :class:`~sklearn.feature_extraction.text.TfidfTransformer`
supplies the IDF weighting and L2 row normalisation. Term counts are built in
chunks of rows, stacked once, then weighted and normalised in place, so memory
peaks at the token ids plus about twice the result (the chunks and their stacked
copy) plus one chunk's temporaries (``benchmarks/autoassist.py --featurize-only``
measures the peak, and compares with ``HashingVectorizer`` over token strings).

Kind ``tfidf-tf-len`` (the AutoAssist authors' features) appends, after the
TF-IDF columns, the term frequencies ``count / length`` of source and target
(same namespaces, ``|V_src| + |V_tgt|`` more columns) and the two lengths
(non-special tokens) divided by 10, the authors' scale.

The matrix is stored as ``{split}.{src}-{tgt}.assist-{kind}.{checksum}.npz`` next
to the data-bin, where ``checksum`` covers the binarized data files, so a
changed dataset gets new features instead of silently mismatched ones. A JSON
sidecar (``.npz.json``, written after the matrix) holds the sha256 of the cache
file itself, its shape and number of non-zeros: a cache that does not match it,
or whose shape or arrays do not fit the data-bin, is rebuilt with a warning
naming the file. The cache is read without pickle, and every array header is
checked against the file's size before anything is allocated. Both files are
written to a temporary name and renamed, so a crash never leaves a partial cache.
``fairseq-efficiency-featurize DATA-BIN`` builds them ahead of training.
"""
import argparse
import glob
import hashlib
import json
import logging
import os
import sys
import zipfile

import numpy as np
import scipy.sparse as sp

logger = logging.getLogger(__name__)

# 2: IDF computed by TfidfTransformer.fit (float32, as the counts); 3: sha256 sidecar
FEATURE_VERSION = 3
_CHUNK_ROWS = 200_000


def split_prefix(data_dir, split, src, tgt):
    """Path prefix of a binarized split (fairseq's ``{split}.{src}-{tgt}.`` naming)."""
    for a, b in ((src, tgt), (tgt, src)):
        prefix = os.path.join(data_dir, f"{split}.{a}-{b}.")
        if os.path.isfile(prefix + f"{src}.idx") and os.path.isfile(prefix + f"{tgt}.idx"):
            return prefix
    raise FileNotFoundError(
        f"no binarized {split} split for {src}-{tgt} in {data_dir} "
        f"(expected {split}.{src}-{tgt}.{src}.idx/.bin)"
    )


def data_checksum(prefix, src, tgt, chunk=1 << 22):
    """blake2b digest of the split's ``.idx``/``.bin`` files (both languages)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"v{FEATURE_VERSION}".encode())
    for lang in (src, tgt):
        for ext in ("idx", "bin"):
            with open(f"{prefix}{lang}.{ext}", "rb") as f:
                while True:
                    block = f.read(chunk)
                    if not block:
                        break
                    h.update(block)
    return h.hexdigest()


def read_token_ids(path):
    """Flat token-id array (a copy, in the data's compact dtype) and per-sentence lengths."""
    from fairseq.data import data_utils, indexed_dataset

    ds = data_utils.load_indexed_dataset(path, None)
    if ds is None:
        raise FileNotFoundError(f"cannot read binarized data {path}.idx/.bin")
    sizes = np.asarray(ds.sizes, dtype=np.int64)
    if isinstance(ds, indexed_dataset.MMapIndexedDataset):
        index = ds._index
        dtype = np.dtype(index.dtype)
        pointers = np.asarray(index._pointers, dtype=np.int64)
        total = int(sizes.sum())
        contiguous = len(sizes) == 0 or (
            pointers[0] == 0 and np.array_equal(pointers[1:], np.cumsum(sizes[:-1]) * dtype.itemsize)
        )
        if contiguous:
            tokens = np.frombuffer(ds._bin_buffer, dtype=dtype, count=total).copy()
            return tokens, sizes
    tokens = np.concatenate([ds[i].numpy() for i in range(len(ds))]) if len(ds) else np.zeros(0, np.int64)
    return tokens, sizes


def _counts(tokens, sizes, nspecial, offset, n_cols, row_lo, row_hi, starts):
    """Term-count CSR for rows ``[row_lo, row_hi)`` of one side, columns shifted by ``offset``."""
    lo, hi = starts[row_lo], starts[row_hi]
    tok = np.asarray(tokens[lo:hi], dtype=np.int64)
    rows = np.repeat(np.arange(row_hi - row_lo), sizes[row_lo:row_hi])
    keep = tok >= nspecial
    # COO -> CSR sums the duplicate (row, token) entries: the term counts
    return sp.csr_matrix(
        (np.ones(int(keep.sum()), dtype=np.float32), (rows[keep], tok[keep] + offset)),
        shape=(row_hi - row_lo, n_cols),
    )


KINDS = ("tfidf", "tfidf-tf-len")
LENGTH_SCALE = 10.0  # the authors' max_sen_len


def n_columns(kind, src_vocab, tgt_vocab):
    """Feature columns of ``kind``: TF-IDF, then (``tfidf-tf-len``) TF and two lengths."""
    if kind not in KINDS:
        raise ValueError(f"unknown feature kind {kind!r} (one of {', '.join(KINDS)})")
    v = src_vocab + tgt_vocab
    return v if kind == "tfidf" else 2 * v + 2


def tf_length_features(counts, src_vocab):
    """Term frequencies ``count / length`` per side and the side lengths / 10, from the
    term-count matrix ``counts`` [n, |V_src| + |V_tgt|] (CSR, float32)."""
    from sklearn.preprocessing import normalize

    s, t = counts[:, :src_vocab], counts[:, src_vocab:]
    lengths = np.stack([np.asarray(s.sum(1)).ravel(), np.asarray(t.sum(1)).ravel()], axis=1)
    return sp.hstack([normalize(s, norm="l1"), normalize(t, norm="l1"),
                      sp.csr_matrix((lengths / LENGTH_SCALE).astype(np.float32))],
                     format="csr", dtype=np.float32)


def build_features(prefix, src, tgt, src_vocab, tgt_vocab, nspecial=4, chunk_rows=_CHUNK_ROWS,
                   kind="tfidf"):
    """TF-IDF matrix (CSR, float32, one L2-normalised row per pair) of a binarized split
    (``kind="tfidf-tf-len"``: followed by the TF and length columns)."""
    n_columns(kind, src_vocab, tgt_vocab)
    from sklearn.feature_extraction.text import TfidfTransformer

    s_tok, s_sizes = read_token_ids(prefix + src)
    t_tok, t_sizes = read_token_ids(prefix + tgt)
    if len(s_sizes) != len(t_sizes):
        raise ValueError(f"{prefix}: {len(s_sizes)} source vs {len(t_sizes)} target sentences")
    n = len(s_sizes)
    n_cols = src_vocab + tgt_vocab
    s_starts = np.concatenate([[0], np.cumsum(s_sizes)])
    t_starts = np.concatenate([[0], np.cumsum(t_sizes)])
    chunks = []
    for lo in range(0, n, chunk_rows):
        hi = min(n, lo + chunk_rows)
        chunks.append(_counts(s_tok, s_sizes, nspecial, 0, n_cols, lo, hi, s_starts)
                      + _counts(t_tok, t_sizes, nspecial, src_vocab, n_cols, lo, hi, t_starts))
    if not chunks:
        return sp.csr_matrix((0, n_cols), dtype=np.float32)
    x = sp.vstack(chunks, format="csr")
    del chunks
    extra = tf_length_features(x, src_vocab) if kind == "tfidf-tf-len" else None
    # float32 counts in, float32 TF-IDF out, weighted and normalised in place
    x = TfidfTransformer(norm="l2", use_idf=True, smooth_idf=True).fit(x).transform(x, copy=False)
    if extra is not None:
        x = sp.hstack([x, extra], format="csr", dtype=np.float32)
    x.indices = x.indices.astype(np.int32, copy=False)
    return x


def feature_path(prefix, checksum, kind="tfidf"):
    return f"{prefix}assist-{kind}.{checksum}.npz"


def sidecar_path(path):
    """The JSON file holding the cache's own sha256, shape and number of non-zeros."""
    return path + ".json"


class CorruptCache(ValueError):
    """A feature cache that is unreadable or does not fit the data-bin."""


def file_sha256(path, chunk=1 << 22):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def num_pairs(prefix, src, tgt):
    """Sentence pairs of a binarized split, from its ``.idx`` files (no token is read)."""
    from fairseq.data import indexed_dataset

    counts = []
    for lang in (src, tgt):
        impl = indexed_dataset.infer_dataset_impl(prefix + lang)
        ds = indexed_dataset.make_dataset(prefix + lang, impl=impl or "cached")
        if ds is None:
            raise FileNotFoundError(f"cannot read binarized data {prefix}{lang}.idx/.bin")
        counts.append(len(ds))
    if counts[0] != counts[1]:
        raise ValueError(f"{prefix}: {counts[0]} source vs {counts[1]} target sentences")
    return counts[0]


def _write_atomic(path, write, suffix=""):
    """``write(tmp)`` then rename to ``path``: readers see the old file or the whole new one."""
    tmp = f"{path}.{os.getpid()}.tmp{suffix}"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_features(path, x):
    """The CSR matrix (uncompressed ``.npz``), then its sidecar, each written atomically."""
    meta = {"version": FEATURE_VERSION, "shape": [int(x.shape[0]), int(x.shape[1])],
            "nnz": int(x.nnz)}

    def write_npz(tmp):
        sp.save_npz(tmp, x, compressed=False)
        meta["sha256"] = file_sha256(tmp)  # of the bytes this process wrote

    _write_atomic(path, write_npz, suffix=".npz")

    def write_meta(tmp):
        with open(tmp, "w") as f:
            json.dump(meta, f)

    _write_atomic(sidecar_path(path), write_meta)


def _read_meta(path):
    side = sidecar_path(path)
    try:
        with open(side, "rb") as f:
            meta = json.loads(f.read(4096).decode("utf-8"))
    except FileNotFoundError:
        raise CorruptCache(f"its checksum file {side} is missing") from None
    except (OSError, ValueError) as e:
        raise CorruptCache(f"its checksum file {side} is unreadable ({e})") from None
    ok = (isinstance(meta, dict) and isinstance(meta.get("sha256"), str)
          and isinstance(meta.get("shape"), list) and len(meta["shape"]) == 2
          and all(type(v) is int and v >= 0 for v in meta["shape"] + [meta.get("nnz")]))
    if not ok:
        raise CorruptCache(f"its checksum file {side} is malformed")
    return meta


def _array_headers(zf, expected):
    """Check every member's ``.npy`` header before any array is allocated: the expected
    names, shapes and dtypes, stored uncompressed and exactly as long as the header says."""
    import numpy.lib.format as npy

    names = sorted(zf.namelist())
    if names != sorted(f"{k}.npy" for k in expected):
        raise CorruptCache(f"holds arrays {names}, expected a CSR matrix")
    for key, (shape, kinds) in expected.items():
        info = zf.getinfo(f"{key}.npy")
        if info.compress_type != zipfile.ZIP_STORED:
            raise CorruptCache(f"array {key} is compressed")
        with zf.open(info) as f:
            version = npy.read_magic(f)
            read = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
            got_shape, _, dtype = read(f)
            offset = f.tell()
        if dtype.hasobject or dtype.kind not in kinds or got_shape != shape:
            raise CorruptCache(f"array {key} is {dtype}{list(got_shape)}, expected {list(shape)}")
        if offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize != info.file_size:
            raise CorruptCache(f"array {key} is truncated or padded")


def read_features(path, n_rows, n_cols):
    """The cached CSR matrix, checked against its sidecar and the data-bin's shape.

    Raises :class:`CorruptCache` (never reads pickled objects, never allocates more than
    the file holds)."""
    import numpy.lib.format as npy

    meta = _read_meta(path)
    if meta["shape"] != [n_rows, n_cols]:
        raise CorruptCache(f"it is {meta['shape'][0]} x {meta['shape'][1]}, the data-bin "
                           f"needs {n_rows} x {n_cols}")
    if file_sha256(path) != meta["sha256"]:
        raise CorruptCache("its sha256 does not match its checksum file (truncated or altered)")
    nnz = meta["nnz"]
    expected = {"data": ((nnz,), "f"), "indices": ((nnz,), "iu"), "indptr": ((n_rows + 1,), "iu"),
                "format": ((), "SU"), "shape": ((2,), "iu")}
    try:
        with zipfile.ZipFile(path) as zf:
            _array_headers(zf, expected)
            arrays = {}
            for key in expected:
                with zf.open(f"{key}.npy") as f:
                    arrays[key] = npy.read_array(f, allow_pickle=False)
    except CorruptCache:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise CorruptCache(f"it is not a readable .npz file ({e})") from None
    fmt = arrays["format"].item()
    if (fmt.decode("ascii", "replace") if isinstance(fmt, bytes) else fmt) != "csr" \
            or [int(v) for v in arrays["shape"]] != [n_rows, n_cols]:
        raise CorruptCache("it does not hold the expected CSR matrix")
    try:
        x = sp.csr_matrix((arrays["data"], arrays["indices"], arrays["indptr"]),
                          shape=(n_rows, n_cols), copy=False)
        x.check_format(full_check=True)  # monotone indptr, column ids within range
    except ValueError as e:
        raise CorruptCache(f"its CSR structure is invalid ({e})") from None
    if not np.isfinite(x.data).all():
        raise CorruptCache("it holds non-finite values")
    return x


def _remove_stale(prefix, path, kind="tfidf"):
    """Caches (and sidecars) of this split and kind for other data checksums: written by
    this module."""
    own = os.path.basename(path)
    for stale in glob.glob(f"{glob.escape(prefix)}assist-{kind}.*"):
        name = os.path.basename(stale)
        if name.startswith(own):  # this cache, its sidecar, another process' temporary file
            continue
        if name.endswith((".npz", ".npz.json")) or ".npz." in name:
            os.remove(stale)


def load_or_build(data_dir, split, src, tgt, src_vocab, tgt_vocab, nspecial=4, rebuild=False,
                  kind="tfidf"):
    """Features of ``split``: loaded from the cache when the data checksum matches and the
    cache verifies, else built (a corrupted cache is rebuilt with a warning naming it).

    Returns ``(matrix, path)``; stale caches of the same split are removed.
    """
    prefix = split_prefix(data_dir, split, src, tgt)
    checksum = data_checksum(prefix, src, tgt)
    path = feature_path(prefix, checksum, kind)
    if os.path.isfile(path) and not rebuild:
        try:
            return read_features(path, num_pairs(prefix, src, tgt),
                                 n_columns(kind, src_vocab, tgt_vocab)), path
        except CorruptCache as e:
            logger.warning("AutoAssist feature cache %s is unusable: %s; rebuilding it", path, e)
    logger.info("building AutoAssist %s features for %s", kind, prefix)
    x = build_features(prefix, src, tgt, src_vocab, tgt_vocab, nspecial, kind=kind)
    _remove_stale(prefix, path, kind)
    try:
        save_features(path, x)
    except OSError as e:  # read-only data directory: keep the features in memory
        logger.warning("cannot write feature cache %s (%s); features kept in memory", path, e)
    return x, path


def _dict_size(data_dir, lang):
    from fairseq.data import Dictionary

    path = os.path.join(data_dir, f"dict.{lang}.txt")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"missing dictionary {path}")
    d = Dictionary.load(path)
    return len(d), d.nspecial


def _infer_langs(data_dir, split):
    """The language pair of the data-bin, as fairseq's translation task infers it."""
    from fairseq.data import data_utils

    src, tgt = data_utils.infer_language_pair(data_dir) if os.path.isdir(data_dir) else (None, None)
    if src is None or tgt is None:
        raise FileNotFoundError(f"no binarized {split} split in {data_dir}")
    return src, tgt


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="fairseq-efficiency-featurize",
        description="Build (or verify) the AutoAssist TF-IDF features of a fairseq data-bin.",
    )
    parser.add_argument("data_bin", help="fairseq-preprocess output directory")
    parser.add_argument("-s", "--source-lang", default=None, help="source language (inferred)")
    parser.add_argument("-t", "--target-lang", default=None, help="target language (inferred)")
    parser.add_argument("--split", default="train", help="split to featurize (default: train)")
    parser.add_argument("--rebuild", action="store_true", help="rebuild even if the cache is valid")
    parser.add_argument("--features", choices=KINDS, default="tfidf",
                        help="feature kind (as --assist-features; default: tfidf)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        src, tgt = args.source_lang, args.target_lang
        if src is None or tgt is None:
            src, tgt = _infer_langs(args.data_bin, args.split)
        sv, nspecial = _dict_size(args.data_bin, src)
        tv, _ = _dict_size(args.data_bin, tgt)
        x, path = load_or_build(args.data_bin, args.split, src, tgt, sv, tv, nspecial, args.rebuild,
                                kind=args.features)
    except (FileNotFoundError, ValueError) as e:
        parser.exit(2, f"fairseq-efficiency-featurize: error: {e}\n")
    print(f"{path}\t{x.shape[0]} pairs\t{x.shape[1]} features\t{x.nnz} non-zeros")
    return 0


if __name__ == "__main__":
    sys.exit(main())
