"""Generate the embedded corpus and binarize it into a fairseq data-bin.

``fairseq-efficiency-prepare OUT_DIR`` writes ``OUT_DIR/text`` (the plain-text
corpus, see :mod:`fairseq_efficiency.data.synthetic`) and ``OUT_DIR/data-bin``
(``fairseq-preprocess`` output).  A finished data-bin is reused when it was made
from the same generator settings; it is rebuilt when they change.

Nothing is deleted that the tool did not write: an ``OUT_DIR`` that is not empty
and carries no stamp of the tool (``OUT_DIR/fairseq_efficiency_prepare.json``, or
the data-bin's ``fairseq_efficiency_corpus.json``) is refused unless ``force``;
even then, and on every rebuild, only files of the names the tool writes are
replaced, and any other file in ``data-bin`` is carried over to the new one.
"""
import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
from dataclasses import asdict

from fairseq_efficiency.data import synthetic
from fairseq_efficiency.errors import PluginConfigError

SRC, TGT = "src", "tgt"
_STAMP = "fairseq_efficiency_corpus.json"  # in the data-bin: the settings it was made with
_OWNER = "fairseq_efficiency_prepare.json"  # in OUT_DIR: the tool writes into this directory


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


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _claim(out_dir, force):
    """Make sure ``out_dir`` is the tool's to write into: new, empty, stamped, or ``force``."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise PluginConfigError(f"{out_dir} exists and is not a directory")
    bin_dir = os.path.join(out_dir, "data-bin")
    if os.path.islink(bin_dir) or (os.path.exists(bin_dir) and not os.path.isdir(bin_dir)):
        raise PluginConfigError(f"{bin_dir} is not a directory (a link or a file): the tool "
                                "replaces data-bin/ by renaming, so it must be a plain directory")
    owner = os.path.join(out_dir, _OWNER)
    stamped = isinstance(_read_json(owner), dict) or isinstance(
        _read_json(os.path.join(out_dir, "data-bin", _STAMP)), dict)
    if not stamped and os.path.isdir(out_dir) and os.listdir(out_dir) and not force:
        raise PluginConfigError(
            f"{out_dir} is not empty and was not written by fairseq-efficiency-prepare: choose "
            "a new or empty directory, or pass --force to write text/ and data-bin/ into it "
            "(only files of the names the tool writes are replaced)")
    os.makedirs(out_dir, exist_ok=True)
    if not stamped:
        with open(owner, "w", encoding="utf-8") as f:
            json.dump({"written_by": "fairseq-efficiency-prepare",
                       "outputs": ["text", "data-bin"]}, f, indent=2)


def _new_dir(parent, prefix):
    """A fresh directory of a unique name under ``parent``, with the usual permissions."""
    path = tempfile.mkdtemp(prefix=prefix, dir=parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o777 & ~umask)
    return path


def _install(new_bin, bin_dir):
    """Replace ``bin_dir`` by the finished ``new_bin`` in one rename, carrying over every
    entry of the old ``bin_dir`` that the new build does not write (a user's files)."""
    if not os.path.isdir(bin_dir):
        os.replace(new_bin, bin_dir)
        return
    ours = set(os.listdir(new_bin))
    for name in os.listdir(bin_dir):
        if name not in ours:
            os.replace(os.path.join(bin_dir, name), os.path.join(new_bin, name))
    old = tempfile.mkdtemp(prefix=".data-bin.old.", dir=os.path.dirname(bin_dir))
    os.replace(bin_dir, old)  # onto the empty directory
    os.replace(new_bin, bin_dir)
    for name in os.listdir(old):  # only names the new build wrote are left here
        os.remove(os.path.join(old, name))
    os.rmdir(old)


def prepare(out_dir, cfg: synthetic.CorpusConfig, joined_dictionary=False, workers=1, force=False):
    """Generate + binarize unless an identical data-bin already exists; returns its path.

    ``force``: rebuild even if up to date, and write into a non-empty ``out_dir`` the tool
    did not create (raises :class:`PluginConfigError` otherwise).
    """
    cfg.validate()
    text_dir = os.path.join(out_dir, "text")
    bin_dir = os.path.join(out_dir, "data-bin")
    wanted = {"corpus": asdict(cfg), "joined_dictionary": joined_dictionary, "langs": [SRC, TGT]}
    if not force and _read_json(os.path.join(bin_dir, _STAMP)) == wanted:
        return bin_dir
    _claim(out_dir, force)
    synthetic.write_corpus(cfg, text_dir, SRC, TGT)
    new_bin = _new_dir(out_dir, ".data-bin.")
    try:
        binarize(text_dir, new_bin, joined_dictionary=joined_dictionary, workers=workers)
        for split in ("train", "valid", "test"):  # keep the instance classes next to the binaries
            shutil.copy(os.path.join(text_dir, f"{split}.kind"), os.path.join(new_bin, f"{split}.kind"))
        with open(os.path.join(new_bin, _STAMP), "w", encoding="utf-8") as f:
            json.dump(wanted, f, indent=2, sort_keys=True)
    except BaseException:  # the build failed: remove only what it wrote
        shutil.rmtree(new_bin, ignore_errors=True)
        raise
    _install(new_bin, bin_dir)  # a crash never leaves a half-written data-bin behind
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
    parser.add_argument("--force", action="store_true",
                        help="rebuild even if up to date; write into a non-empty OUT_DIR this "
                             "tool did not create (replacing only files of the names it writes)")
    synthetic.add_args(parser)
    args = parser.parse_args(argv)
    try:
        cfg = synthetic.config_from_args(args)
    except ValueError as e:
        parser.exit(2, f"fairseq-efficiency-prepare: error: {e}\n")
    if args.workers < 1:
        parser.exit(2, "fairseq-efficiency-prepare: error: --workers must be >= 1\n")
    try:
        path = prepare(args.out_dir, cfg, args.joined_dictionary, args.workers, args.force)
    except PluginConfigError as e:
        parser.exit(2, f"fairseq-efficiency-prepare: error: {e}\n")
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
