"""Pruning during ``fairseq-train`` with the ``translation_efficiency`` task.

``--prune-ratio X --prune-scheme S --prune-at-update N`` prunes ``X`` of the
weights with scheme ``S`` once ``N`` updates are done, then keeps them at zero
while training continues (retraining, See et al. 2016 section 3.4); with
``--prune-steps K --prune-end-update M`` it prunes gradually (cubic schedule,
Zhu & Gupta 2017); ``--prune-retrain-fraction F`` then retrains with the paper's
learning-rate recipe (:mod:`.retrain`). Masks are saved in the checkpoint (task extra state) and
restored on resume; a checkpoint written by ``fairseq-efficiency-prune`` brings
its masks along in the same way: the hook is then built from the checkpoint even
without pruning flags (``restores`` in :mod:`fairseq_efficiency.techniques`), whatever
``--reset-*`` flags are given. Only ``--prune-drop-masks`` drops them.
Every event restarts fairseq's best-loss tracking (``checkpoint_best.pt`` and
``--patience``), whose earlier losses belong to the denser model.
"""
import logging
from dataclasses import dataclass, field
from typing import Optional

import torch

from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.logging import metrics

from fairseq_efficiency import checkpoint_state
from fairseq_efficiency.compat import restart_best_tracking
from fairseq_efficiency.errors import PluginConfigError
from fairseq_efficiency.hooks import EfficiencyHook
from fairseq_efficiency.pruning.classes import class_tensors, find_weight_classes, split_patterns
from fairseq_efficiency.pruning.masks import MaskSet, unwrap_model
from fairseq_efficiency.pruning.report import collapse_warnings, format_class_table
from fairseq_efficiency.pruning.retrain import DECAYS, PAPER_LR_SCALE, Retraining
from fairseq_efficiency.pruning.schedule import pruning_schedule
from fairseq_efficiency.pruning.schemes import (SCHEMES, check_class_cap, check_ratio, check_scheme,
                                                compute_masks)

logger = logging.getLogger(__name__)


@dataclass
class PruningConfig(FairseqDataclass):
    """Magnitude pruning options (See, Luong & Manning 2016)."""

    prune_ratio: float = field(default=0.0, metadata={
        "help": "fraction of the prunable weights to prune, in [0, 1); 0 switches pruning off "
                "(masks found in a restored checkpoint are still kept)"})
    prune_scheme: ChoiceEnum(SCHEMES) = field(default="lamp", metadata={
        "help": "lamp (default; the best measured at 80%% on converged models, never empties a "
                "layer): one threshold on layer-adaptive scores w_u^2 / sum_{v>=u} w_v^2 (Lee et "
                "al. 2021); class-blind: one magnitude threshold for all weights; class-uniform: the same "
                "fraction in every weight class; class-distribution: threshold lambda*sigma_c "
                "per class (See et al. 2016, sec. 3.3)"})
    prune_max_class_ratio: float = field(default=1.0, metadata={
        "help": "prune at most this fraction of any one weight class (class-blind, "
                "class-distribution, lamp); the rest of the budget goes to the other classes. "
                "Must be >= --prune-ratio"})
    prune_at_update: int = field(default=0, metadata={
        "help": "prune once this many updates are done (one-shot, as in the paper); first "
                "event of the gradual schedule with --prune-steps > 1"})
    prune_steps: int = field(default=1, metadata={
        "help": "number of pruning events; > 1 prunes gradually from --prune-at-update to "
                "--prune-end-update with a cubic schedule (Zhu & Gupta 2017)"})
    prune_end_update: int = field(default=0, metadata={
        "help": "update of the last pruning event when --prune-steps > 1"})
    prune_lr_scale: float = field(default=1.0, metadata={
        "help": "while pruning masks are active (from the first pruning event on, or from a "
                "restored pruned checkpoint), multiply the learning rate the LR scheduler gives "
                "by this factor at every step (the paper retrains with half the LR)"})
    prune_retrain_fraction: float = field(default=0.0, metadata={
        "help": "retrain with the paper's recipe (See et al. 2016, sec. 3.4) for this fraction "
                "of the updates trained before pruning (paper: 1/3, 4 epochs after 12): the "
                "learning rate restarts at --prune-retrain-lr-scale x --lr and is halved every "
                "1/8 of the budget after half of it, overriding the LR scheduler; 0: off"})
    prune_retrain_updates: int = field(default=0, metadata={
        "help": "retraining budget in updates (instead of --prune-retrain-fraction)"})
    prune_retrain_lr_scale: float = field(default=PAPER_LR_SCALE, metadata={
        "help": "retraining restarts at this fraction of the configured --lr (paper: 0.5)"})
    prune_retrain_decay: ChoiceEnum(DECAYS) = field(default="halving", metadata={
        "help": "halving: the paper's schedule; none: constant retraining learning rate"})
    prune_include: Optional[str] = field(default=None, metadata={
        "help": "comma-separated regexes: prune only parameters whose name matches one "
                "(default: all weight matrices and embeddings, no biases or norms)"})
    prune_exclude: Optional[str] = field(default=None, metadata={
        "help": "comma-separated regexes: never prune parameters whose name matches one"})
    prune_split_lstm: bool = field(default=False, metadata={
        "help": "split each LSTM layer into feed-forward (W_ih) and recurrent (W_hh) classes"})
    prune_masks_from: Optional[str] = field(default=None, metadata={
        "help": "take the pruning masks from this checkpoint (e.g. the output of "
                "fairseq-efficiency-prune) when the restored checkpoint has none (or with "
                "--prune-drop-masks); the masks of --restore-file are kept without this flag"})
    prune_drop_masks: bool = field(default=False, metadata={
        "help": "drop the pruning masks of the restored checkpoint: its pruned weights may "
                "become non-zero again (masks are otherwise kept whatever --reset-* flags)"})


