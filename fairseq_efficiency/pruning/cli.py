"""Console scripts of the pruning package.

``fairseq-efficiency-prune CHECKPOINT --scheme class-blind --ratio 0.8 -o OUT``
    prunes a trained checkpoint (See et al. 2016, sec. 3.3). ``OUT`` is a normal
    fairseq checkpoint (pruned weights are zeros) that ``fairseq-generate``
    loads directly; its masks sit in the task extra state, so
    ``fairseq-train --task translation_efficiency --restore-file OUT
    --reset-optimizer ...`` retrains with them kept (sec. 3.4). ``--retrain
    [fairseq-train flags]`` (last) runs that retraining at once with the paper's
    recipe and the checkpoint's own training options.

``fairseq-efficiency-prune CHECKPOINT --analyze -o DIR [--ratio 0.9]``
    writes the paper's Figure 4 (perplexity increase when each class alone is
    pruned, per scheme) and Figure 8 (maps of surviving weights) into ``DIR``.

``fairseq-efficiency-sparse-export CHECKPOINT -o OUT``
    writes a compact inference checkpoint (bitmask + surviving values) and
    reports its size against the dense checkpoint.
"""
import argparse
import logging
import os
import sys

from fairseq_efficiency.pruning.retrain import PAPER_FRACTION
from fairseq_efficiency.pruning.schemes import PAPER_SCHEMES, SCHEMES


def _setup_logging():
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s",
                        level=logging.WARNING, stream=sys.stderr)
    for name in ("fairseq", "fairseq_efficiency", "matplotlib", "PIL"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _fail(prog, msg):
    sys.stderr.write(f"{prog}: error: {msg}\n")
    return 2


def prune_main(argv=None):
    prog = "fairseq-efficiency-prune"
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[1].strip())
    parser.add_argument("checkpoint", help="fairseq checkpoint to prune (never modified)")
    parser.add_argument("-o", "--output", required=True,
                        help="pruned checkpoint to write (with --analyze: output directory)")
    parser.add_argument("--scheme", default=None,
                        help=f"one of {', '.join(SCHEMES)} (default lamp; with --analyze "
                             "default: all three)")
    parser.add_argument("--ratio", type=float, default=None,
                        help="fraction of the prunable weights to prune, in [0, 1) "
                             "(default 0.8; 0.9 with --analyze, as in the paper's Fig. 4)")
    parser.add_argument("--include", default=None, help="comma-separated regexes of parameters to prune")
    parser.add_argument("--exclude", default=None, help="comma-separated regexes of parameters to keep")
    parser.add_argument("--split-lstm", action="store_true",
                        help="separate feed-forward and recurrent LSTM weight classes")
    parser.add_argument("--data", default=None,
                        help="data-bin with the dictionaries (default: the one the checkpoint names)")
    parser.add_argument("--analyze", action="store_true",
                        help="write Fig. 4 / Fig. 8 tables and PNGs into the -o directory")
    parser.add_argument("--map-ratio", type=float, default=0.8,
                        help="pruning ratio of the Fig. 8 weight maps (default 0.8, as in the paper)")
    parser.add_argument("--split", default="valid", help="data split for --analyze perplexities")
    parser.add_argument("--max-class-ratio", type=float, default=1.0,
                        help="prune at most this fraction of any one weight class (>= --ratio)")
    parser.add_argument("--retrain-fraction", type=float, default=PAPER_FRACTION,
                        help="with --retrain: retraining budget as a fraction of the updates "
                             "the checkpoint was trained (default 1/3, See et al. 2016)")
    parser.add_argument("--retrain-dir", default=None,
                        help="with --retrain: save directory of the retraining run "
                             "(default: OUTPUT without .pt, plus -retrain)")
    parser.add_argument("--retrain", nargs=argparse.REMAINDER, default=None,
                        metavar="FAIRSEQ_TRAIN_FLAGS",
                        help="after pruning, retrain OUTPUT with fairseq-train (the checkpoint's "
                             "own data, model and optimizer options, the paper's retraining "
                             "schedule, pruned weights kept at zero); flags after it go to "
                             "fairseq-train. Must come last")
    args = parser.parse_args(argv)
    _setup_logging()

    from fairseq_efficiency.pruning.checkpoint import PruneError, build_from_checkpoint
    from fairseq_efficiency.pruning.offline import prune_checkpoint
    from fairseq_efficiency.pruning.report import collapse_warnings, format_class_table
    from fairseq_efficiency.pruning.schemes import check_class_cap, check_ratio, check_scheme

    try:
        ratio = check_ratio(args.ratio if args.ratio is not None else (0.9 if args.analyze else 0.8),
                            "--ratio")
        if args.analyze:
            if args.retrain is not None:
                raise PruneError("--analyze writes figures and prunes no checkpoint: "
                                 "it cannot --retrain")
            check_ratio(args.map_ratio, "--map-ratio")
            schemes = (PAPER_SCHEMES if args.scheme in (None, "all")
                       else [check_scheme(args.scheme)])
            out_dir = os.path.abspath(args.output)
            if os.path.isfile(out_dir):
                raise PruneError(f"--analyze writes a directory, {args.output} is a file")
            from fairseq_efficiency.pruning import analysis

            _, task, model = build_from_checkpoint(args.checkpoint, args.data)
            rows = analysis.class_breakdown(task, model, ratio, schemes, args.split,
                                            args.include, args.exclude, args.split_lstm)
            maps, gates = analysis.survival_maps(model, args.map_ratio, "class-blind",
                                                 args.include, args.exclude)
            written = analysis.write_analysis(out_dir, rows, maps, gates, ratio, args.map_ratio)
            print(analysis.format_breakdown(rows))
            print(f"wrote {len(written)} files into {out_dir}")
            return 0
        scheme = check_scheme(args.scheme or "lamp")
        check_class_cap(args.max_class_ratio, ratio, "--max-class-ratio")
        retrain = None
        if args.retrain is not None:
            from fairseq_efficiency.pruning.checkpoint import read_checkpoint
            from fairseq_efficiency.pruning.retrain_cmd import plan_retrain

            save_dir = args.retrain_dir or os.path.splitext(args.output)[0] + "-retrain"
            retrain = plan_retrain(read_checkpoint(args.checkpoint), args.output, save_dir,
                                   args.retrain_fraction, args.retrain, args.data)
        classes, res, masks = prune_checkpoint(args.checkpoint, args.output, scheme, ratio,
                                               args.include, args.exclude, args.split_lstm,
                                               args.data, args.max_class_ratio)
    except (PruneError, ValueError) as e:
        return _fail(prog, str(e))
    print(f"{scheme} pruning, ratio {ratio}")
    print(format_class_table(classes, masks, res.thresholds))
    for line in collapse_warnings(classes, masks):
        sys.stderr.write(f"{prog}: warning: {line}\n")
    print(f"wrote {args.output}")
    if retrain is not None:
        return _run_retrain(*retrain)
    return 0


