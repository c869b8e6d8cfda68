"""Cost to reach a target validation loss.

**Interpolation rule.** Validation points ``(u_k, L_k)`` are taken in update
order. The run *reaches* the target ``L*`` at the first ``k`` with
``L_k <= L*``. When an earlier point exists (``L_{k-1} > L*``), the crossing
update is interpolated linearly between the two validations,

    u* = u_{k-1} + (L_{k-1} - L*) / (L_{k-1} - L_k) * (u_k - u_{k-1}),

otherwise (the first validation is already at or below the target) ``u* = u_0``,
the earliest update at which the run is known to be there. Boss tokens and wall
time at ``u*`` are read from the run's cumulative counts, linear between train
records (:meth:`~fairseq_efficiency.report.logs.Curves.tokens_at`). The values
at the validation ``u_k`` itself are kept alongside (``at_validation``), an
upper bound that needs no interpolation. A run whose validations never reach
``L*`` has no cost (``None``) and counts as not reached.
"""
from dataclasses import dataclass, asdict
from typing import Optional, Sequence

from fairseq_efficiency.report.logs import Curves


@dataclass
class Crossing:
    updates: float  # interpolated u*
    tokens: Optional[float]
    wall: Optional[float]
    validation_updates: float  # u_k, the first validation at or below the target
    validation_tokens: Optional[float]
    validation_wall: Optional[float]

    def as_dict(self):
        return asdict(self)


def first_crossing(updates: Sequence[float], losses: Sequence[float], target: float):
    """``(u*, k)``: interpolated update of the first crossing of ``target`` and the index of
    the first validation at or below it, or ``None`` when no validation reaches it."""
    for k, (u, loss) in enumerate(zip(updates, losses)):
        if loss <= target:
            if k == 0:
                return float(u), 0
            u0, l0 = updates[k - 1], losses[k - 1]
            frac = (l0 - target) / (l0 - loss) if l0 != loss else 1.0
            return float(u0 + frac * (u - u0)), k
    return None


def cost_to_target(curves: Curves, target: float) -> Optional[Crossing]:
    """Updates, Boss tokens and wall time at which ``curves`` first reach ``target``."""
    valid = sorted(curves.valid, key=lambda p: p.updates)
    hit = first_crossing([p.updates for p in valid], [p.loss for p in valid], target)
    if hit is None:
        return None
    u, k = hit
    uk = valid[k].updates
    return Crossing(u, curves.tokens_at(u), curves.wall_at(u), uk, curves.tokens_at(uk),
                    curves.wall_at(uk))
