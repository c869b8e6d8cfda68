"""The technique rows of ``fairseq-efficiency-demo`` (the baseline row lives in :mod:`.demo`).

Every row shares the baseline's data, model size, optimizer and batch limits.
"""
import re

from fairseq_efficiency.cli.demo import BASELINE_OPTIM, DemoContext, register_demo_row


@register_demo_row("autoassist", order=10)
def autoassist_row(ctx):
    """Same model, optimizer and batch limits as the baseline; the Assistant shrinks instances."""
    res = ctx.train("autoassist", extra_args=["--criterion", "sentence_cross_entropy",
                                              "--instance-selection", "autoassist"])
    st = res.train_stats
    boss = float(st.get("train_boss_tok", 0))
    skipped = float(st.get("train_skip_tok", 0))
    return ctx.evaluate(res, **{
        "Boss tokens": int(boss),
        "skipped %": round(100 * skipped / max(boss + skipped, 1), 1),
        "rho": st.get("train_rho"),
    })


MEPROP = ["--meprop-k", "0.0625", "--meprop-alternate"]


def _meprop_args(ctx):
    args = list(ctx.baseline_args)
    args[args.index("--arch") + 1] = "lstm_meprop"
    return args


@register_demo_row("meProp", order=40)
def meprop_row(ctx):
    """Top-k (6.25%) gate gradients, encoder in odd and decoder in even epochs."""
    res = ctx.train("meProp", extra_args=MEPROP, base_args=_meprop_args(ctx))
    return ctx.evaluate(res)


@register_demo_row("meSimp", order=41)
def mesimp_row(ctx):
    """meProp + pruning of rarely-active hidden units every 25 updates (p = 0.08)."""
    res = ctx.train("meSimp", base_args=_meprop_args(ctx), extra_args=MEPROP + [
        "--mesimp-interval", "25", "--mesimp-prune-rate", "0.08"])
    sizes = re.findall(r"meSimp: layer sizes (.*)", open(res.log).read())
    return ctx.evaluate(res, hidden=sizes[-1].strip() if sizes else "unchanged")


@register_demo_row("pruning", order=40)
def pruning_row(ctx):
    """The baseline pruned 80% class-blind, then retrained one epoch with masks."""
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


# the baseline's sizes, but 2+2 layers so that each of the 2 ranks owns one layer per side
HYBRID_MODEL = [
    "--arch", "hybrid_lstm", "--layers", "2", "--encoder-embed-dim", "128",
    "--decoder-embed-dim", "128", "--hidden-size", "256", "--dropout", "0.1",
]
PIPELINE = ["--pipeline-encoder-balance", "[1,1]", "--pipeline-decoder-balance", "[1,1]",
            "--pipeline-chunks", "4"]


def hybrid_optim():
    args = list(BASELINE_OPTIM)
    args[args.index("--criterion") + 1] = "hybrid_cross_entropy"  # per-rank batch shares
    return args


@register_demo_row("hybrid_lstm_2ranks", order=60)
def hybrid_row(ctx: DemoContext):
    """HybridNMT (``hybrid_lstm``) on 2 CPU ranks (wavefront + data-parallel head)."""
    res = ctx.train("hybrid_lstm_2ranks", extra_args=PIPELINE, nproc=2,
                    base_args=HYBRID_MODEL + hybrid_optim())
    return ctx.evaluate(res)
