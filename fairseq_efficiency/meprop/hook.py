"""meSimp inside ``fairseq-train``: config fields and the training hook.

Cycle training (section 2.2): training is split into stages; a stage is
``--mesimp-stage-epochs`` epochs of simplification (top-k record + pruning
every ``--mesimp-interval`` updates) followed by ``--mesimp-normal-epochs``
epochs of normal training (meProp without pruning). The optimizer state is
cleared at the start of every stage after the first. With
``--mesimp-normal-epochs 0`` (default) every epoch simplifies and the
optimizer is never reset, only sliced along with the pruned parameters.

Shrinking happens in place (``param.data`` replaced, same ``Parameter``
objects), so the trainer's optimizer keeps valid parameter references; its
state tensors are sliced in :meth:`after_optimizer_step`, the only hook that
sees the optimizer. (fp16 optimizers with flattened fp32 copies are not
supported and refused at start-up.)
"""
import logging
from dataclasses import dataclass, field

from fairseq.dataclass import FairseqDataclass
from fairseq.logging import metrics

from fairseq_efficiency.errors import PluginConfigError
from fairseq_efficiency.hooks import EfficiencyHook
from fairseq_efficiency.meprop.mesimp import MeSimp, reset_optimizer_state
from fairseq_efficiency.meprop.topk import MePropLayer

logger = logging.getLogger(__name__)


@dataclass
class MeSimpConfig(FairseqDataclass):
    mesimp_interval: int = field(default=0, metadata={
        "help": "meSimp (Algorithm 2): prune rarely-active hidden units every N updates "
                "(0 = off; needs a meProp architecture)"})
    mesimp_prune_rate: float = field(default=0.08, metadata={
        "help": "meSimp prune rate p: a unit is removed when it was in the top-k in fewer than "
                "p of the selections since the last pruning (paper: 0.08)"})
    mesimp_stage_epochs: int = field(default=1, metadata={
        "help": "cycle training: simplification epochs at the start of each stage"})
    mesimp_normal_epochs: int = field(default=0, metadata={
        "help": "cycle training: normal (no pruning) epochs ending each stage; the optimizer "
                "state is reset at each stage start (0 = no cycles)"})


class MeSimpHook(EfficiencyHook):
    """Runs :class:`~fairseq_efficiency.meprop.MeSimp` on the task's model."""

    name = "mesimp"
    changes_shapes = "meSimp (--mesimp-interval)"

    def __init__(self, cfg):
        self.interval = cfg.mesimp_interval
        self.prune_rate = cfg.mesimp_prune_rate
        self.stage_epochs = cfg.mesimp_stage_epochs
        self.normal_epochs = cfg.mesimp_normal_epochs
        if self.interval < 0:
            raise PluginConfigError(f"--mesimp-interval must be >= 0 (got {self.interval})")
        if not (0.0 <= self.prune_rate <= 1.0):
            raise PluginConfigError(
                f"--mesimp-prune-rate must lie in [0, 1] (got {self.prune_rate})")
        if self.stage_epochs < 1 or self.normal_epochs < 0:
            raise PluginConfigError(
                "--mesimp-stage-epochs must be >= 1 and --mesimp-normal-epochs >= 0")
        self.mesimp = None
        self.simplifying = True
        self.reset_pending = False

    def on_model_built(self, model):
        groups = model.mesimp_groups() if hasattr(model, "mesimp_groups") else []
        if not groups:
            raise PluginConfigError("--mesimp-interval needs a model with meProp layers "
                                    "(--arch lstm_meprop or transformer_meprop)")
        # Algorithm 2 uses an absolute k: a ratio would shrink with the layer and let every
        # simplification remove more units (a layer then collapses to a handful); with k fixed,
        # a layer stops shrinking at k units, where its top-k is the whole layer
        for module in model.modules():
            if isinstance(module, MePropLayer):
                module.fix_k()
        self.mesimp = MeSimp(groups, self.interval, self.prune_rate)
        logger.info("meSimp: interval %d, prune rate %g, initial sizes %s", self.interval,
                    self.prune_rate, self.mesimp.sizes())

    def on_epoch_start(self, epoch, model):
        if self.normal_epochs == 0:
            self.simplifying = True
        else:
            pos = (epoch - 1) % (self.stage_epochs + self.normal_epochs)
            self.simplifying = pos < self.stage_epochs
            if pos == 0 and epoch > 1:
                self.reset_pending = True
        self.mesimp.set_recording(self.simplifying)
        logger.info("meSimp epoch %d: %s", epoch, "simplification" if self.simplifying else
                    "normal training")

    def before_optimizer_step(self, model, optimizer, update_num):
        if self.reset_pending:
            if not reset_optimizer_state(optimizer):
                raise PluginConfigError("meSimp cannot reset this optimizer (fp16 wrappers with "
                                        "flattened parameters are not supported)")
            logger.info("meSimp: new stage, optimizer state reset")
            self.reset_pending = False

    def after_optimizer_step(self, model, optimizer, update_num):
        if not self.simplifying:
            return
        if getattr(optimizer, "fp32_params", None) is not None:
            raise PluginConfigError("meSimp does not support --fp16/--bf16 (flattened fp32 copies)")
        self.mesimp.step(optimizer)

    def reduce_metrics(self, logging_outputs, train):
        if self.mesimp is not None:
            metrics.log_scalar("mesimp_units", sum(self.mesimp.sizes().values()), weight=0,
                               round=0)

    def state_dict(self):
        return {"mesimp": self.mesimp.state_dict() if self.mesimp else None,
                "reset_pending": self.reset_pending}

    def ready_for_state(self):
        return self.mesimp is not None  # the model's prunable groups are known

    def load_state_dict(self, state):
        self.reset_pending = state.get("reset_pending", False)
        if state.get("mesimp") is not None:
            self.mesimp.load_state_dict(state["mesimp"])


def build(cfg):
    interval = getattr(cfg, "mesimp_interval", 0)
    return MeSimpHook(cfg) if interval != 0 else None
