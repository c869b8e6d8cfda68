"""Weight classes (paper Fig. 2) of fairseq's own lstm and transformer models."""
import pytest
import torch

from fairseq_efficiency.pruning.classes import class_tensors, find_weight_classes
from fairseq_efficiency.pruning.masks import MaskSet
from fairseq_efficiency.pruning.schemes import compute_masks
from tests.pruning.test_masks import Toy


def build(data_bin, *arch):
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    from fairseq_efficiency.cli.userdir import userdir

    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [data_bin, "--user-dir", userdir(), "--task",
                                                "translation_efficiency", *arch])
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    return task.build_model(cfg.model)


def test_classes_of_a_torch_lstm_model():
    classes = find_weight_classes(Toy(), split_lstm=True)
    assert list(classes) == ["src_embed", "src_layer1_ff", "src_layer1_rec", "src_layer2_ff",
                             "src_layer2_rec", "softmax"]
    assert all("bias" not in n for ns in classes.values() for n in ns)


def test_class_tensors_are_the_parameters_storage():
    model = Toy()
    tensors = class_tensors(model, exclude=["fc_out"])
    names = find_weight_classes(model, exclude=["fc_out"])
    assert {c: list(ts) for c, ts in tensors.items()} == names
    params = dict(model.named_parameters())
    for ts in tensors.values():
        for n, t in ts.items():
            assert not t.requires_grad and t.data_ptr() == params[n].data_ptr()
    tensors["src_embed"]["encoder.embed_tokens.weight"].zero_()  # writes reach the model
    assert not model.encoder.embed_tokens.weight.any()


def test_fairseq_lstm_classes(tiny_data_bin):
    model = build(tiny_data_bin, "--arch", "lstm", "--encoder-layers", "2", "--decoder-layers", "2",
                  "--encoder-bidirectional", "--encoder-embed-dim", "8", "--encoder-hidden-size", "8",
                  "--decoder-embed-dim", "8", "--decoder-hidden-size", "16",
                  "--decoder-out-embed-dim", "8")
    classes = find_weight_classes(model)
    assert {"src_embed", "src_layer1", "src_layer2", "tgt_embed", "tgt_layer1", "tgt_layer2",
            "attention", "softmax", "softmax_hidden"} <= set(classes)
    assert "encoder.lstm.weight_hh_l1_reverse" in classes["src_layer2"]
    assert "decoder.layers.1.weight_ih" in classes["tgt_layer2"]
    names = [n for ns in classes.values() for n in ns]
    assert not any(n.endswith("bias") or ".bias_" in n for n in names)
    # every weight matrix is in exactly one class
    mats = [n for n, p in model.named_parameters() if p.dim() >= 2]
    assert sorted(names) == sorted(mats)
    split = find_weight_classes(model, split_lstm=True)
    assert split["src_layer1_ff"] == ["encoder.lstm.weight_ih_l0", "encoder.lstm.weight_ih_l0_reverse"]
    assert split["tgt_layer2_rec"] == ["decoder.layers.1.weight_hh"]
    inc = find_weight_classes(model, include=[r"attention"])
    assert list(inc) == ["attention"]
    exc = find_weight_classes(model, exclude=[r"embed_tokens", "fc_out"])
    assert "src_embed" not in exc and "softmax" not in exc
    with pytest.raises(ValueError, match="include pattern 'nothing_here' matches no parameter"):
        find_weight_classes(model, include=["nothing_here"])


def test_transformer_classes_tied_output_counted_once(tiny_data_bin):
    model = build(tiny_data_bin, "--arch", "transformer", "--encoder-layers", "1",
                  "--decoder-layers", "1", "--encoder-embed-dim", "8", "--decoder-embed-dim", "8",
                  "--encoder-ffn-embed-dim", "16", "--decoder-ffn-embed-dim", "16",
                  "--encoder-attention-heads", "2", "--decoder-attention-heads", "2",
                  "--share-decoder-input-output-embed")
    classes = find_weight_classes(model)
    assert {"src_embed", "tgt_embed", "src_layer1_self_attn", "src_layer1_ffn",
            "tgt_layer1_self_attn", "tgt_layer1_cross_attn", "tgt_layer1_ffn"} == set(classes)
    names = [n for ns in classes.values() for n in ns]
    assert "decoder.output_projection.weight" not in names  # tied to decoder.embed_tokens
    assert not any("layer_norm" in n for n in names)
    params = dict(model.named_parameters())
    masks = MaskSet(compute_masks(class_tensors(model), "class-blind", 0.5).masks)
    masks.apply_(model)
    out = model.decoder.output_projection.weight
    assert torch.equal(out == 0, ~masks.masks["decoder.embed_tokens.weight"])
    total = sum(params[n].numel() for n in names)
    assert sum(c[0] for c in masks.counts().values()) == round(0.5 * total)
