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

The matrix is stored as ``{split}.{src}-{tgt}.assist-tfidf.{checksum}.npz`` next
to the data-bin, where ``checksum`` covers the binarized data files, so a
changed dataset gets new features instead of silently mismatched ones.
``fairseq-efficiency-featurize DATA-BIN`` builds them ahead of training.
"""
import argparse
import glob
import hashlib
import logging
import os
import sys

import numpy as np
import scipy.sparse as sp

logger = logging.getLogger(__name__)

FEATURE_VERSION = 2  # 2: IDF computed by TfidfTransformer.fit (float32, as the counts)
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


def build_features(prefix, src, tgt, src_vocab, tgt_vocab, nspecial=4, chunk_rows=_CHUNK_ROWS):
    """TF-IDF matrix (CSR, float32, one L2-normalised row per pair) of a binarized split."""
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
    # float32 counts in, float32 TF-IDF out, weighted and normalised in place
    x = TfidfTransformer(norm="l2", use_idf=True, smooth_idf=True).fit(x).transform(x, copy=False)
    x.indices = x.indices.astype(np.int32, copy=False)
    return x


def feature_path(prefix, checksum):
    return f"{prefix}assist-tfidf.{checksum}.npz"


def load_or_build(data_dir, split, src, tgt, src_vocab, tgt_vocab, nspecial=4, rebuild=False):
    """Features of ``split``: loaded from the cache when the data checksum matches, else built.

    Returns ``(matrix, path)``; stale caches of the same split are removed.
    """
    prefix = split_prefix(data_dir, split, src, tgt)
    checksum = data_checksum(prefix, src, tgt)
    path = feature_path(prefix, checksum)
    if os.path.isfile(path) and not rebuild:
        x = sp.load_npz(path).tocsr()
        if x.shape[1] == src_vocab + tgt_vocab:
            return x, path
        logger.warning("feature cache %s has %d columns, expected %d: rebuilding",
                       path, x.shape[1], src_vocab + tgt_vocab)
    logger.info("building AutoAssist TF-IDF features for %s", prefix)
    x = build_features(prefix, src, tgt, src_vocab, tgt_vocab, nspecial)
    for stale in glob.glob(f"{prefix}assist-tfidf.*.npz"):
        if stale != path:
            os.remove(stale)
    tmp = f"{path}.{os.getpid()}.tmp.npz"
    try:
        sp.save_npz(tmp, x, compressed=False)
        os.replace(tmp, path)  # atomic: a crash never leaves a truncated cache
    except OSError as e:  # read-only data directory: keep the features in memory
        logger.warning("cannot write feature cache %s (%s); features kept in memory", path, e)
        if os.path.exists(tmp):
            os.remove(tmp)
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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        src, tgt = args.source_lang, args.target_lang
        if src is None or tgt is None:
            src, tgt = _infer_langs(args.data_bin, args.split)
        sv, nspecial = _dict_size(args.data_bin, src)
        tv, _ = _dict_size(args.data_bin, tgt)
        x, path = load_or_build(args.data_bin, args.split, src, tgt, sv, tv, nspecial, args.rebuild)
    except (FileNotFoundError, ValueError) as e:
        parser.exit(2, f"fairseq-efficiency-featurize: error: {e}\n")
    print(f"{path}\t{x.shape[0]} pairs\t{x.shape[1]} features\t{x.nnz} non-zeros")
    return 0


if __name__ == "__main__":
    sys.exit(main())
