"""hybrid_lstm as a fairseq model: config parsing and validation, batch shares."""
import pytest
import torch
from fairseq import options, tasks
from fairseq.dataclass.utils import convert_namespace_to_omegaconf

from fairseq_efficiency.cli.userdir import userdir
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


def test_a_batch_share_needs_a_share_aware_criterion(tiny_data_bin):
    task = tasks.setup_task(_cfg(tiny_data_bin).task)
    model = task.build_model(_cfg(tiny_data_bin).model)
    assert isinstance(model, HybridLSTMModel) and model.pipeline is None
    sample = _sample(task)
    logits, extra = model(**sample["net_input"])
    assert torch.equal(model.get_targets(sample, (logits, extra)), sample["target"])
    extra["hybrid_share"] = (0, 2)  # a multi-rank output scored by a criterion that does not shard
    with pytest.raises(ValueError, match="use --criterion hybrid_cross_entropy"):
        model.get_targets(sample, (logits[:2], extra))
