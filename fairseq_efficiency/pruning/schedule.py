"""When to prune and how much: one-shot (See et al. 2016) or gradual cubic (Zhu & Gupta 2017)."""
from typing import List, Tuple

from fairseq_efficiency.errors import PluginConfigError
from fairseq_efficiency.pruning.schemes import check_ratio


def pruning_schedule(ratio: float, at_update: int, steps: int = 1,
                     end_update: int = 0) -> List[Tuple[int, float]]:
    """``[(update, target fraction), ...]`` for the pruning events of a run.

    ``steps == 1``: one event at ``at_update`` pruning ``ratio`` (the paper's
    one-shot pruning, section 3.4). ``steps = K > 1``: K events evenly spaced
    from ``at_update`` to ``end_update``; event ``j = 1..K`` reaches the
    *absolute* target ``ratio * (1 - (1 - j/K)^3)`` (Zhu & Gupta 2017, Eq. 1 with
    initial sparsity 0), so the last event reaches ``ratio``.
    """
    check_ratio(ratio)
    if at_update < 0:
        raise PluginConfigError(f"--prune-at-update must be >= 0, got {at_update}")
    if steps < 1:
        raise PluginConfigError(f"--prune-steps must be >= 1, got {steps}")
    if steps == 1:
        return [(int(at_update), ratio)]
    if end_update <= at_update:
        raise PluginConfigError(
            f"--prune-steps {steps} needs --prune-end-update > --prune-at-update "
            f"({at_update}), got {end_update}")
    span = end_update - at_update
    return [(at_update + round((j - 1) * span / (steps - 1)), ratio * (1 - (1 - j / steps) ** 3))
            for j in range(1, steps + 1)]
