"""``make demo`` row: the baseline model trained with AutoAssist instance shrinking."""
import json
import re

from fairseq_efficiency.cli.demo import register_demo_row


def _last_train_stats(log_path):
    stats = {}
    for line in open(log_path):
        m = re.search(r"\| train \| (\{.*\})\s*$", line)
        if m:
            stats = json.loads(m.group(1))
    return stats


@register_demo_row("autoassist", order=10)
def autoassist_row(ctx):
    """Same model, optimizer and batch limits as the baseline; the Assistant shrinks instances."""
    res = ctx.train("autoassist", extra_args=["--criterion", "sentence_cross_entropy",
                                              "--instance-selection", "autoassist"])
    st = _last_train_stats(res.log)
    boss = float(st.get("train_boss_tok", 0))
    skipped = float(st.get("train_skip_tok", 0))
    return ctx.evaluate(res, **{
        "Boss tokens": int(boss),
        "skipped %": round(100 * skipped / max(boss + skipped, 1), 1),
        "rho": st.get("train_rho"),
    })
