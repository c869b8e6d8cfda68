"""Generate the embedded corpus and binarize it into a fairseq data-bin.

``fairseq-efficiency-prepare OUT_DIR`` writes ``OUT_DIR/text`` (the plain-text
corpus, see :mod:`fairseq_efficiency.data.synthetic`) and ``OUT_DIR/data-bin``
(``fairseq-preprocess`` output).  A finished data-bin is reused when it was made
from the same generator settings; it is rebuilt when they change.
"""
import argparse
import json
import logging
import os
import shutil
import sys
from dataclasses import asdict

from fairseq_efficiency.data import synthetic

SRC, TGT = "src", "tgt"
_STAMP = "fairseq_efficiency_corpus.json"


def binarize(text_dir, dest_dir, src=SRC, tgt=TGT, joined_dictionary=False, workers=1,
             splits=("train", "valid", "test")):
    """Run ``fairseq-preprocess`` on ``text_dir/{split}.{src,tgt}`` into ``dest_dir``."""
    from fairseq import options
    from fairseq_cli import preprocess

    for split in splits:
        for lang in (src, tgt):
            path = os.path.join(text_dir, f"{split}.{lang}")
            if not os.path.isfile(path):
                raise FileNotFoundError(f"missing corpus file {path}")
    argv = [
        "--source-lang", src, "--target-lang", tgt,
        "--trainpref", os.path.join(text_dir, "train"),
        "--destdir", dest_dir,
        "--workers", str(workers),
    ]
    if "valid" in splits:
        argv += ["--validpref", os.path.join(text_dir, "valid")]
    if "test" in splits:
        argv += ["--testpref", os.path.join(text_dir, "test")]
    if joined_dictionary:
        argv.append("--joined-dictionary")
    parser = options.get_preprocessing_parser()
    preprocess.main(parser.parse_args(argv))


def prepare(out_dir, cfg: synthetic.CorpusConfig, joined_dictionary=False, workers=1, force=False):
    """Generate + binarize unless an identical data-bin already exists; returns its path."""
    cfg.validate()
    text_dir = os.path.join(out_dir, "text")
    bin_dir = os.path.join(out_dir, "data-bin")
    wanted = {"corpus": asdict(cfg), "joined_dictionary": joined_dictionary, "langs": [SRC, TGT]}
    stamp = os.path.join(bin_dir, _STAMP)
    if not force and os.path.isfile(stamp):
        with open(stamp, encoding="utf-8") as f:
            if json.load(f) == wanted:
                return bin_dir
    synthetic.write_corpus(cfg, text_dir, SRC, TGT)
    tmp_bin = bin_dir + ".tmp"
    shutil.rmtree(tmp_bin, ignore_errors=True)
    binarize(text_dir, tmp_bin, joined_dictionary=joined_dictionary, workers=workers)
    for split in ("train", "valid", "test"):  # keep the instance classes next to the binaries
        shutil.copy(os.path.join(text_dir, f"{split}.kind"), os.path.join(tmp_bin, f"{split}.kind"))
    with open(os.path.join(tmp_bin, _STAMP), "w", encoding="utf-8") as f:
        json.dump(wanted, f, indent=2, sort_keys=True)
    shutil.rmtree(bin_dir, ignore_errors=True)
    os.replace(tmp_bin, bin_dir)  # a crash never leaves a half-written data-bin behind
    return bin_dir


def main(argv=None):
    # fairseq CLIs log to stdout; keep stdout for the data-bin path (DATA=$(...))
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s",
                        level=logging.INFO, stream=sys.stderr)
    parser = argparse.ArgumentParser(
        prog="fairseq-efficiency-prepare",
        description="Generate the embedded corpus and binarize it with fairseq-preprocess.",
    )
    parser.add_argument("out_dir", help="writes OUT_DIR/text and OUT_DIR/data-bin")
    parser.add_argument("--joined-dictionary", action="store_true",
                        help="one dictionary for both sides (needed to share embeddings)")
    parser.add_argument("--workers", type=int, default=1, help="fairseq-preprocess workers")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    synthetic.add_args(parser)
    args = parser.parse_args(argv)
    try:
        cfg = synthetic.config_from_args(args)
    except ValueError as e:
        parser.exit(2, f"fairseq-efficiency-prepare: error: {e}\n")
    if args.workers < 1:
        parser.exit(2, "fairseq-efficiency-prepare: error: --workers must be >= 1\n")
    path = prepare(args.out_dir, cfg, args.joined_dictionary, args.workers, args.force)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
