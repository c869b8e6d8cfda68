"""``fairseq-efficiency-report RUN...``: what each method saves, and what it costs in quality.

RUN is a save directory (``train.log`` inside, or ``NAME.seedN`` sub-directories), a
``--log-format json`` log file, or a glob. Runs named ``NAME.seedN`` form method NAME.
Writes ``report.md``, ``report.json`` and PNG plots into ``--out`` and prints the table.
"""
import argparse
import logging
import sys


def main(argv=None):
    p = argparse.ArgumentParser(prog="fairseq-efficiency-report",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("runs", nargs="+", metavar="RUN")
    p.add_argument("--out", default="report", help="output directory (default: ./report)")
    p.add_argument("--baseline", default=None,
                   help="method the savings are measured against (default: 'baseline' if "
                        "present, else the first method)")
    p.add_argument("--target-loss", type=float, default=None,
                   help="valid loss to reach (default: the worst of the baseline seeds' best)")
    p.add_argument("--group", action="append", default=[], metavar="METHOD=PATTERN",
                   help="put runs whose name matches the shell pattern into METHOD (repeatable)")
    p.add_argument("--valid-subset", default="valid")
    p.add_argument("--gen-subset", default="test", help="subset of the fairseq-generate BLEU")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--no-checkpoints", action="store_true",
                   help="do not open checkpoints to count (non-zero) parameters")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    for name in ("fairseq", "matplotlib", "PIL"):
        logging.getLogger(name).setLevel(logging.WARNING)

    from fairseq_efficiency.report import LogError, build_report

    try:
        doc = build_report(args.runs, args.out, args.baseline, args.target_loss, args.group,
                           args.valid_subset, args.gen_subset, not args.no_plots,
                           not args.no_checkpoints)
    except LogError as e:
        print(f"fairseq-efficiency-report: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # e.g. --out names a file
        print(f"fairseq-efficiency-report: error: {e.filename or args.out}: {e.strerror or e}",
              file=sys.stderr)
        return 2
    print(doc["table"])
    print(f"written: {args.out}/report.md, {args.out}/report.json"
          + "".join(f", {args.out}/{x}" for x in doc["plots"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
