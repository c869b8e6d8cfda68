"""PNG plots of a report: valid loss against Boss tokens, wall time and updates, one line
per method (mean over seeds, range shaded), and the techniques' own logged curves."""
import os
from typing import List

import numpy as np

from fairseq_efficiency.report.logs import TECHNIQUE_METRICS

AXES = {"boss_tokens": "Boss tokens (target tokens trained on)", "wall_s": "wall time (s)",
        "updates": "updates"}
GRID = 200


def _band(curves):
    """Mean and range of several ``(x, y)`` curves on a common grid. A curve counts from its
    first point on; a run that ended (early stopping, a smaller budget) is held at its last
    value after it, so the mean never jumps where a seed stops."""
    hi = max(float(x[-1]) for x, _ in curves)
    lo = min(float(x[0]) for x, _ in curves)
    grid = np.linspace(lo, hi, GRID)
    ys = np.full((len(curves), GRID), np.nan)
    for i, (x, y) in enumerate(curves):
        inside = (grid >= x[0]) & (grid <= x[-1])
        ys[i, inside] = np.interp(grid[inside], x, y)
        ys[i, grid > x[-1]] = y[-1]
    keep = ~np.all(np.isnan(ys), axis=0)
    ys = ys[:, keep]
    return grid[keep], np.nanmean(ys, axis=0), np.nanmin(ys, axis=0), np.nanmax(ys, axis=0)


def _curves(doc, method, xkey, points_key, ykey):
    out = []
    for name in doc["methods"][method]["runs"]:
        pts = doc["runs"][name][points_key]
        if callable(ykey):
            pts = ykey(pts)
            xy = [(p[0], p[1]) for p in pts]
        else:
            xy = [(p[xkey], p[ykey]) for p in pts if p[xkey] is not None and p[ykey] is not None]
        if xy:
            xy.sort()
            out.append((np.array([a for a, _ in xy]), np.array([b for _, b in xy])))
    return out


def _draw(ax, doc, method, curves, color):
    if len(curves) == 1 or any(len(x) == 1 for x, _ in curves):
        for i, (x, y) in enumerate(curves):
            ax.plot(x, y, marker="o", ms=3, color=color, label=method if i == 0 else None)
        return
    grid, mean, lo, hi = _band(curves)
    ax.plot(grid, mean, color=color, label=f"{method} ({len(curves)} seeds)")
    ax.fill_between(grid, lo, hi, color=color, alpha=0.2, linewidth=0)


def write_plots(doc: dict, out_dir: str) -> List[str]:
    """Write the PNGs into ``out_dir``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    paths = []
    for xkey, label in AXES.items():
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        drawn = False
        for i, method in enumerate(doc["methods"]):
            curves = _curves(doc, method, xkey, "valid_curve", "loss")
            if curves:
                _draw(ax, doc, method, curves, colors[i % len(colors)])
                drawn = True
        if not drawn:
            plt.close(fig)
            continue
        if doc["target_loss"] is not None:
            ax.axhline(doc["target_loss"], color="gray", ls="--", lw=1, label="target")
        ax.set_xlabel(label)
        ax.set_ylabel("valid loss (base 2)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = os.path.join(out_dir, f"valid_loss_vs_{xkey}.png")
        fig.savefig(path + ".tmp", dpi=100, format="png")
        os.replace(path + ".tmp", path)
        plt.close(fig)
        paths.append(path)
    logged = [k for k in TECHNIQUE_METRICS
              if any(k in r["technique_curves"] for r in doc["runs"].values())]
    if logged:
        fig, axes = plt.subplots(len(logged), 1, figsize=(6.4, 2.4 * len(logged)), squeeze=False)
        for ax, key in zip(axes[:, 0], logged):
            for i, method in enumerate(doc["methods"]):
                curves = _curves(doc, method, None, "technique_curves",
                                 lambda c, key=key: c.get(key, []))
                if curves:
                    _draw(ax, doc, method, curves, colors[i % len(colors)])
            ax.set_ylabel(TECHNIQUE_METRICS[key], fontsize=8)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        axes[-1, 0].set_xlabel("updates")
        fig.tight_layout()
        path = os.path.join(out_dir, "techniques.png")
        fig.savefig(path + ".tmp", dpi=100, format="png")
        os.replace(path + ".tmp", path)
        plt.close(fig)
        paths.append(path)
    return paths
