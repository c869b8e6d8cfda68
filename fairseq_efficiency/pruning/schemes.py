"""Magnitude pruning schemes: the three of See et al. 2016 (section 3.3) and LAMP.

Each scheme is a small strategy object in the manner of ``torch.nn.utils.prune``
(parameters in ``__init__``; :meth:`~PruningScheme.compute_mask` ``(t, default_mask)``
for one tensor) over one importance score, with a model-level
:meth:`~PruningScheme.compute_masks` over weight classes ``{class: {param name:
tensor}}`` (torch's ``global_unstructured``, aware of classes). Masks are keep masks
(``True`` = the weight survives). To prune a fraction ``x`` of ``N`` weights,
``k = round(x * N)`` and the threshold is the k-th smallest score (``torch.kthvalue``:
about 7x faster than ``topk``/``sort`` on 50M weights, and ``torch.quantile`` refuses
more than 16M elements). Weights whose score is ``<= threshold`` are pruned, so exactly
``k`` are pruned unless scores tie at the threshold (e.g. weights that are already zero),
in which case all tied weights go.

* ``class-blind`` (:class:`ClassBlind`): score ``|w|``, one threshold over all classes.
* ``class-uniform`` (:class:`ClassUniform`): score ``|w|``, a threshold per class pruning
  ``x`` of it.
* ``class-distribution`` (:class:`ClassDistribution`): score ``|w| / σ_c``, ``σ_c`` the
  standard deviation of class ``c``'s surviving weights, one threshold ``λ``: weights with
  ``|w| <= λ·σ_c`` go.
* ``lamp`` (:class:`LAMP`, Lee et al., ICLR 2021, Eq. 2): score ``w_u² / Σ_{v≥u} w_v²`` over
  each tensor's weights sorted ascending by magnitude, one threshold. Every tensor's largest
  weight scores 1, so no tensor (hence no class) is emptied.

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
from torch.nn.utils import prune

from fairseq_efficiency.errors import PluginConfigError

logger = logging.getLogger(__name__)

Classes = Mapping[str, Mapping[str, torch.Tensor]]
Masks = Mapping[str, torch.Tensor]


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


def _numel(tensors: Mapping[str, torch.Tensor]) -> int:
    return sum(t.numel() for t in tensors.values())


class PruningScheme(prune.BasePruningMethod):
    """Prune ``amount`` of the weights with the lowest importance scores under one global
    threshold, no class losing more than ``max_class_ratio`` of its weights.

    A subclass changes the importance score (:meth:`importance`), the selection
    (:meth:`select`) or what survives it (:meth:`keep`). Weights pruned before (outside
    ``prev``/``default_mask``) count as zeros and stay pruned, so an iterative schedule
    only ever removes more weights; ``amount`` is the fraction of *all* weights pruned
    afterwards.
    """

    PRUNING_TYPE = "unstructured"
    name = ""

    def __init__(self, amount: float, max_class_ratio: float = 1.0):
        self.amount = check_ratio(amount)
        self.max_class_ratio = check_class_cap(max_class_ratio, self.amount)

    def __repr__(self):
        return (f"{type(self).__name__}(amount={self.amount}, "
                f"max_class_ratio={self.max_class_ratio})")

    # -- the score -------------------------------------------------------------------------
    def importance(self, weights: Mapping[str, torch.Tensor], mags: Mapping[str, torch.Tensor],
                   pruned_before: bool) -> Tuple[Dict[str, torch.Tensor], Optional[float]]:
        """Importance scores of one class's weights (flat, by name) and the magnitude that
        one unit of score stands for in the report (None: report the largest pruned |w|).

        ``mags`` are the flat magnitudes with weights pruned before at zero; ``weights``
        the tensors themselves.
        """
        return dict(mags), 1.0

    # -- the selection ---------------------------------------------------------------------
    def select(self, scores: Mapping[str, Mapping[str, torch.Tensor]]):
        """``(pruned flat bool by name, score threshold by class, capped classes)``."""
        sizes = {c: _numel(d) for c, d in scores.items()}
        total = sum(sizes.values())
        k = int(round(self.amount * total))
        caps = None
        if self.max_class_ratio < 1.0:
            caps = {c: int(self.max_class_ratio * n) for c, n in sizes.items()}
            if sum(caps.values()) < k:
                logger.warning("--prune-max-class-ratio %.4f: the classes can give only %d of the "
                               "%d weights to prune (rounding); pruned %.4f instead of %.4f",
                               self.max_class_ratio, sum(caps.values()), k,
                               sum(caps.values()) / max(total, 1), self.amount)
        return _global_select(scores, k, caps)

    def keep(self, pruned: torch.Tensor, score: torch.Tensor, mag: torch.Tensor) -> torch.Tensor:
        """Flat keep mask of one tensor from its pruned positions."""
        return ~pruned

    # -- torch.nn.utils.prune's interface ---------------------------------------------------
    def compute_mask(self, t: torch.Tensor, default_mask: torch.Tensor) -> torch.Tensor:
        """Keep mask of the tensor ``t`` as a class of its own, on top of ``default_mask``
        (same shape and dtype as ``default_mask``, as in ``torch.nn.utils.prune``)."""
        res = self.compute_masks({"": {"": t}}, {"": default_mask.bool()})
        return default_mask.masked_fill(~res.masks[""].to(default_mask.device), 0)

    # -- whole models ----------------------------------------------------------------------
    def compute_masks(self, classes: Classes, prev: Optional[Masks] = None) -> PruneResult:
        """Keep masks of every tensor in ``classes`` (``{class: {name: tensor}}``) and the
        per-class |w| thresholds; ``prev``: keep masks of an earlier pruning event."""
        before = prev if prev is not None else {}
        mags = OrderedDict((c, OrderedDict((n, _magnitude(t, before.get(n)))
                                           for n, t in ts.items())) for c, ts in classes.items())
        scores, units = OrderedDict(), {}
        for c, d in mags.items():
            scores[c], units[c] = self.importance(classes[c], d, prev is not None)
        pruned, thr, capped = self.select(scores)
        res = PruneResult(OrderedDict(), capped=capped)
        for c, ts in classes.items():
            for n, t in ts.items():
                keep = self.keep(pruned[n], scores[c][n], mags[c][n]).reshape(t.shape)
                if prev is not None and n in prev:
                    keep &= prev[n].to(keep.device)
                res.masks[n] = keep.to(t.device)
            if units[c] is None:  # the largest pruned magnitude of the class
                cut = [mags[c][n][pruned[n].reshape(-1)] for n in ts]
                cut = torch.cat(cut) if cut else torch.zeros(0)
                res.thresholds[c] = float(cut.max()) if cut.numel() else 0.0
            else:
                res.thresholds[c] = max(thr[c], 0.0) * units[c]
        return res


def _magnitude(t: torch.Tensor, keep: Optional[torch.Tensor]) -> torch.Tensor:
    """``|w|`` flat in float32, zero where ``keep`` says the weight was pruned before."""
    a = t.detach().abs().reshape(-1).float()
    return a if keep is None else a.masked_fill(~keep.reshape(-1).to(a.device), 0.0)


def _global_select(scores: Mapping[str, Mapping[str, torch.Tensor]], k: int,
                   caps: Optional[Mapping[str, int]]):
    """Prune the ``k`` lowest scores over all classes, no class more than ``caps[c]``.

    Free classes share one threshold (``score <= thr`` is pruned); a capped class
    loses exactly its ``caps[c]`` lowest scores.
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


