"""Demo rows: meProp (``lstm_meprop``, alternating top-k) and meSimp on the baseline LSTM."""
import re

from fairseq_efficiency.cli.demo import register_demo_row

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
