"""Cost-to-quality report of fairseq training runs: log parsing (:mod:`.logs`), cost to a
target loss (:mod:`.cost`), per-method tables (:mod:`.summary`) and plots (:mod:`.plots`)."""
import json
import logging
import os
from typing import Optional, Sequence

from fairseq_efficiency.report.logs import LogError, parse_log, read_log  # noqa: F401
from fairseq_efficiency.report.cost import cost_to_target, first_crossing  # noqa: F401
from fairseq_efficiency.report.runs import assign_methods, discover, load_extras
from fairseq_efficiency.report.summary import default_target, markdown, summarize

logger = logging.getLogger(__name__)


def build_report(paths: Sequence[str], out_dir: str, baseline: Optional[str] = None,
                 target_loss: Optional[float] = None, groups: Sequence[str] = (),
                 valid_subset: str = "valid", bleu_subset: str = "test", plots: bool = True,
                 checkpoints: bool = True) -> dict:
    """Read the runs, write ``report.md``, ``report.json`` and the PNGs into ``out_dir``."""
    runs = discover(paths, valid_subset)
    methods = assign_methods(runs, groups)
    if baseline is not None and baseline not in methods:
        raise LogError(f"--baseline {baseline}: no such method (have: {', '.join(methods)})")
    if baseline is None:
        baseline = "baseline" if "baseline" in methods else next(iter(methods))
    methods = {baseline: methods[baseline], **methods}  # the baseline's row first
    for r in runs:
        load_extras(r, bleu_subset, checkpoints)
    if target_loss is not None:
        target, rule = float(target_loss), "--target-loss"
    else:
        target = default_target(methods, baseline)
        rule = f"the worst of {baseline}'s per-seed best valid losses"
    doc = summarize(methods, baseline, target, rule)
    os.makedirs(out_dir, exist_ok=True)
    doc["plots"] = []
    if plots:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            logger.warning("matplotlib is not installed: no plots (pip install "
                           "'fairseq-efficiency[plots]')")
        else:
            from fairseq_efficiency.report.plots import write_plots

            doc["plots"] = [os.path.basename(p) for p in write_plots(doc, out_dir)]
    table = markdown(doc)
    doc["table"] = table
    _write(os.path.join(out_dir, "report.json"), json.dumps(doc, indent=1) + "\n")
    md = table + "".join(f"\n![{p}]({p})\n" for p in doc["plots"])
    _write(os.path.join(out_dir, "report.md"), md)
    return doc


def _write(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
