"""The hybrid execution's task hook: ranks of one pipeline group read the same batches."""
import pytest
from fairseq import tasks

from fairseq_efficiency.parallel.hook import PipelineGroupShards, build
from fairseq_efficiency.parallel.hybrid_lstm import HybridLSTMModel
from tests.parallel.test_hybrid_lstm import _cfg


def test_pipeline_flags_reach_model_and_task(tiny_data_bin):
    cfg = _cfg(tiny_data_bin, "--pipeline-encoder-balance", "[1,1]",
               "--pipeline-decoder-balance", "[1,1]", "--pipeline-chunks", "3",
               "--distributed-world-size", "2")
    assert cfg.model.pipeline_encoder_balance == "[1,1]" and cfg.model.pipeline_chunks == 3
    hook = build(cfg.task)  # task-side view of fairseq's flags
    assert isinstance(hook, PipelineGroupShards)
    assert hook.batch_shards(4, 3) == (2, 1)  # ranks 2,3 = group 1 read shard 1 of 2
    assert hook.batch_shards(2, 1) == (1, 0)
    with pytest.raises(ValueError, match="not a multiple"):
        hook.batch_shards(3, 0)
    assert build(_cfg(tiny_data_bin).task) is None  # off unless the flags ask for it
    cfg1 = _cfg(tiny_data_bin, "--pipeline-encoder-balance", "[1,1]",
                "--pipeline-decoder-balance", "[1,1]", "--pipeline-chunks", "3")
    task = tasks.setup_task(cfg1.task)
    assert not task.hooks  # one process: no sharding hook
    model = task.build_model(cfg1.model)  # no process group here: runs as one model
    assert isinstance(model, HybridLSTMModel) and model.pipeline is None
    with pytest.raises(ValueError, match="needs --arch hybrid_lstm"):
        hook.on_model_built(model)
