"""Pruning during ``fairseq-train`` with the ``translation_efficiency`` task.

``--prune-ratio X --prune-scheme S --prune-at-update N`` prunes ``X`` of the
weights with scheme ``S`` once ``N`` updates are done, then keeps them at zero
while training continues (retraining, See et al. 2016 section 3.4); with
``--prune-steps K --prune-end-update M`` it prunes gradually (cubic schedule,
Zhu & Gupta 2017). Masks are saved in the checkpoint (task extra state) and
restored on resume; a checkpoint written by ``fairseq-efficiency-prune`` brings
its masks along in the same way: the hook is then built from the checkpoint even
without pruning flags (``register_hook_factory(restores=...)``).
"""
import logging
from dataclasses import dataclass, field
from typing import Optional

import torch

from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.logging import metrics

from fairseq_efficiency.errors import PluginConfigError
from fairseq_efficiency.features import register_hook_factory
from fairseq_efficiency.hooks import EfficiencyHook
from fairseq_efficiency.pruning.classes import find_weight_classes, split_patterns
from fairseq_efficiency.pruning.masks import MaskSet, unwrap_model
from fairseq_efficiency.pruning.report import format_class_table
from fairseq_efficiency.pruning.schedule import pruning_schedule
from fairseq_efficiency.pruning.schemes import SCHEMES, check_ratio, check_scheme, compute_masks

logger = logging.getLogger(__name__)


@dataclass
class PruningConfig(FairseqDataclass):
    """Magnitude pruning options (See, Luong & Manning 2016)."""

    prune_ratio: float = field(default=0.0, metadata={
        "help": "fraction of the prunable weights to prune, in [0, 1); 0 switches pruning off "
                "(masks found in a restored checkpoint are still kept)"})
    prune_scheme: ChoiceEnum(SCHEMES) = field(default="class-blind", metadata={
        "help": "class-blind: one magnitude threshold for all weights; class-uniform: the same "
                "fraction in every weight class; class-distribution: threshold lambda*sigma_c "
                "per class (See et al. 2016, sec. 3.3)"})
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
    prune_include: Optional[str] = field(default=None, metadata={
        "help": "comma-separated regexes: prune only parameters whose name matches one "
                "(default: all weight matrices and embeddings, no biases or norms)"})
    prune_exclude: Optional[str] = field(default=None, metadata={
        "help": "comma-separated regexes: never prune parameters whose name matches one"})
    prune_split_lstm: bool = field(default=False, metadata={
        "help": "split each LSTM layer into feed-forward (W_ih) and recurrent (W_hh) classes"})
    prune_masks_from: Optional[str] = field(default=None, metadata={
        "help": "take the pruning masks from this checkpoint (e.g. the output of "
                "fairseq-efficiency-prune; needed with --reset-dataloader, which makes "
                "fairseq skip the task state of --restore-file)"})


