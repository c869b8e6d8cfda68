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
                                            ``restores=`` hooks also with --reset-dataloader),
                                            as soon as ``ready_for_state()`` (see below)
    loop over epochs:
        on_epoch_start(epoch, model)
        loop over updates:
            before_train_step(sample, model, update_num)
            after_train_step(StepOutput)    loss is known; backward is done
            before_optimizer_step(model, optimizer, update_num)   grads are final
            after_optimizer_step(model, optimizer, update_num)
            reduce_metrics(logging_outputs, train=True)
        on_valid_epoch_start(epoch, model)
            reduce_metrics(logging_outputs, train=False)   per validation batch
        [state_dict()]                      when fairseq saves a checkpoint
    close()                                 at exit (stop worker threads, flush files)

A hook may also own the training batch iterator (only one hook per run may:
AutoAssist-style instance selection) by returning an iterator from
:meth:`EfficiencyHook.train_batch_iterator`.

Restored state, one rule: fairseq may hand a checkpoint's state over before
what it restores exists (a model not built yet, an iterator not made yet).
:class:`HookList` keeps each hook's restored state and calls the hook's
``load_state_dict`` as soon as its :meth:`~EfficiencyHook.ready_for_state` is
true, checked right away and after every call into the hooks. A hook's
``load_state_dict`` therefore never defers anything itself. State that acts on
the weights (pruning masks) is applied to the model at the next
``on_epoch_start``: fairseq starts every (also every resumed) epoch with it,
after the checkpoint's weights are loaded and before the first step.

Cooperation between techniques goes through the protocol, never through
another technique's flags: a hook declares what it needs
(``needs_sentence_losses``, ``needs_fixed_shapes``) and what it changes or
cannot provide (``changes_shapes``, ``no_sentence_losses``), and
:class:`HookList` refuses a combination that cannot work, in one line.
"""
from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch

from fairseq_efficiency.errors import PluginConfigError, user_errors


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
    ``model`` is the model the step ran (as fairseq's trainer passes it).
    """

    sample: Dict[str, Any]
    ids: torch.Tensor
    sentence_loss: Optional[torch.Tensor]
    model: Any
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
        no_sentence_losses: why per-sentence losses cannot be reported while this
            hook runs (None: they can); no hook that needs them may run beside it.
        needs_fixed_shapes: what of this hook needs parameter shapes fixed during
            training (e.g. ``"pruning masks"``), or None.
        changes_shapes: the technique that changes parameter shapes during training and
            the flag that switches it on (e.g. ``"meSimp (--mesimp-interval)"``), or None.
    """

    name = "hook"
    needs_sentence_losses = False
    no_sentence_losses: Optional[str] = None
    needs_fixed_shapes: Optional[str] = None
    changes_shapes: Optional[str] = None

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

    def reduce_metrics(self, logging_outputs, train: bool):
        """Log the hook's own metrics through :mod:`fairseq.logging.metrics`; ``train`` tells
        training batches from validation batches."""

    def state_dict(self) -> Dict[str, Any]:
        """Picklable state saved in the checkpoint's extra state."""
        return {}

    def ready_for_state(self) -> bool:
        """Whether :meth:`load_state_dict` can restore now (e.g. the model or iterator it
        restores exists); until then :class:`HookList` keeps the restored state."""
        return True

    def load_state_dict(self, state: Dict[str, Any]):
        """Restore what :meth:`state_dict` returned (called once :meth:`ready_for_state`)."""

    def close(self):
        """Release threads, processes or files."""


class HookList:
    """Runs the enabled hooks in order; owns the checkpointed state of all of them.

    Every call into the hooks passes :func:`~fairseq_efficiency.errors.user_errors`: a
    hook's :class:`~fairseq_efficiency.errors.PluginConfigError` is one line in fairseq's
    command lines.
    """

    @user_errors()
    def __init__(self, hooks=()):
        self.hooks = list(hooks)
        self._validate(self.hooks)
        self._pending: Dict[str, Any] = {}  # restored states of hooks not ready for them yet

    @staticmethod
    def _validate(hooks):
        """Hook names are unique (checkpoint keys); at most one hook owns the train iterator;
        what one hook needs, no other hook takes away (one-line refusal)."""
        names = [h.name for h in hooks]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"two efficiency hooks share the name(s) {sorted(dup)}")
        owners = [h.name for h in hooks
                  if type(h).train_batch_iterator is not EfficiencyHook.train_batch_iterator]
        if len(owners) > 1:
            raise ValueError(f"only one feature may own the training batch iterator, got {owners}")
        for h in hooks:
            for other in hooks:
                if h.needs_fixed_shapes and other.changes_shapes:
                    raise PluginConfigError(
                        f"{h.needs_fixed_shapes} need fixed matrix shapes, which "
                        f"{other.changes_shapes} changes: run them one after the other, the "
                        "second from the first one's checkpoint")
                if h.needs_sentence_losses and other.no_sentence_losses:
                    raise PluginConfigError(other.no_sentence_losses)

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
        self._deliver()

    @user_errors()
    def train_batch_iterator(self, task, dataset, **kwargs):
        for h in self.hooks:
            itr = h.train_batch_iterator(task, dataset, **kwargs)
            if itr is not None:
                self._deliver()
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
        """Hand each hook its state from ``state`` (name -> state) once it is ready for it."""
        self._pending.update({h.name: state[h.name] for h in self.hooks if h.name in state})
        self._deliver()

    def _deliver(self):
        if not self._pending:
            return
        for h in self.hooks:
            if h.name in self._pending and h.ready_for_state():
                h.load_state_dict(self._pending.pop(h.name))
