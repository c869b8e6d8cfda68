"""The hook protocol through which each technique plugs into ``translation_efficiency``.

fairseq lets a run choose one task, one criterion and one model. The
``translation_efficiency`` task is therefore the host, and every technique
(AutoAssist, meProp/meSimp, magnitude pruning, ...) is an
:class:`EfficiencyHook` that the task calls at fixed points of training. A hook
keeps its own state, never touches another hook, and does nothing the task
does not ask of it; with no hook enabled the task *is* fairseq's translation
task.

Call order inside one ``fairseq-train`` run::

    setup(task)                             once, after the task is built
    on_model_built(model)                   after task.build_model (also at generate time)
    on_train_model_built(model)             after it, in fairseq-train only
    [load_state_dict(state)]                on resume, from the checkpoint (state of
                                            ``restores=`` hooks also with --reset-dataloader)
    loop over epochs:
        on_epoch_start(epoch, model)
        loop over updates:
            before_train_step(sample, model, update_num)
            after_train_step(StepOutput)    loss is known; backward is done
            before_optimizer_step(model, optimizer, update_num)   grads are final
            after_optimizer_step(model, optimizer, update_num)
        on_valid_epoch_start(epoch, model)
        [state_dict()]                      when fairseq saves a checkpoint
    close()                                 at exit (stop worker threads, flush files)

A hook may also own the training batch iterator (only one hook per run may:
AutoAssist-style instance selection) by returning an iterator from
:meth:`EfficiencyHook.train_batch_iterator`.
"""
from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch

from fairseq_efficiency.errors import user_errors


def torch_optimizer(optimizer):
    """The ``torch.optim.Optimizer`` inside fairseq's optimizer wrappers (``.optimizer``),
    or None."""
    opt = optimizer
    for _ in range(5):
        if isinstance(opt, torch.optim.Optimizer):
            return opt
        opt = getattr(opt, "optimizer", None)
    return None


@dataclass
class StepOutput:
    """What a hook sees after the forward/backward of one training batch.

    ``sentence_loss`` is each sentence's token-mean negative log-likelihood
    (no label smoothing, padding excluded), detached, aligned with ``ids``
    (the dataset indices of the sample's sentences). It is ``None`` when the
    criterion does not expose per-sentence losses (see
    :class:`fairseq_efficiency.criterions.SentenceCrossEntropyCriterion`).
    """

    sample: Dict[str, Any]
    ids: torch.Tensor
    sentence_loss: Optional[torch.Tensor]
    sentence_ntokens: Optional[torch.Tensor]
    loss: torch.Tensor
    sample_size: int
    update_num: int
    ignore_grad: bool


class EfficiencyHook:
    """Base class: every method is a no-op, override what the technique needs.

    Attributes:
        name: key under which the hook's state is stored in checkpoints.
        needs_sentence_losses: the task refuses to start when this is True and
            the chosen criterion does not report per-sentence losses.
    """

    name = "hook"
    needs_sentence_losses = False

    def setup(self, task):
        """Called once with the task, after its dictionaries are loaded."""

    def on_model_built(self, model):
        """Called with the freshly built model (training and generation)."""

    def on_train_model_built(self, model):
        """Called after :meth:`on_model_built` when the model is built for training (not from
        a checkpoint for inference): check inputs only training reads, before it starts."""

    def on_epoch_start(self, epoch: int, model):
        """Start of training epoch ``epoch`` (1-based)."""

    def on_valid_epoch_start(self, epoch: int, model):
        """Start of validation after training epoch ``epoch``."""

    def before_train_step(self, sample, model, update_num: int):
        """Before the forward pass of one training batch."""

    def after_train_step(self, out: StepOutput):
        """After forward + backward of one batch (per-sentence losses available)."""

    def before_optimizer_step(self, model, optimizer, update_num: int):
        """Gradients are all-reduced and clipped; the parameters not yet updated."""

    def after_optimizer_step(self, model, optimizer, update_num: int):
        """The optimizer has updated the parameters."""

    def train_batch_iterator(self, task, dataset, **kwargs):
        """Return an ``EpochBatchIterator`` for the training set, or ``None``.

        ``kwargs`` are those of :meth:`fairseq.tasks.FairseqTask.get_batch_iterator`.
        """
        return None

    def batch_shards(self, num_shards: int, shard_id: int):
        """Return the ``(num_shards, shard_id)`` every batch iterator (train and valid)
        is built with; e.g. ranks that must read the same batches share a shard."""
        return num_shards, shard_id

    def reduce_metrics(self, logging_outputs):
        """Log the hook's own metrics through :mod:`fairseq.logging.metrics`."""

    def state_dict(self) -> Dict[str, Any]:
        """Picklable state saved in the checkpoint's extra state."""
        return {}

    def load_state_dict(self, state: Dict[str, Any]):
        """Restore what :meth:`state_dict` returned."""

    def close(self):
        """Release threads, processes or files."""


class HookList:
    """Runs the enabled hooks in order; owns the checkpointed state of all of them.

    Every call into the hooks passes :func:`~fairseq_efficiency.errors.user_errors`: a
    hook's :class:`~fairseq_efficiency.errors.PluginConfigError` is one line in fairseq's
    command lines.
    """

    def __init__(self, hooks=()):
        self.hooks = list(hooks)
        self._validate(self.hooks)

    @staticmethod
    def _validate(hooks):
        """Hook names are unique (checkpoint keys); at most one hook owns the train iterator."""
        names = [h.name for h in hooks]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"two efficiency hooks share the name(s) {sorted(dup)}")
        owners = [h.name for h in hooks
                  if type(h).train_batch_iterator is not EfficiencyHook.train_batch_iterator]
        if len(owners) > 1:
            raise ValueError(f"only one feature may own the training batch iterator, got {owners}")

    def __iter__(self):
        return iter(self.hooks)

    def __len__(self):
        return len(self.hooks)

    def __bool__(self):
        return bool(self.hooks)

    @property
    def needs_sentence_losses(self):
        return any(h.needs_sentence_losses for h in self.hooks)

    @user_errors()
    def call(self, method, *args, **kwargs):
        for h in self.hooks:
            getattr(h, method)(*args, **kwargs)

    @user_errors()
    def train_batch_iterator(self, task, dataset, **kwargs):
        for h in self.hooks:
            itr = h.train_batch_iterator(task, dataset, **kwargs)
            if itr is not None:
                return itr
        return None

    @user_errors()
    def add(self, hook: EfficiencyHook):
        """Append a hook built after the task (e.g. to carry a restored checkpoint's state)."""
        self._validate(self.hooks + [hook])
        self.hooks.append(hook)

    @user_errors()
    def batch_shards(self, num_shards, shard_id):
        for h in self.hooks:
            num_shards, shard_id = h.batch_shards(num_shards, shard_id)
        return num_shards, shard_id

    def state_dict(self):
        return {h.name: h.state_dict() for h in self.hooks}

    @user_errors()
    def load_state_dict(self, state):
        for h in self.hooks:
            if h.name in state:
                h.load_state_dict(state[h.name])
