"""lstm_meprop: encoder/decoder alternation per epoch, dense layers named once."""
import argparse

import pytest
import torch
from fairseq.data import Dictionary


def _tiny_lstm_model(alternate=True, **over):
    from fairseq_efficiency.meprop.lstm_meprop import LSTMMePropConfig, LSTMMePropModel
    d = Dictionary()
    for w in "a b c d e".split():
        d.add_symbol(w)
    fields = {f: getattr(LSTMMePropConfig, f, None) for f in LSTMMePropConfig.__dataclass_fields__}
    cfg = argparse.Namespace(**{k: v for k, v in fields.items()})
    vars(cfg).update(dict(encoder_embed_dim=8, decoder_embed_dim=8, encoder_hidden_size=8,
                          decoder_hidden_size=8, decoder_out_embed_dim=8, max_source_positions=64,
                          max_target_positions=64, meprop_k=2, meprop_alternate=alternate,
                          dropout=0.0), **over)
    task = argparse.Namespace(source_dictionary=d, target_dictionary=d, hooks=[])
    return LSTMMePropModel.build_model(cfg, task), d


def _sides_with_sparse_grads(model, d):
    model.train()
    model.zero_grad(set_to_none=True)
    src = torch.randint(4, len(d), (6, 5))
    prev = torch.randint(4, len(d), (6, 4))
    out, _ = model(src, torch.full((6,), 5), prev)
    out.sum().backward()
    enc = model.encoder.lstm.cells[0].weight_hh.grad
    dec = model.decoder.layers[0].weight_hh.grad

    def sparse(g):
        return bool((g.abs().sum(1) == 0).any())

    return sparse(enc), sparse(dec)


def test_alternation_switches_sides_per_epoch():
    model, d = _tiny_lstm_model(alternate=True)
    for epoch, expected in [(1, (True, False)), (2, (False, True)), (3, (True, False))]:
        model.set_epoch(epoch)
        assert _sides_with_sparse_grads(model, d) == expected


def test_without_alternation_both_sides_are_sparse():
    model, d = _tiny_lstm_model(alternate=False)
    model.set_epoch(2)
    assert _sides_with_sparse_grads(model, d) == (True, True)


def test_alternation_needs_the_epoch_signal_only_for_training():
    from fairseq_efficiency.meprop.lstm_meprop import LSTMMePropModel
    model, d = _tiny_lstm_model(alternate=False)
    cfg = argparse.Namespace(**vars(model.cfg))
    cfg.meprop_alternate = True
    # any task builds it (fairseq-generate defaults to --task translation) ...
    model = LSTMMePropModel.build_model(cfg, argparse.Namespace(source_dictionary=d,
                                                                target_dictionary=d))
    src, lengths, prev = torch.randint(4, len(d), (2, 5)), torch.full((2,), 5), torch.randint(4, len(d), (2, 3))
    model.eval()
    model(src, lengths, prev)  # ... and evaluates it
    model.train()
    with pytest.raises(ValueError, match="translation_efficiency"):
        model(src, lengths, prev)  # training without per-epoch signal would never alternate
    model.set_epoch(1)
    model(src, lengths, prev)


def test_meprop_k_not_smaller_than_a_layer_warns_once_naming_it(caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="fairseq_efficiency"):
        _tiny_lstm_model(meprop_k=8, decoder_hidden_size=16)  # encoder: 8 units, decoder: 16
    warnings = [r.getMessage() for r in caplog.records if "meprop-k" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "encoder.lstm.cells.0 (8 units)" in warnings[0] and "decoder" not in warnings[0]
    assert "densely" in warnings[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fairseq_efficiency"):
        model, _ = _tiny_lstm_model(meprop_k=2)
    assert not [r for r in caplog.records if "meprop-k" in r.getMessage()]
    assert model.warn_dense_layers() == []

