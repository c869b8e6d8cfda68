"""The retraining recipe of See et al. 2016, section 3.4, as a learning-rate schedule.

The paper retrains a pruned model for 4 epochs where the original training took 12
(a budget of 1/3 of it), with plain SGD restarted at learning rate 0.5 where the
original training started at 1.0 (half), constant for 2 epochs, then halved every
half epoch. In units of the retraining budget ``B`` (updates) and with ``t`` the
updates done since pruning::

    lr(t) = s * lr0 * 0.5 ** n(t),   n(t) = 0                          for t < B/2
                                     n(t) = 1 + floor((t - B/2) / (B/8)) after, at most 4

``lr0`` is the original run's (peak) learning rate, ``s`` the restart scale (0.5).
The last value holds after the budget. Adam-trained models get the same shape from
half the original peak learning rate: Adam's step is proportional to its learning rate
as SGD's is, so the restart and the halvings shrink it alike (a principled choice; the
constants were not tuned for Adam by a measurement).
"""
import logging
from dataclasses import dataclass
from typing import Optional

from fairseq_efficiency.errors import PluginConfigError

logger = logging.getLogger(__name__)

PAPER_FRACTION = 1 / 3  # 4 retraining epochs for 12 original ones
PAPER_LR_SCALE = 0.5  # restart at 0.5 for an original 1.0
DECAY_START = 0.5  # first halving after 2 of 4 epochs ...
DECAY_EVERY = 0.125  # ... then every half epoch
MAX_HALVINGS = 4  # halvings at B/2, 5B/8, 6B/8, 7B/8
DECAYS = ("halving", "none")


@dataclass(frozen=True)
class RetrainSchedule:
    """Learning rate of every retraining update (module docstring)."""

    budget: int  # retraining updates B
    lr: float  # restart learning rate s * lr0
    decay: str = "halving"  # "none": constant at ``lr``

    def __post_init__(self):
        if self.budget < 1:
            raise PluginConfigError(f"the retraining budget must be at least 1 update, got {self.budget}")
        if self.decay not in DECAYS:
            raise PluginConfigError(f"unknown retraining decay {self.decay!r}; choose from {DECAYS}")

    def halvings(self, step: int) -> int:
        """How often the learning rate has been halved before retraining update ``step``."""
        if self.decay == "none" or 2 * step < self.budget:  # t < B/2
            return 0
        # 1 + floor((t - B/2) / (B/8)) in integers
        return min(1 + (8 * step - 4 * self.budget) // self.budget, MAX_HALVINGS)

    def lr_at(self, step: int) -> float:
        return self.lr * 0.5 ** self.halvings(step)

    def describe(self, start: int = 0) -> str:
        if self.decay == "none":
            return f"{self.budget} updates from update {start} at lr {self.lr:.4g}"
        first = start + (self.budget + 1) // 2
        every = self.budget / 8
        return (f"{self.budget} updates from update {start}: lr {self.lr:.4g}, halved from "
                f"update {first} every {every:.4g} updates")


def configured_lr(optimizer) -> Optional[float]:
    """The run's configured (peak) learning rate ``--lr`` from a fairseq optimizer wrapper."""
    obj = optimizer
    for _ in range(3):
        if obj is None:
            break
        for holder in (getattr(obj, "cfg", None), getattr(obj, "args", None)):
            lr = getattr(holder, "lr", None) if holder is not None else None
            if lr is not None:
                return float(lr[0]) if hasattr(lr, "__len__") and not isinstance(lr, str) else float(lr)
        obj = getattr(obj, "optimizer", None)
    return None


class Retraining:
    """The recipe applied during one run: when it starts, its budget and its learning rates.

    The budget is ``updates`` when given, else ``fraction`` of the updates trained
    before pruning (``trained_updates``: the update of the first pruning event during
    training, or the pruned checkpoint's update count for offline pruning).
    """

    def __init__(self, fraction: float = PAPER_FRACTION, updates: int = 0,
                 lr_scale: float = PAPER_LR_SCALE, decay: str = "halving"):
        if fraction < 0:
            raise PluginConfigError(f"--prune-retrain-fraction must be >= 0, got {fraction}")
        if updates < 0:
            raise PluginConfigError(f"--prune-retrain-updates must be >= 0, got {updates}")
        if lr_scale <= 0:
            raise PluginConfigError(f"--prune-retrain-lr-scale must be > 0, got {lr_scale}")
        if decay not in DECAYS:
            raise PluginConfigError(f"unknown --prune-retrain-decay {decay!r}; choose from {DECAYS}")
        self.fraction, self.updates = float(fraction), int(updates)
        self.lr_scale, self.decay = float(lr_scale), str(decay)
        self.trained_updates: Optional[int] = None
        self.start: Optional[int] = None
        self._schedule: Optional[RetrainSchedule] = None
        self.last_lr: Optional[float] = None

    @classmethod
    def from_cfg(cls, cfg) -> Optional["Retraining"]:
        """The recipe of ``--prune-retrain-*``, or None when it is off."""
        fraction = float(getattr(cfg, "prune_retrain_fraction", 0.0) or 0.0)
        updates = int(getattr(cfg, "prune_retrain_updates", 0) or 0)
        if fraction == 0 and updates == 0:
            return None
        return cls(fraction, updates, float(cfg.prune_retrain_lr_scale),
                   str(cfg.prune_retrain_decay))

    def budget(self) -> int:
        if self.updates > 0:
            return self.updates
        if not self.trained_updates:
            raise PluginConfigError("--prune-retrain-fraction needs the length of the training before "
                             "pruning, which these pruning masks do not record; give the budget "
                             "as --prune-retrain-updates N instead")
        return max(1, round(self.fraction * self.trained_updates))

    def begin(self, update_num: int):
        """Start (or restart) the schedule at ``update_num`` (the pruning event)."""
        self.start = int(update_num)
        self._schedule = None

    def lr(self, optimizer, update_num: int, current_lr: float) -> float:
        """The learning rate of update ``update_num``; starts the schedule if it has not
        started yet (masks restored from a pruned checkpoint) or was started in an earlier
        run whose update count was reset (``--reset-optimizer``)."""
        if self.start is None or self.start > update_num:
            self.begin(update_num)
        if self._schedule is None:
            lr0 = configured_lr(optimizer)
            lr0 = current_lr if lr0 is None else lr0
            self._schedule = RetrainSchedule(self.budget(), self.lr_scale * lr0, self.decay)
            logger.info("retraining after pruning (See et al. 2016, sec. 3.4): %s",
                        self._schedule.describe(self.start))
        self.last_lr = self._schedule.lr_at(update_num - self.start)
        return self.last_lr

    def state_dict(self) -> dict:
        return {"retrain_start": self.start}

    def load_state_dict(self, state: dict):
        if state.get("retrain_start") is not None:
            self.begin(int(state["retrain_start"]))