def _run_retrain(cmd, budget):
    import subprocess

    from fairseq_efficiency.pruning.retrain_cmd import display

    print(f"retraining for {budget} updates:\n{display(cmd)}", flush=True)
    return subprocess.call(cmd)


def export_main(argv=None):
    prog = "fairseq-efficiency-sparse-export"
    parser = argparse.ArgumentParser(
        prog=prog, description="Write a compact (bitmask + values) copy of a pruned checkpoint "
                               "for inference; fairseq loads it with the plugin (--user-dir).")
    parser.add_argument("checkpoint", help="pruned fairseq checkpoint (never modified)")
    parser.add_argument("-o", "--output", required=True, help="compact checkpoint to write")
    parser.add_argument("--max-density", type=float, default=0.9,
                        help="store a tensor sparsely when at most this fraction is nonzero")
    parser.add_argument("--data", default=None, help="data-bin with the dictionaries")
    args = parser.parse_args(argv)
    _setup_logging()

    import torch

    from fairseq_efficiency.pruning.checkpoint import PruneError, atomic_save, build_from_checkpoint
    from fairseq_efficiency.pruning.export import export_state, saved_size
    from fairseq_efficiency.pruning.offline import check_masks_hold

    try:
        if not 0.0 < args.max_density <= 1.0:
            raise ValueError(f"--max-density must be in (0, 1], got {args.max_density}")
        state, _task, model = build_from_checkpoint(args.checkpoint, args.data)
        check_masks_hold(state, args.checkpoint)
        dense = export_state(state, max_density=0.0)  # same content, every tensor dense
        sparse = export_state(state, args.max_density)
        atomic_save(sparse, args.output, inputs=[args.checkpoint])
    except (PruneError, ValueError) as e:
        return _fail(prog, str(e))
    weights = [t for t in state["model"].values() if torch.is_tensor(t) and t.is_floating_point()]
    zeros = sum(int((t == 0).sum()) for t in weights)
    total = sum(t.numel() for t in weights)
    n_dense, n_sparse = saved_size(dense), os.path.getsize(args.output)
    n_in = os.path.getsize(args.checkpoint)
    print(f"zero weights          {zeros / max(total, 1):.4f} of {total}")
    print(f"dense model checkpoint {n_dense:>12d} bytes")
    print(f"sparse export          {n_sparse:>12d} bytes  ({n_sparse / n_dense:.1%} of dense)")
    print(f"input file             {n_in:>12d} bytes  (with optimizer state; export is "
          f"{n_sparse / n_in:.1%} of it)")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(prune_main())