def validate(cfg):
    """Reject invalid pruning flags with one clear line."""
    check_ratio(getattr(cfg, "prune_ratio", 0.0), "--prune-ratio")
    check_scheme(str(getattr(cfg, "prune_scheme", "class-blind")))
    if cfg.prune_lr_scale <= 0:
        raise PluginConfigError(f"--prune-lr-scale must be > 0, got {cfg.prune_lr_scale}")
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
        self.masks: Optional[MaskSet] = None
        self.events_done = 0
        self._dirty = False
        self._lr = None
        self._model_ref = None

    # -- model -------------------------------------------------------------------------
    def on_model_built(self, model):
        if self.schedule or self.include or self.exclude:
            find_weight_classes(model, self.include, self.exclude, self.split_lstm)  # fail early

    def prune(self, model, ratio):
        """One pruning event: new masks from the current weights, applied at once."""
        model = unwrap_model(model)
        classes = find_weight_classes(model, self.include, self.exclude, self.split_lstm)
        params = dict(model.named_parameters())
        tensors = {c: {n: params[n].data for n in names} for c, names in classes.items()}
        prev = self.masks.masks if self.masks is not None else None
        res = compute_masks(tensors, self.scheme, ratio, prev)
        if self.masks is not None:  # keep masks of parameters outside the current classes
            for n, m in self.masks.masks.items():
                res.masks.setdefault(n, m)
        self.masks = MaskSet(res.masks)
        self.masks.apply_(model)
        logger.info("pruning event %d: %s, target %.4f, sparsity now %.4f\n%s",
                    self.events_done + 1, self.scheme, ratio, self.masks.sparsity(),
                    format_class_table(classes, self.masks, res.thresholds))
        return res

    # -- training loop -------------------------------------------------------------------
    def before_train_step(self, sample, model, update_num):
        self._model_ref = model
        if self.masks_from and self.masks is None:  # training only (not at generation time)
            self.masks = load_masks(self.masks_from)
            self.masks.params(model)  # names and shapes must match
            self._dirty = True
        if self._dirty and self.masks is not None:
            self.masks.apply_(model)
            self._dirty = False
        due = [i for i, (u, _) in enumerate(self.schedule) if u <= update_num]
        if due and due[-1] >= self.events_done:  # resumed past several events: jump to the latest
            with torch.no_grad():
                self.prune(model, self.schedule[due[-1]][1])
            self.events_done = due[-1] + 1

    def after_train_step(self, out):
        if self.masks is not None and self._model_ref is not None:
            self.masks.mask_grads_(self._model_ref)

    def before_optimizer_step(self, model, optimizer, update_num):
        if self.masks is None:
            return
        self.masks.mask_grads_(model)
        self.masks.mask_optimizer_(optimizer, model, grads=True)
        if self.lr_scale != 1.0:
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

    def reduce_metrics(self, logging_outputs):
        if self.masks is not None:
            metrics.log_scalar("sparsity", self.masks.sparsity(), weight=0, round=4)

    # -- checkpoints -----------------------------------------------------------------------
    def state_dict(self):
        if self.masks is None:
            return {}
        return {"version": 1, "masks": self.masks.state_dict(), "events_done": self.events_done,
                "scheme": self.scheme}

    def load_state_dict(self, state):
        if not state or "masks" not in state:
            return
        self.masks = MaskSet.from_state_dict(state["masks"])
        self.events_done = int(state.get("events_done", 0))
        self._dirty = True
        logger.info("restored pruning masks: %d tensors, sparsity %.4f",
                    len(self.masks), self.masks.sparsity())


def hook_state_from_checkpoint(state) -> Optional[dict]:
    """The pruning hook's state inside a loaded fairseq checkpoint dict, if any."""
    extra = state.get("extra_state") or {}
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(value.get("hooks"), dict):
            hs = value["hooks"].get(PruningHook.name)
            if hs and "masks" in hs:
                return hs
    return None


def load_masks(path) -> MaskSet:
    from fairseq_efficiency.pruning.checkpoint import read_checkpoint

    hs = hook_state_from_checkpoint(read_checkpoint(path))
    if hs is None:
        raise ValueError(f"--prune-masks-from {path}: the checkpoint holds no pruning masks")
    return MaskSet.from_state_dict(hs["masks"])


@register_hook_factory(restores=PruningHook.name)
def build(cfg, restoring=False):
    """On with ``--prune-ratio > 0`` or ``--prune-masks-from``; also built when a restored
    checkpoint carries masks, so that retraining a pruned model keeps its sparsity."""
    if not hasattr(cfg, "prune_ratio"):
        return None
    if restoring or cfg.prune_ratio > 0 or cfg.prune_masks_from:
        if getattr(cfg, "mesimp_interval", 0) > 0:
            raise PluginConfigError(
                "pruning masks need fixed matrix shapes, which meSimp changes: "
                "simplify first, then prune the meSimp checkpoint "
                "(fairseq-efficiency-prune) and retrain it without --mesimp-interval")
        return PruningHook(cfg)
    check_ratio(cfg.prune_ratio, "--prune-ratio")  # e.g. a negative ratio
    return None
