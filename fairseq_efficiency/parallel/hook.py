"""Task hook of the hybrid execution: ranks of one pipeline group read the same batches.

:class:`PipelineGroupShards` shards the batch iterator over pipeline *groups*
instead of ranks (``num_shards = world / stages``, ``shard_id = rank // stages``);
its config is the task-side view of fairseq's own ``--pipeline-*`` flags.
"""
from dataclasses import dataclass
from typing import Optional

from omegaconf import II

from fairseq_efficiency.compat import literal_list
from fairseq_efficiency.errors import PluginConfigError
from fairseq_efficiency.hooks import EfficiencyHook
from fairseq_efficiency.parallel.pipeline import WavefrontPipeline


@dataclass
class HybridParallelConfig:
    """Task-side view of fairseq's pipeline flags (declared by fairseq, no new flags)."""

    pipeline_encoder_balance: Optional[str] = II("distributed_training.pipeline_encoder_balance")
    pipeline_model_parallel: bool = II("distributed_training.pipeline_model_parallel")
    distributed_world_size: int = II("distributed_training.distributed_world_size")


class PipelineGroupShards(EfficiencyHook):
    """Ranks ``g*S .. g*S+S-1`` (one pipeline group) read the same batches."""

    name = "hybrid_parallel"
    # each rank scores a share of the batch (HookList refuses hooks that need them)
    no_sentence_losses = ("per-sentence losses are not available with hybrid_lstm across "
                          "ranks (each rank scores a share of the batch)")

    def __init__(self, stages: int):
        self.stages = stages

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
