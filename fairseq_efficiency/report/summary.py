"""Per-method figures (mean ± sd over seeds), the markdown table and the json document.

Target loss: ``--target-loss``, or by default the highest of the baseline seeds'
best validation losses, i.e. the quality every baseline seed reached. Costs to
target are averaged over the seeds that reached it (``reached`` says how many);
a saving is the baseline's mean cost divided by the method's (above 1: cheaper).
Standard deviations are sample standard deviations (n - 1), shown from 2 seeds.
A method whose runs start from another run's checkpoint (``--finetune-from-model``,
``--restore-file``; e.g. prune-then-retrain) is marked: its costs exclude that run's, so no
saving is computed for it.
"""
import math
import statistics
from typing import Dict, List, Optional

from fairseq_efficiency.report.cost import cost_to_target
from fairseq_efficiency.report.runs import Run


def stats(values) -> Optional[dict]:
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None
    return {"mean": statistics.fmean(vals), "sd": statistics.stdev(vals) if len(vals) > 1 else None,
            "n": len(vals), "values": vals}


def final_model_valid(c) -> list:
    """Validation points of the run's final model structure: with pruning (a logged
    ``sparsity``), those from the first training record at the final sparsity on, since
    losses before the last pruning event are those of a denser model (a validation between
    that record and the one before it may be of either and is left out)."""
    sp = [(p.updates, p.metrics["sparsity"]) for p in c.train if "sparsity" in p.metrics]
    if not sp:
        return c.valid
    final, since = sp[-1][1], sp[-1][0]
    for u, v in reversed(sp):
        if abs(v - final) > 1e-4:
            break
        since = u
    return [p for p in c.valid if p.updates >= since]


def run_figures(run: Run, target: Optional[float]) -> dict:
    c = run.curves
    last = c.train[-1] if c.train else None
    cross = cost_to_target(c, target) if target is not None else None
    return {
        "method": run.method, "seed": run.seed, "log": run.log,
        "best_valid_loss": min((p.loss for p in final_model_valid(c)), default=None),
        "bleu": run.bleu,
        "boss_tokens": last.tokens if last else None,
        "updates": c.updates,
        "wall_s": last.wall if last else None,
        "epochs": max((p.epoch for p in c.valid if p.epoch is not None), default=None),
        "params": run.params, "nonzero_params": run.nonzero_params, "checkpoint": run.checkpoint,
        "to_target": cross.as_dict() if cross else None,
        "valid_curve": [{"updates": p.updates, "loss": p.loss, "boss_tokens": c.tokens_at(p.updates),
                         "wall_s": c.wall_at(p.updates)} for p in c.valid],
        "technique_curves": _technique_curves(run),
    }


def _technique_curves(run: Run) -> Dict[str, List[List[float]]]:
    out: Dict[str, List[List[float]]] = {}
    for p in run.curves.train:
        for k, v in p.metrics.items():
            out.setdefault(k, []).append([p.updates, v])
    return out


def default_target(methods: Dict[str, List[Run]], baseline: str) -> Optional[float]:
    bests = [min(p.loss for p in r.curves.valid) for r in methods.get(baseline, []) if r.curves.valid]
    return max(bests) if bests else None


def summarize(methods: Dict[str, List[Run]], baseline: Optional[str],
              target: Optional[float], target_rule: str) -> dict:
    """The report document (``report.json``)."""
    runs = {r.name: run_figures(r, target) for rs in methods.values() for r in rs}
    out = {}
    for name, rs in methods.items():
        figs = [runs[r.name] for r in rs]
        reached = [f["to_target"] for f in figs if f["to_target"]]
        m = {"runs": [r.name for r in rs], "seeds": [r.seed for r in rs],
             "started_from_checkpoint": any(r.curves.started_from for r in rs)}
        for key in ("best_valid_loss", "bleu", "boss_tokens", "updates", "wall_s", "params",
                    "nonzero_params"):
            m[key] = stats(f[key] for f in figs)
        m["to_target"] = {
            "reached": len(reached), "of": len(figs),
            "boss_tokens": stats(x["tokens"] for x in reached),
            "wall_s": stats(x["wall"] for x in reached),
            "updates": stats(x["updates"] for x in reached),
        } if target is not None else None
        out[name] = m
    base = out.get(baseline) if baseline else None
    for name, m in out.items():
        t = m["to_target"]
        if t is None:
            continue
        for key, ratio in (("boss_tokens", "token_saving"), ("wall_s", "time_saving")):
            b = base and base["to_target"] and base["to_target"][key]
            # a run that starts from another's checkpoint did not pay for that training
            ok = b and t[key] and t[key]["mean"] > 0 and not m["started_from_checkpoint"]
            t[ratio] = (b["mean"] / t[key]["mean"]) if ok else None
        b = base and base["bleu"]
        m["bleu_delta"] = (m["bleu"]["mean"] - b["mean"]) if b and m["bleu"] else None
    return {"baseline": baseline, "target_loss": target, "target_rule": target_rule,
            "methods": out, "runs": runs}


# -- markdown ------------------------------------------------------------------------------------
def _num(x, kind):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if kind == "loss":
        return f"{x:.3f}"
    if kind == "bleu":
        return f"{x:.2f}"
    if kind == "count":
        if abs(x) >= 1e6:
            return f"{x / 1e6:.2f}M"
        if abs(x) >= 1e4:
            return f"{x / 1e3:.1f}k"
        return f"{x:.0f}"
    if kind == "s":
        return f"{x:.0f}" if abs(x) >= 10 else f"{x:.1f}"
    if kind == "ratio":
        return f"{x:.2f}x"
    if kind == "delta":
        return f"{x:+.2f}"
    return str(x)


def _ms(s, kind):
    if s is None:
        return "-"
    if s["sd"] is None:
        return _num(s["mean"], kind)
    return f"{_num(s['mean'], kind)} ± {_num(s['sd'], kind)}"


def markdown(doc: dict) -> str:
    target = doc["target_loss"]
    cols = ["method", "seeds", "best valid loss", "BLEU", "ΔBLEU", "Boss tokens", "updates",
            "wall s", "non-zero params"]
    if target is not None:
        cols += ["tokens to target", "saving (tokens)", "wall s to target", "saving (time)",
                 "reached"]
    rows = []
    for name, m in doc["methods"].items():
        row = [name + (" †" if m["started_from_checkpoint"] else ""), str(len(m["runs"])), _ms(m["best_valid_loss"], "loss"), _ms(m["bleu"], "bleu"),
               _num(m.get("bleu_delta"), "delta"), _ms(m["boss_tokens"], "count"),
               _ms(m["updates"], "count"), _ms(m["wall_s"], "s"), _ms(m["nonzero_params"], "count")]
        t = m["to_target"]
        if t is not None:
            row += [_ms(t["boss_tokens"], "count"), _num(t.get("token_saving"), "ratio"),
                    _ms(t["wall_s"], "s"), _num(t.get("time_saving"), "ratio"),
                    f"{t['reached']}/{t['of']}"]
        rows.append(row)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    head = []
    if target is not None:
        head.append(f"Target valid loss {target:.3f} ({doc['target_rule']}).")
    head.append("Mean ± sd over seeds; Boss tokens: target tokens trained on (fairseq wpb × "
                "updates); savings: baseline cost / method cost.")
    if any(m["started_from_checkpoint"] for m in doc["methods"].values()):
        head.append("† started from another run's checkpoint: its costs count from there "
                    "(no saving is computed).")
    return "\n".join(head) + "\n\n" + "\n".join(lines) + "\n"
