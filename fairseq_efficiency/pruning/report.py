"""Per-class sparsity tables (logged at every pruning event)."""
from typing import List, Mapping, Optional, Sequence

COLLAPSE = 0.95  # a class that loses more than this fraction of its weights is flagged


def class_stats(classes: Mapping[str, Sequence[str]], masks) -> list:
    """``[(class, pruned, total), ...]`` from a :class:`MaskSet` (or name -> keep mask)."""
    m = masks.masks if hasattr(masks, "masks") else masks
    rows = []
    for c, names in classes.items():
        pruned = sum(int((~m[n]).sum()) for n in names if n in m)
        total = sum(m[n].numel() for n in names if n in m)
        rows.append((c, pruned, total))
    return rows


def format_class_table(classes, masks, thresholds: Optional[Mapping[str, float]] = None) -> str:
    rows = class_stats(classes, masks)
    thresholds = thresholds or {}
    w = max([len("class")] + [len(r[0]) for r in rows] + [len("total")])
    lines = [f"{'class':<{w}} {'weights':>10} {'pruned':>10} {'sparsity':>8} {'|w| thr':>9}"]
    for c, pruned, total in rows:
        thr = thresholds.get(c)
        lines.append(f"{c:<{w}} {total:>10d} {pruned:>10d} {pruned / max(total, 1):>8.4f} "
                     + (f"{thr:>9.3g}" if thr is not None else f"{'-':>9}")
                     + ("  !" if pruned > COLLAPSE * total else ""))
    tp, tt = sum(r[1] for r in rows), sum(r[2] for r in rows)
    lines.append(f"{'total':<{w}} {tt:>10d} {tp:>10d} {tp / max(tt, 1):>8.4f} {'':>9}")
    return "\n".join(lines)


def collapse_warnings(classes, masks, limit: float = COLLAPSE) -> List[str]:
    """One line per class that lost more than ``limit`` of its weights (marked ``!`` in the
    table): such a layer barely passes a signal any more (layer collapse)."""
    return [f"class {c} lost {pruned / total:.1%} of its {total} weights (more than "
            f"{limit:.0%}, layer collapse): the lamp scheme or a max-class-ratio cap "
            "keeps every class alive"
            for c, pruned, total in class_stats(classes, masks) if total and pruned > limit * total]
