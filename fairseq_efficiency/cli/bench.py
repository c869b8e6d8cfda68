"""``fairseq-efficiency-bench SPEC``: seeded comparison runs, then the cost-to-quality report.

Trains every method of the TOML spec with every seed into ``OUT/NAME.seedN`` (skipping
finished runs, resuming interrupted ones from their last checkpoint), translates the test
set, and writes ``fairseq-efficiency-report`` output into ``OUT/report``. The spec format
is documented in :mod:`fairseq_efficiency.bench`; examples are in ``benchmarks/specs/``.
"""
import argparse
import logging
import os
import sys


def main(argv=None):
    p = argparse.ArgumentParser(prog="fairseq-efficiency-bench", description=__doc__.split("\n\n")[0])
    p.add_argument("spec", help="TOML spec (e.g. benchmarks/specs/demo.toml)")
    p.add_argument("--out", default=None, help="results directory (default: bench/SPEC-NAME)")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at the same time")
    p.add_argument("--methods", default=None,
                   help="comma-separated methods to run (default: all; the report covers all)")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--no-report", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    for name in ("fairseq", "fairseq_cli", "matplotlib", "PIL"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if args.jobs < 1:
        p.exit(2, "fairseq-efficiency-bench: error: --jobs must be >= 1\n")

    from fairseq_efficiency.bench import Runner, SpecError, command_script, load_spec, plan
    from fairseq_efficiency.report import LogError, build_report

    try:
        spec = load_spec(args.spec)
    except SpecError as e:
        p.exit(2, f"fairseq-efficiency-bench: error: {e}\n")
    if args.methods:
        names = [m.name for m in spec.methods]
        wanted = [m for m in args.methods.split(",") if m]
        unknown = [m for m in wanted if m not in names]
        if unknown:
            p.exit(2, f"fairseq-efficiency-bench: error: unknown method {unknown[0]} "
                      f"(spec has {', '.join(names)})\n")
    out = args.out or os.path.join("bench", spec.name)
    runner = Runner(spec, out, args.jobs, log=lambda s: print(s, flush=True))
    if args.dry_run:
        data = spec.data or os.path.join(os.path.abspath(out), "corpus", "data-bin")
        for r in plan(spec, out, data):
            print(command_script(r, spec.threads))
        return 0
    n = len(spec.methods) * len(spec.seeds)
    print(f"[bench] {spec.name}: {len(spec.methods)} method(s) x {len(spec.seeds)} seed(s) = "
          f"{n} run(s) into {out}/", flush=True)
    try:
        data = runner.prepare_data()
    except SpecError as e:
        p.exit(2, f"fairseq-efficiency-bench: error: {e}\n")
    runs = plan(spec, out, data)
    if args.methods:
        runs = [r for r in runs if r.method.name in wanted]
    try:
        status = runner.run_all(runs)
    except KeyboardInterrupt:
        print("\nfairseq-efficiency-bench: interrupted; run the same command again to resume",
              file=sys.stderr)
        return 130
    failed = sorted(k for k, v in status.items() if v in ("failed", "blocked"))
    if not args.no_report:
        report_dir = os.path.join(out, "report")
        try:
            doc = build_report([os.path.join(out, f"{m.name}.seed{s}") for m in spec.methods
                                for s in spec.seeds
                                if os.path.isfile(os.path.join(out, f"{m.name}.seed{s}", "done.json"))]
                               or [out],
                               report_dir, baseline=spec.baseline, target_loss=spec.target_loss,
                               bleu_subset=spec.gen_subset)
        except LogError as e:
            print(f"fairseq-efficiency-bench: report: {e}", file=sys.stderr)
            return 1
        print("\n" + doc["table"])
        print(f"report: {report_dir}/report.md, report.json"
              + "".join(f", {x}" for x in doc["plots"]), flush=True)
    busy = sorted(k for k, v in status.items() if v == "busy")
    if busy:
        print(f"fairseq-efficiency-bench: {len(busy)} run(s) left to another "
              "fairseq-efficiency-bench: " + ", ".join(busy), file=sys.stderr)
    if failed:
        print(f"fairseq-efficiency-bench: {len(failed)} run(s) failed or blocked: "
              + ", ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
