"""hybrid_lstm as a fairseq model: config parsing, criterion, batch sharding hook."""
import pytest
import torch
from fairseq import options, tasks
from fairseq.dataclass.utils import convert_namespace_to_omegaconf

from fairseq_efficiency.cli.userdir import userdir
from fairseq_efficiency.parallel.hook import PipelineGroupShards, build
from fairseq_efficiency.parallel.hybrid_lstm import HybridLSTMModel

TINY = ["--arch", "hybrid_lstm", "--encoder-embed-dim", "8", "--decoder-embed-dim", "8",
        "--hidden-size", "8", "--layers", "2", "--dropout", "0"]


def _cfg(data_bin, *extra):
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [
        data_bin, "--user-dir", userdir(), "--task", "translation_efficiency", "--cpu",
        "--criterion", "hybrid_cross_entropy", "--max-tokens", "500", *TINY, *extra])
    return convert_namespace_to_omegaconf(args)


def _sample(task, n=6):
    task.load_dataset("valid")
    ds = task.dataset("valid")
    return ds.collater([ds[i] for i in range(n)])


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


def test_wmt_variant_sizes_and_validation(tiny_data_bin):
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [tiny_data_bin, "--user-dir", userdir(),
                                                "--arch", "hybrid_lstm_wmt_en_de"])
    assert (args.layers, args.hidden_size, args.encoder_embed_dim, args.decoder_embed_dim) == \
        (4, 1024, 512, 512)
    cfg = _cfg(tiny_data_bin, "--pipeline-encoder-balance", "[1,1]",
               "--pipeline-decoder-balance", "[2]")
    task = tasks.setup_task(cfg.task)
    with pytest.raises(ValueError, match="must be equal"):
        task.build_model(cfg.model)
    cfg = _cfg(tiny_data_bin, "--pipeline-model-parallel", "--pipeline-encoder-balance", "[1,1]",
               "--pipeline-decoder-balance", "[1,1]", "--pipeline-chunks", "2")
    with pytest.raises(ValueError, match="needs --pipeline-encoder-devices"):
        task.build_model(cfg.model)


def test_criterion_equals_label_smoothed_and_needs_share_aware_criterion(tiny_data_bin):
    cfg = _cfg(tiny_data_bin, "--label-smoothing", "0.1")
    task = tasks.setup_task(cfg.task)
    torch.manual_seed(0)
    model = task.build_model(cfg.model)
    crit = task.build_criterion(cfg.criterion)
    sample = _sample(task)
    from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterion
    ref = LabelSmoothedCrossEntropyCriterion(task, False, 0.1)
    loss, size, log = crit(model, sample)
    ref_loss, ref_size, _ = ref(model, sample)
    assert torch.equal(loss, ref_loss) and size == ref_size == sample["ntokens"]
    # a batch-share output (multi-rank) scored with a criterion that does not shard: refused
    logits, extra = model(**sample["net_input"])
    extra["hybrid_share"] = (0, 2)
    with pytest.raises(ValueError, match="use --criterion hybrid_cross_entropy"):
        model.get_targets(sample, (logits[:2], extra))


def test_hybrid_share_of_sample(tiny_data_bin):
    from fairseq_efficiency.parallel.hybrid_cross_entropy import share_of_sample
    task = tasks.setup_task(_cfg(tiny_data_bin).task)
    sample = _sample(task)
    parts = [share_of_sample(sample, a, b, task.target_dictionary.pad())
             for a, b in ((0, 3), (3, 6))]
    assert sum(p["ntokens"] for p in parts) == sample["ntokens"]
    assert sum(p["nsentences"] for p in parts) == sample["nsentences"]
    assert torch.equal(torch.cat([p["target"] for p in parts]), sample["target"])


def test_pipeline_chunks_below_one_are_refused(tiny_data_bin):
    from fairseq_efficiency.errors import PluginConfigError

    pipe = ["--pipeline-encoder-balance", "[1,1]", "--pipeline-decoder-balance", "[1,1]"]
    task = tasks.setup_task(_cfg(tiny_data_bin).task)
    for chunks in ("0", "-2"):  # one process as well: the same flags fail on several ranks
        with pytest.raises(PluginConfigError, match=f"--pipeline-chunks .* got {chunks}"):
            task.build_model(_cfg(tiny_data_bin, *pipe, "--pipeline-chunks", chunks).model)
    with pytest.raises(PluginConfigError, match="--pipeline-chunks must be >= 1, got -1"):
        task.build_model(_cfg(tiny_data_bin, "--pipeline-chunks", "-1").model)
    # without a pipeline fairseq's default 0 (not set) is fine, and 1 chunk is accepted
    assert task.build_model(_cfg(tiny_data_bin).model).pipeline is None
    task.build_model(_cfg(tiny_data_bin, *pipe, "--pipeline-chunks", "1").model)