def validate(cfg):
    """Reject invalid pruning flags with one clear line."""
    check_ratio(getattr(cfg, "prune_ratio", 0.0), "--prune-ratio")
    check_scheme(str(getattr(cfg, "prune_scheme", "lamp")))
    if cfg.prune_lr_scale <= 0:
        raise PluginConfigError(f"--prune-lr-scale must be > 0, got {cfg.prune_lr_scale}")
    check_class_cap(getattr(cfg, "prune_max_class_ratio", 1.0), cfg.prune_ratio)
    return pruning_schedule(cfg.prune_ratio, cfg.prune_at_update, cfg.prune_steps,
                            cfg.prune_end_update)


class PruningHook(EfficiencyHook):
    name = "pruning"

    def __init__(self, cfg):
        self.schedule = validate(cfg) if cfg.prune_ratio > 0 else []
        self.scheme = str(cfg.prune_scheme)
        self.include = split_patterns(cfg.prune_include)
        self.exclude = split_patterns(cfg.prune_exclude)
        self.split_lstm = bool(cfg.prune_split_lstm)
        self.lr_scale = float(cfg.prune_lr_scale)
        self.masks_from = cfg.prune_masks_from
        self.drop_masks = bool(getattr(cfg, "prune_drop_masks", False))
        self.restore_path = None
        self.max_class_ratio = float(getattr(cfg, "prune_max_class_ratio", 1.0))
        self.retrain = Retraining.from_cfg(cfg)
        if self.retrain is not None and self.lr_scale != 1.0:
            raise PluginConfigError("--prune-lr-scale and the retraining recipe (--prune-retrain-*) both "
                             "set the learning rate: use --prune-retrain-lr-scale")
        # updates trained before pruning (the retraining budget's reference)
        self.trained_updates = self.schedule[0][0] if self.schedule else None
        if self.retrain is not None and self.trained_updates == 0 and not self.retrain.updates:
            raise PluginConfigError("--prune-retrain-fraction is a fraction of the updates before "
                             "pruning, and --prune-at-update is 0: give --prune-retrain-updates")
        self.masks: Optional[MaskSet] = None
        self.events_done = 0
        self._lr = None
        drop = bool(getattr(cfg, "prune_drop_masks", False))
        if cfg.prune_ratio > 0 or cfg.prune_masks_from or not drop:  # masks may be kept
            self.needs_fixed_shapes = "pruning masks"

    def setup(self, task):
        self.restore_path = getattr(task, "restore_path", None)

    # -- model -------------------------------------------------------------------------
    def on_model_built(self, model):
        if self.schedule or self.include or self.exclude:
            find_weight_classes(model, self.include, self.exclude, self.split_lstm)  # fail early

    def on_train_model_built(self, model):
        if self.masks_from and self.masks is None:  # fail before training, in one line
            masks = load_masks(self.masks_from)
            try:
                masks.params(model)  # names and shapes must match
            except ValueError as e:
                raise MaskSourceError(f"--prune-masks-from {self.masks_from}: {e}") from e
            self.masks = masks  # applied when training starts (on_epoch_start)
            logger.info("pruning masks from %s: %d tensors, sparsity %.4f", self.masks_from,
                        len(masks), masks.sparsity())

    def prune(self, model, ratio):
        """One pruning event: new masks from the current weights, applied at once."""
        model = unwrap_model(model)
        classes = class_tensors(model, self.include, self.exclude, self.split_lstm)
        prev = self.masks.masks if self.masks is not None else None
        res = compute_masks(classes, self.scheme, ratio, prev, self.max_class_ratio)
        if self.masks is not None:  # keep masks of parameters outside the current classes
            for n, m in self.masks.masks.items():
                res.masks.setdefault(n, m)
        self.masks = MaskSet(res.masks)
        self.masks.apply_(model)
        logger.info("pruning event %d: %s, target %.4f, sparsity now %.4f\n%s",
                    self.events_done + 1, self.scheme, ratio, self.masks.sparsity(),
                    format_class_table(classes, self.masks, res.thresholds))
        for line in collapse_warnings(classes, self.masks):
            logger.warning("pruning: %s", line)
        # earlier validation losses are those of a denser model
        restart_best_tracking()
        logger.info("pruning: checkpoint_best.pt and --patience count from this event on")
        return res

    # -- training loop -------------------------------------------------------------------
    def on_epoch_start(self, epoch, model):
        # every epoch starts with the model's final weights (after a checkpoint is loaded):
        # restored or loaded masks take effect here, before the first step
        if self.masks is not None:
            self.masks.apply_(model)

    def before_train_step(self, sample, model, update_num):
        if self.retrain is not None and self.masks is None and not self.schedule:
            raise PluginConfigError("--prune-retrain-* retrains a pruned model, but there are no pruning "
                             "masks: give --prune-ratio, --prune-masks-from, or --restore-file "
                             "with a checkpoint written by fairseq-efficiency-prune")
        due = [i for i, (u, _) in enumerate(self.schedule) if u <= update_num]
        if due and due[-1] >= self.events_done:  # resumed past several events: jump to the latest
            with torch.no_grad():
                self.prune(model, self.schedule[due[-1]][1])
            self.events_done = due[-1] + 1
            if self.retrain is not None and self.events_done == len(self.schedule):
                self.retrain.begin(update_num)  # retraining starts at the last event

    def after_train_step(self, out):
        if self.masks is not None:
            self.masks.mask_grads_(out.model)

    def before_optimizer_step(self, model, optimizer, update_num):
        if self.masks is None:
            return
        self.masks.mask_grads_(model)
        self.masks.mask_optimizer_(optimizer, model, grads=True)
        if self.retrain is not None:
            if self.events_done < len(self.schedule):  # gradual pruning not finished yet
                return
            self.retrain.trained_updates = self.trained_updates
            self._lr = optimizer.get_lr()
            optimizer.set_lr(self.retrain.lr(optimizer, update_num, self._lr))
        elif self.lr_scale != 1.0:
            self._lr = optimizer.get_lr()
            optimizer.set_lr(self._lr * self.lr_scale)

    def after_optimizer_step(self, model, optimizer, update_num):
        if self.masks is None:
            return
        if self._lr is not None:  # the LR scheduler keeps owning the base LR
            optimizer.set_lr(self._lr)
            self._lr = None
        self.masks.apply_(model)
        self.masks.mask_optimizer_(optimizer, model)

    def on_valid_epoch_start(self, epoch, model):
        if self.masks is not None:
            self.masks.apply_(model)

    def reduce_metrics(self, logging_outputs, train):
        if self.masks is not None:
            metrics.log_scalar("sparsity", self.masks.sparsity(), weight=0, round=4)
            if self.retrain is not None and self.retrain.last_lr is not None:
                metrics.log_scalar("retrain_lr", self.retrain.last_lr, weight=0, round=8)

    # -- checkpoints -----------------------------------------------------------------------
    def state_dict(self):
        if self.masks is None:
            return {}
        state = hook_state(self.masks, self.scheme, self.events_done, self.trained_updates)
        if self.retrain is not None:
            state.update(self.retrain.state_dict())
        return state

    def load_state_dict(self, state):
        if not state or "masks" not in state:
            return
        masks = MaskSet.from_state_dict(state["masks"])
        source = self.restore_path or "the restored checkpoint"
        if self.drop_masks:
            logger.info("pruning masks of %s dropped (--prune-drop-masks): %d tensors, "
                        "sparsity %.4f", source, len(masks), masks.sparsity())
            return
        if self.masks is not None and self.masks_from and not _same_masks(self.masks, masks):
            logger.warning("--prune-masks-from %s ignored: %s carries its own pruning masks "
                           "(add --prune-drop-masks to use the other file's)",
                           self.masks_from, source)
        self.masks = masks
        self.events_done = int(state.get("events_done", 0))
        if state.get("trained_updates") is not None:
            self.trained_updates = int(state["trained_updates"])
        if self.retrain is not None:
            self.retrain.load_state_dict(state)
        logger.info("restored pruning masks from %s: %d tensors, sparsity %.4f, kept "
                    "whatever --reset-* flags", source, len(masks), masks.sparsity())


