"""``translation_efficiency``: fairseq's translation task + composable efficiency hooks.

With no feature switched on this task is ``translation`` loss for loss (tested
in ``tests/test_task.py``). Each technique of the table in
:mod:`fairseq_efficiency.techniques` adds its config's fields to
:class:`TranslationEfficiencyConfig` and an
:class:`~fairseq_efficiency.hooks.EfficiencyHook` built from them, in table order;
see :mod:`fairseq_efficiency.hooks` for the call protocol.

Checkpoints: the hooks' state goes into the checkpoint's ``extra_state``
(layout: :mod:`fairseq_efficiency.checkpoint_state`) through fairseq's own
``get_checkpoint_dict``/``set_checkpoint_dict`` task API, so resuming with
``fairseq-train`` restores it and plain fairseq tools ignore it. fairseq skips
that state with ``--reset-dataloader``; the state of techniques marked
``restores`` (pruning masks) must outlive every ``--reset-*`` flag, so the task
then reads it from the restore file itself before the first epoch.
"""
import atexit
import logging
import os
from dataclasses import dataclass

from fairseq import utils
from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationConfig, TranslationTask

from fairseq_efficiency import checkpoint_state
from fairseq_efficiency.criterions import SENTENCE_LOSS
from fairseq_efficiency.errors import PluginConfigError, user_errors
from fairseq_efficiency.hooks import HookList, StepOutput
from fairseq_efficiency.techniques import (build_hooks, build_restoring_hooks, config_classes,
                                           restorable_hooks)

logger = logging.getLogger(__name__)

#: TranslationConfig plus the options of every technique of :mod:`fairseq_efficiency.techniques`
TranslationEfficiencyConfig = dataclass(type("TranslationEfficiencyConfig", (
    TranslationConfig, *config_classes()), {
        "__module__": __name__,
        "__doc__": "TranslationConfig plus the options of every efficiency technique."}))


