"""Magnitude pruning schemes: the three of See et al. 2016 (section 3.3) and LAMP.

Pure torch: inputs are ``{class: {param name: tensor}}``, outputs boolean keep
masks (``True`` = the weight survives). To prune a fraction ``x`` of ``N``
weights, ``k = round(x * N)`` and the threshold is the k-th smallest score
(``torch.kthvalue``: about 7x faster than ``topk``/``sort`` on 50M weights, and
``torch.quantile`` refuses more than 16M elements). Weights whose score is
``<= threshold`` are pruned, so exactly ``k`` are pruned unless scores tie at the
threshold (e.g. weights that are already zero), in which case all tied weights go.

* **class-blind**: score ``|w|``, one threshold over all classes.
* **class-uniform**: score ``|w|``, a threshold per class pruning ``x`` of it.
* **class-distribution**: weights with ``|w| <= λ·σ_c`` are pruned, ``σ_c`` the
  standard deviation of class ``c``'s surviving weights; ``λ`` is universal and
  chosen so that ``x`` of all weights are pruned. That is class-blind on the
  scores ``|w| / σ_c``, so ``λ`` is itself the k-th smallest of those scores.
* **lamp** (Lee et al., ICLR 2021, Eq. 2): class-blind on the layer-adaptive scores
  ``w_u² / Σ_{v≥u} w_v²`` (each tensor's weights sorted ascending by magnitude).
  Every tensor's largest weight scores 1, so no tensor (hence no class) is emptied.

``max_class_ratio`` caps the pruned fraction of any one class for the global schemes:
a class that would lose more keeps exactly ``1 - cap`` of its weights (its highest
scores) and the rest of the budget goes to the other classes through a new global
threshold, repeated until no class exceeds the cap (water-filling; at most one round
per class). The total still reaches ``ratio`` whenever ``cap >= ratio``, up to rounding.
"""
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple

import torch

from fairseq_efficiency.errors import PluginConfigError

PAPER_SCHEMES = ("class-blind", "class-uniform", "class-distribution")
SCHEMES = PAPER_SCHEMES + ("lamp",)

logger = logging.getLogger(__name__)

Classes = Mapping[str, Mapping[str, torch.Tensor]]


def check_ratio(ratio: float, what: str = "pruning ratio") -> float:
    ratio = float(ratio)
    if not 0.0 <= ratio < 1.0:
        raise PluginConfigError(f"{what} must be in [0, 1), got {ratio}")
    return ratio


def check_class_cap(cap: float, ratio: float = 0.0, what: str = "--prune-max-class-ratio") -> float:
    """A per-class cap in (0, 1] that leaves room for the overall ``ratio``."""
    cap = float(cap)
    if not 0.0 < cap <= 1.0:
        raise PluginConfigError(f"{what} must be in (0, 1], got {cap}")
    if cap < ratio:
        raise PluginConfigError(f"{what} {cap} is below the pruning ratio {ratio}: no class may lose "
                         f"more than {cap:.0%}, so {ratio:.0%} of all weights cannot be pruned")
    return cap


def check_scheme(scheme: str) -> str:
    scheme = str(scheme)
    if scheme not in SCHEMES:
        raise PluginConfigError(
            f"unknown pruning scheme {scheme!r}; choose from {', '.join(SCHEMES)}")
    return scheme


@dataclass
class PruneResult:
    """Keep masks plus what the scheme decided (for the per-class report)."""

    masks: "OrderedDict[str, torch.Tensor]"
    thresholds: Dict[str, float] = field(default_factory=dict)  # |w| threshold per class
    capped: Tuple[str, ...] = ()  # classes held at max_class_ratio


def lamp_scores(w: torch.Tensor) -> torch.Tensor:
    """LAMP score of every weight of one layer (Lee et al. 2021, Eq. 2), same shape as ``w``.

    With the weights sorted ascending by magnitude, ``score(u) = w_u² / Σ_{v≥u} w_v²``;
    ties keep their sort order. All-zero suffixes score 0.
    """
    sq = w.detach().reshape(-1).double() ** 2
    srt, idx = torch.sort(sq)
    suffix = torch.flip(torch.cumsum(torch.flip(srt, [0]), 0), [0])
    score_sorted = torch.where(suffix > 0, srt / suffix.clamp_min(1e-300), torch.zeros_like(srt))
    out = torch.empty_like(score_sorted)
    out[idx] = score_sorted
    return out.float().reshape(w.shape)


def _kth(scores: torch.Tensor, k: int) -> float:
    return float(torch.kthvalue(scores.float().cpu(), k).values)


def _flat_abs(tensors, prev):
    out = []
    for n, t in tensors.items():
        a = t.detach().abs().reshape(-1).float()
        if prev is not None and n in prev:
            a = a.masked_fill(~prev[n].reshape(-1).to(a.device), 0.0)
        out.append(a)
    return out