def _same_masks(a: MaskSet, b: MaskSet) -> bool:
    return a.masks.keys() == b.masks.keys() and all(
        torch.equal(a.masks[n], b.masks[n]) for n in a.masks)


class MaskSourceError(checkpoint_state.CheckpointStateError):
    """``--prune-masks-from`` names a file that cannot provide masks for this model."""


def hook_state(masks: MaskSet, scheme: str, events_done: int = 0,
               trained_updates: Optional[int] = None) -> dict:
    """The pruning hook's checkpointed state (also written by ``fairseq-efficiency-prune``)."""
    return {"version": 1, "masks": masks.state_dict(), "events_done": events_done,
            "scheme": scheme, "trained_updates": trained_updates}


def hook_state_from_checkpoint(state) -> Optional[dict]:
    """The pruning hook's state inside a loaded fairseq checkpoint dict, if it holds masks."""
    hs = checkpoint_state.hook_states(state).get(PruningHook.name)
    return hs if hs and "masks" in hs else None


def load_masks(path) -> MaskSet:
    """The masks saved in the checkpoint ``path`` (weights-only read of its extra state)."""
    try:
        hs = checkpoint_state.read_hook_states(path).get(PruningHook.name)
    except checkpoint_state.CheckpointStateError as e:
        raise MaskSourceError(f"--prune-masks-from {e}") from e
    if not hs or "masks" not in hs:
        raise MaskSourceError(f"--prune-masks-from {path}: the checkpoint holds no pruning masks")
    return MaskSet.from_state_dict(hs["masks"])


def build(cfg, restoring=False):
    """On with ``--prune-ratio > 0`` or ``--prune-masks-from``; also built when a restored
    checkpoint carries masks, so that retraining a pruned model keeps its sparsity."""
    if not hasattr(cfg, "prune_ratio"):
        return None
    retrain = getattr(cfg, "prune_retrain_fraction", 0) or getattr(cfg, "prune_retrain_updates", 0)
    if restoring or cfg.prune_ratio > 0 or cfg.prune_masks_from or retrain:
        return PruningHook(cfg)
    check_ratio(cfg.prune_ratio, "--prune-ratio")  # e.g. a negative ratio
    return None
