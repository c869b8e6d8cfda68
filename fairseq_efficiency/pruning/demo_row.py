"""``make demo`` row: the baseline pruned 80% class-blind, then retrained one epoch with masks."""

from fairseq_efficiency.cli.demo import register_demo_row


@register_demo_row("pruning", order=40)
def pruning_row(ctx):
    base = ctx.results.get("baseline") or ctx.train("baseline")
    res = ctx.train("pruning", extra_args=[
        "--prune-ratio", "0.8", "--prune-scheme", "class-blind", "--prune-at-update", "0",
        "--prune-lr-scale", "0.5", "--max-epoch", "1",
    ], restore_from=base.checkpoint)
    from fairseq_efficiency.pruning.checkpoint import build_from_checkpoint
    from fairseq_efficiency.pruning.export import export_state, saved_size

    state, _, _ = build_from_checkpoint(res.checkpoint)
    ratio = saved_size(export_state(state)) / saved_size(export_state(state, max_density=0.0))
    row = ctx.evaluate(res, **{"sparse ckpt": f"{ratio:.0%} of dense"})
    row["row"] = "pruning 80% + 1 epoch"
    return row
