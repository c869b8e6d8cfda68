"""``make demo`` row: the baseline model trained with AutoAssist instance shrinking."""
from fairseq_efficiency.cli.demo import register_demo_row


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