def _global_select(scores: Mapping[str, Mapping[str, torch.Tensor]], k: int,
                   caps: Optional[Mapping[str, int]]):
    """Prune the ``k`` lowest scores over all classes, no class more than ``caps[c]``.

    Returns ``(pruned flat bool per name, threshold per class, capped classes)``. Free
    classes share one threshold (``score <= thr`` is pruned); a capped class loses
    exactly its ``caps[c]`` lowest scores.
    """
    free = list(scores)
    capped: List[str] = []
    while True:
        k_free = k - sum(caps[c] for c in capped) if caps else k
        pool = [s for c in free for s in scores[c].values()]
        n_free = sum(s.numel() for s in pool)
        thr = _kth(torch.cat(pool), min(k_free, n_free)) if pool and k_free > 0 else -1.0
        over = [c for c in free if caps and
                sum(int((s <= thr).sum()) for s in scores[c].values()) > caps[c]]
        if not over:
            break
        capped += over
        free = [c for c in free if c not in over]
    pruned, thresholds = {}, {}
    for c in free:
        thresholds[c] = thr
        for n, s in scores[c].items():
            pruned[n] = s <= thr
    for c in capped:
        names = list(scores[c])
        flat = torch.cat([scores[c][n] for n in names])
        out = torch.zeros(flat.numel(), dtype=torch.bool)
        if caps[c] > 0:
            lowest = torch.topk(flat.float().cpu(), caps[c], largest=False)
            out[lowest.indices] = True
            thresholds[c] = float(lowest.values.max())
        else:
            thresholds[c] = -1.0
        for n, piece in zip(names, torch.split(out, [scores[c][n].numel() for n in names])):
            pruned[n] = piece.to(scores[c][n].device)
    return pruned, thresholds, tuple(capped)


def compute_masks(classes: Classes, scheme: str, ratio: float,
                  prev: Optional[Mapping[str, torch.Tensor]] = None,
                  max_class_ratio: float = 1.0) -> PruneResult:
    """Keep masks pruning ``ratio`` of all weights in ``classes`` with ``scheme``.

    ``prev`` (keep masks of an earlier pruning event) are respected: weights
    pruned before stay pruned (they count as zeros), so an iterative schedule
    only ever removes more weights. ``max_class_ratio`` caps the pruned fraction
    of every class (module docstring).
    """
    check_scheme(scheme)
    ratio = check_ratio(ratio)
    max_class_ratio = check_class_cap(max_class_ratio, ratio)
    masks: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    res = PruneResult(masks)
    mags = {c: dict(zip(ts.keys(), _flat_abs(ts, prev))) for c, ts in classes.items()}
    total = sum(a.numel() for d in mags.values() for a in d.values())
    shapes = {n: t.shape for ts in classes.values() for n, t in ts.items()}

    if scheme == "class-uniform":  # every class loses ``ratio`` <= the cap
        for c, d in mags.items():
            n_c = sum(a.numel() for a in d.values())
            k = int(round(ratio * n_c))
            thr = _kth(torch.cat(list(d.values())), k) if k > 0 else -1.0
            res.thresholds[c] = max(thr, 0.0)
            for n, a in d.items():
                masks[n] = (a > thr).reshape(shapes[n])
    else:
        scores: Dict[str, Dict[str, torch.Tensor]] = {}
        sigma = {c: 1.0 for c in classes}
        for c, d in mags.items():
            if scheme == "class-distribution":
                flat = torch.cat([t.detach().reshape(-1).float() for t in classes[c].values()])
                alive = torch.cat([a > 0 for a in d.values()]) if prev is not None else None
                vals = flat[alive] if alive is not None and alive.any() else flat
                sigma[c] = float(vals.std(correction=0)) if vals.numel() > 1 else 0.0
                inv = 1.0 / sigma[c] if sigma[c] > 0 else 0.0
                scores[c] = {n: a * inv for n, a in d.items()}
            elif scheme == "lamp":
                scores[c] = {n: lamp_scores(a) for n, a in d.items()}
            else:
                scores[c] = dict(d)
        k = int(round(ratio * total))
        caps = None
        if max_class_ratio < 1.0:
            caps = {c: int(max_class_ratio * sum(a.numel() for a in d.values()))
                    for c, d in mags.items()}
        pruned, thr, res.capped = _global_select(scores, k, caps)
        for c, d in scores.items():
            for n, s in d.items():
                keep = ~pruned[n]
                if scheme == "lamp" and s.numel() and not keep.any() and bool(mags[c][n].any()):
                    keep[int(torch.argmax(s))] = True  # the layer's largest weight scores 1
                masks[n] = keep.reshape(shapes[n])
            if scheme == "lamp":  # report the largest pruned magnitude of the class
                cut = [mags[c][n][pruned[n].reshape(-1)] for n in d]
                cut = torch.cat(cut) if cut else torch.zeros(0)
                res.thresholds[c] = float(cut.max()) if cut.numel() else 0.0
            else:
                res.thresholds[c] = max(thr[c], 0.0) * sigma[c]
        if caps is not None and sum(caps.values()) < k:
            logger.warning("--prune-max-class-ratio %.4f: the classes can give only %d of the "
                           "%d weights to prune (rounding); pruned %.4f instead of %.4f",
                           max_class_ratio, sum(caps.values()), k,
                           sum(caps.values()) / max(total, 1), ratio)
    if prev is not None:
        for n in masks:
            if n in prev:
                masks[n] &= prev[n].to(masks[n].device)
    for ts in classes.values():  # masks live on the parameters' devices
        for n, t in ts.items():
            masks[n] = masks[n].to(t.device)
    return res
