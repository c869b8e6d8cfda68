"""fairseq edge of the hybrid execution: criterion ``hybrid_cross_entropy`` + batch sharding.

* Each rank of a pipeline group computes attention/softmax for a share of the
  batch; :class:`HybridCrossEntropyCriterion` restricts the sample to that
  share (target, ``ntokens``, ``nsentences``), so every rank reports the
  sample size of its share.  fairseq's ``legacy_ddp`` all-reduce sums the
  gradients and the trainer divides by the summed sample size: the exact
  full-batch gradient, and every rank applies the same update.
* The ranks of a pipeline group must see the same batch: :class:`PipelineGroupShards`
  (a task hook) shards the batch iterator over pipeline *groups* instead of
  ranks (``num_shards = world / stages``, ``shard_id = rank // stages``).
"""
from dataclasses import dataclass
from typing import Optional

from fairseq.criterions import register_criterion
from fairseq.logging import metrics
from omegaconf import II

from fairseq_efficiency.compat import literal_list
from fairseq_efficiency.criterions.sentence_cross_entropy import (
    SentenceCrossEntropyConfig, SentenceCrossEntropyCriterion,
)
from fairseq_efficiency.errors import PluginConfigError
from fairseq_efficiency.hooks import EfficiencyHook
from fairseq_efficiency.parallel.pipeline import WavefrontPipeline

HYBRID_SHARE = "hybrid_share"
HYBRID_WAIT = "hybrid_wait_s"


def share_of_sample(sample, lo: int, hi: int, padding_idx: int):
    """The sample restricted to batch rows ``[lo, hi)`` (``net_input`` kept whole)."""
    target = sample["target"][lo:hi]
    out = dict(sample)
    out["target"] = target
    out["id"] = sample["id"][lo:hi]
    out["nsentences"] = hi - lo
    out["ntokens"] = int(target.ne(padding_idx).sum())
    return out


@register_criterion("hybrid_cross_entropy", dataclass=SentenceCrossEntropyConfig)
class HybridCrossEntropyCriterion(SentenceCrossEntropyCriterion):
    """``sentence_cross_entropy`` on this rank's batch share when the model runs hybrid.

    With a model that returns no share (one process) this is exactly
    ``sentence_cross_entropy`` (= ``label_smoothed_cross_entropy``).
    """

    def forward(self, model, sample, reduce=True):
        net_output = model(**sample["net_input"])
        extra = net_output[1] if isinstance(net_output[1], dict) else {}
        share = extra.get(HYBRID_SHARE)
        if share is not None:  # PipelineGroupShards.setup refused per-sentence losses
            sample = share_of_sample(sample, share[0], share[1], self.padding_idx)
        loss, sample_size, logging_output = self.score(model, net_output, sample, reduce=reduce)
        if share is not None:
            # this rank's time blocked on the other ranks (the previous update's backward
            # and this forward): pipeline bubbles + transfers, logged as pipe_wait_ms
            logging_output["hybrid_wait_ms"] = 1000.0 * extra.get(HYBRID_WAIT, 0.0)
            logging_output["hybrid_ranks"] = 1
        return loss, sample_size, logging_output

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        super().reduce_metrics(logging_outputs)
        ranks = sum(log.get("hybrid_ranks", 0) for log in logging_outputs)
        if ranks:
            wait = sum(log.get("hybrid_wait_ms", 0.0) for log in logging_outputs)
            metrics.log_scalar("pipe_wait_ms", wait / ranks, ranks, round=1)


@dataclass
class HybridParallelConfig:
    """Task-side view of fairseq's pipeline flags (declared by fairseq, no new flags)."""

    pipeline_encoder_balance: Optional[str] = II("distributed_training.pipeline_encoder_balance")
    pipeline_model_parallel: bool = II("distributed_training.pipeline_model_parallel")
    distributed_world_size: int = II("distributed_training.distributed_world_size")


class PipelineGroupShards(EfficiencyHook):
    """Ranks ``g*S .. g*S+S-1`` (one pipeline group) read the same batches."""

    name = "hybrid_parallel"

    def __init__(self, stages: int):
        self.stages = stages

    def setup(self, task):
        # the criterion reports per-sentence losses only when a hook needs them
        # (TranslationEfficiencyTask.build_criterion)
        if task.hooks.needs_sentence_losses:
            raise PluginConfigError("per-sentence losses are not available with hybrid_lstm "
                                    "across ranks (each rank scores a share of the batch)")

    def on_model_built(self, model):
        if not isinstance(getattr(model, "pipeline", None), WavefrontPipeline):
            raise PluginConfigError("--pipeline-encoder-balance without --pipeline-model-parallel "
                                    "runs the hybrid pipeline across ranks, which needs "
                                    "--arch hybrid_lstm (or one of its variants)")

    def batch_shards(self, num_shards: int, shard_id: int):
        if num_shards == 1:
            return num_shards, shard_id
        if num_shards % self.stages:
            raise PluginConfigError(f"{num_shards} ranks are not a multiple of the {self.stages} "
                                    "pipeline stages of --pipeline-encoder-balance")
        return num_shards // self.stages, shard_id // self.stages


def build(cfg):
    balance = getattr(cfg, "pipeline_encoder_balance", None)
    if balance is None or getattr(cfg, "pipeline_model_parallel", False):
        return None
    if (getattr(cfg, "distributed_world_size", 1) or 1) <= 1:
        return None
    stages = len(literal_list(balance, "--pipeline-encoder-balance"))
    return PipelineGroupShards(stages) if stages > 1 else None