@register_task("translation_efficiency", dataclass=TranslationEfficiencyConfig)
class TranslationEfficiencyTask(TranslationTask):
    """Translation task that hosts efficiency techniques as hooks."""

    cfg: TranslationEfficiencyConfig

    def __init__(self, cfg, src_dict, tgt_dict):
        super().__init__(cfg, src_dict, tgt_dict)
        #: the checkpoint fairseq-train restores from (None outside a fairseq-train config)
        self.restore_path = checkpoint_state.restore_path(checkpoint_state.run_checkpoint_cfg(cfg))
        self.hooks = HookList(build_hooks(cfg))
        self._train_splits = set()
        self._state_restored = False  # fairseq handed us the restore file's task state
        self._kept_state_checked = False
        self._training = True  # whether the last step fairseq ran was a training step
        for hook in self.hooks:
            hook.setup(self)
        if self.hooks:
            logger.info("efficiency features: %s", ", ".join(h.name for h in self.hooks))
            atexit.register(self.hooks.call, "close")

    @classmethod
    @user_errors()  # the plugin's options are validated here, one line each
    def setup_task(cls, cfg, **kwargs):
        for path in utils.split_paths(cfg.data):
            if not os.path.isdir(path):
                raise PluginConfigError(
                    f"translation_efficiency: data directory {path} does not exist "
                    "(binarize your corpus with fairseq-preprocess, or fairseq-efficiency-prepare)"
                )
        return super().setup_task(cfg, **kwargs)

    # -- data -------------------------------------------------------------------
    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        if combine:  # fairseq's trainer loads training data with combine=True only
            self._train_splits.add(split)
        return super().load_dataset(split, epoch=epoch, combine=combine, **kwargs)

    def is_train_dataset(self, dataset):
        return any(self.datasets.get(s) is dataset for s in self._train_splits)

    def get_batch_iterator(self, dataset, **kwargs):
        if self.hooks and "num_shards" in kwargs:
            kwargs["num_shards"], kwargs["shard_id"] = self.hooks.batch_shards(
                kwargs["num_shards"], kwargs.get("shard_id", 0))
        if self.hooks and self.is_train_dataset(dataset):
            itr = self.hooks.train_batch_iterator(self, dataset, **kwargs)
            if itr is not None:
                return itr
        return super().get_batch_iterator(dataset, **kwargs)

    # -- model and criterion --------------------------------------------------------
    @user_errors()
    def build_model(self, cfg, from_checkpoint=False):
        model = super().build_model(cfg, from_checkpoint)
        self.hooks.call("on_model_built", model)
        if not from_checkpoint:  # fairseq-train: check what only training reads
            self.hooks.call("on_train_model_built", model)
        return model

    @user_errors()
    def build_criterion(self, cfg, from_checkpoint=False):
        criterion = super().build_criterion(cfg, from_checkpoint)
        if self.hooks.needs_sentence_losses:
            if not getattr(criterion, "supports_sentence_loss", False):
                names = [h.name for h in self.hooks if h.needs_sentence_losses]
                raise PluginConfigError(
                    f"{', '.join(names)} needs per-sentence losses: use "
                    "--criterion sentence_cross_entropy (same loss as "
                    f"label_smoothed_cross_entropy), not {type(criterion).__name__}"
                )
            criterion.report_sentence_loss = True
            criterion.sentence_loss_smoothing = max(
                float(getattr(h, "sentence_loss_smoothing", 0.0)) for h in self.hooks
                if h.needs_sentence_losses)
        return criterion

    # -- training loop --------------------------------------------------------------
    def begin_epoch(self, epoch, model):
        super().begin_epoch(epoch, model)
        if not self._kept_state_checked:  # the first epoch of this run: the checkpoint is loaded
            self._kept_state_checked = True
            self._restore_kept_state()
        # fairseq's model API for per-epoch behaviour (e.g. meProp alternation);
        # fairseq's trainer itself never calls it
        model.set_epoch(epoch)
        self.hooks.call("on_epoch_start", epoch, model)

    def begin_valid_epoch(self, epoch, model):
        super().begin_valid_epoch(epoch, model)
        self.hooks.call("on_valid_epoch_start", epoch, model)

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        self._training = True
        if not self.hooks:
            return super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad)
        self.hooks.call("before_train_step", sample, model, update_num)
        loss, sample_size, logging_output = super().train_step(
            sample, model, criterion, optimizer, update_num, ignore_grad
        )
        out = StepOutput(
            sample=sample,
            ids=sample["id"],
            sentence_loss=logging_output.pop(SENTENCE_LOSS, None),
            model=model,
            loss=loss,
            sample_size=sample_size,
            update_num=update_num,
            ignore_grad=ignore_grad,
        )
        self.hooks.call("after_train_step", out)
        return loss, sample_size, logging_output

    def valid_step(self, sample, model, criterion):
        self._training = False
        loss, sample_size, logging_output = super().valid_step(sample, model, criterion)
        logging_output.pop(SENTENCE_LOSS, None)
        return loss, sample_size, logging_output

    def optimizer_step(self, optimizer, model, update_num):
        self.hooks.call("before_optimizer_step", model, optimizer, update_num)
        super().optimizer_step(optimizer, model, update_num)
        self.hooks.call("after_optimizer_step", model, optimizer, update_num)

    def reduce_metrics(self, logging_outputs, criterion):
        # fairseq's trainer reduces right after the train or valid step that made them
        super().reduce_metrics(logging_outputs, criterion)
        self.hooks.call("reduce_metrics", logging_outputs, train=self._training)

    # -- checkpoints: fairseq's task checkpoint API ---------------------------------------
    def get_checkpoint_dict(self):
        return checkpoint_state.task_checkpoint_dict(self.hooks.state_dict()) if self.hooks else {}

    def set_checkpoint_dict(self, state):
        self._state_restored = True
        self._load_hook_states(checkpoint_state.task_state_hooks(state))

    def _load_hook_states(self, states):
        present = {h.name for h in self.hooks}
        for hook in build_restoring_hooks(self.cfg, [n for n, s in states.items()
                                                      if s and n not in present]):
            hook.setup(self)
            self.hooks.add(hook)
            logger.info("efficiency feature %s: restored from the checkpoint", hook.name)
        self.hooks.load_state_dict(states)

    def _restore_kept_state(self):
        """State that outlives every ``--reset-*`` flag (``restores``), read from the restore
        file when fairseq skipped the task state (``--reset-dataloader``)."""
        path = self.restore_path
        if self._state_restored or not path or not os.path.isfile(path):
            return
        kept = restorable_hooks()
        saved = {n: s for n, s in checkpoint_state.read_hook_states(path).items() if s}
        reset = sorted(n for n in saved if n not in kept and n in {h.name for h in self.hooks})
        if reset:
            logger.info("efficiency state of %s not restored (it follows the data iterator, "
                        "which this run resets): %s", path, ", ".join(reset))
        states = {n: s for n, s in saved.items() if n in kept}
        if states:
            self._load_hook_states(states)