class ClassBlind(PruningScheme):
    """See et al. 2016, sec. 3.3: one magnitude threshold over all classes."""

    name = "class-blind"


class ClassUniform(PruningScheme):
    """See et al. 2016, sec. 3.3: every class loses ``amount`` of its weights (so never
    more than the cap, which is at least ``amount``)."""

    name = "class-uniform"

    def select(self, scores):
        pruned, thresholds = {}, {}
        for c, d in scores.items():
            k = int(round(self.amount * _numel(d)))
            thresholds[c] = _kth(torch.cat(list(d.values())), k) if k > 0 else -1.0
            for n, s in d.items():
                pruned[n] = s <= thresholds[c]
        return pruned, thresholds, ()


class ClassDistribution(PruningScheme):
    """See et al. 2016, sec. 3.3: weights with ``|w| <= λ·σ_c`` go, ``λ`` universal: one
    threshold on ``|w| / σ_c``, so ``λ`` is itself the k-th smallest of those scores."""

    name = "class-distribution"

    def importance(self, weights, mags, pruned_before):
        flat = torch.cat([t.detach().reshape(-1).float() for t in weights.values()])
        alive = torch.cat([a > 0 for a in mags.values()]) if pruned_before else None
        vals = flat[alive] if alive is not None and alive.any() else flat
        sigma = float(vals.std(correction=0)) if vals.numel() > 1 else 0.0
        inv = 1.0 / sigma if sigma > 0 else 0.0
        return {n: a * inv for n, a in mags.items()}, sigma


class LAMP(PruningScheme):
    """Lee et al., ICLR 2021: one threshold on layer-adaptive scores (:func:`lamp_scores`);
    a tensor that would lose every weight keeps its largest (score 1)."""

    name = "lamp"

    def importance(self, weights, mags, pruned_before):
        return {n: lamp_scores(a) for n, a in mags.items()}, None

    def keep(self, pruned, score, mag):
        keep = ~pruned
        if score.numel() and not keep.any() and bool(mag.any()):
            keep[int(torch.argmax(score))] = True
        return keep


SCHEME_CLASSES = OrderedDict((s.name, s) for s in (ClassBlind, ClassUniform, ClassDistribution,
                                                    LAMP))
SCHEMES = tuple(SCHEME_CLASSES)
PAPER_SCHEMES = SCHEMES[:3]


def check_scheme(scheme: str) -> str:
    scheme = str(scheme)
    if scheme not in SCHEME_CLASSES:
        raise PluginConfigError(
            f"unknown pruning scheme {scheme!r}; choose from {', '.join(SCHEMES)}")
    return scheme


def make_scheme(scheme: str, ratio: float, max_class_ratio: float = 1.0) -> PruningScheme:
    """The scheme object named ``scheme`` pruning ``ratio`` of the weights."""
    return SCHEME_CLASSES[check_scheme(scheme)](ratio, max_class_ratio)


def compute_masks(classes: Classes, scheme: str, ratio: float, prev: Optional[Masks] = None,
                  max_class_ratio: float = 1.0) -> PruneResult:
    """Keep masks pruning ``ratio`` of all weights in ``classes`` with the scheme named
    ``scheme`` (functional form of :meth:`PruningScheme.compute_masks`)."""
    return make_scheme(scheme, ratio, max_class_ratio).compute_masks(classes, prev)
