"""The meSimp hook: k fixed in units through the meProp layers' own interface, restored
record handed over once the model's groups exist, optimizer state reset per stage."""
import argparse

import pytest
import torch
import torch.nn as nn

from fairseq_efficiency.hooks import HookList
from fairseq_efficiency.meprop.hook import MeSimpHook
from tests.meprop.test_lstm_meprop import _sides_with_sparse_grads, _tiny_lstm_model


def hook(**over):
    cfg = dict(mesimp_interval=1, mesimp_prune_rate=1.0, mesimp_stage_epochs=1,
               mesimp_normal_epochs=0)
    cfg.update(over)
    return MeSimpHook(argparse.Namespace(**cfg))


def test_mesimp_fixes_a_ratio_k_in_units_so_layers_stop_shrinking_at_k():
    from fairseq_efficiency.meprop.lstm import MePropLSTMCell
    model, d = _tiny_lstm_model(alternate=False, meprop_k=0.25, encoder_hidden_size=16,
                                decoder_hidden_size=16)
    h = hook()
    h.on_model_built(model)
    cells = [m for m in model.modules() if isinstance(m, MePropLSTMCell)]
    assert cells and all(c.k == 4 for c in cells)  # 0.25 x 16 units, now in units
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(6):  # prune rate 1: every unit not always in the top-k goes
        _sides_with_sparse_grads(model, d)
        h.mesimp.step(opt)
    assert all(size >= 4 for size in h.mesimp.sizes().values())


def test_mesimp_needs_a_model_with_meprop_layers():
    from fairseq_efficiency.errors import PluginConfigError

    with pytest.raises(PluginConfigError, match="needs a model with meProp layers"):
        hook().on_model_built(nn.Sequential(nn.Linear(4, 4)))


def test_only_meprop_layers_have_their_k_fixed():
    class Other(nn.Module):  # looks like a meProp layer, is none
        k, k_eff = 0.5, 3

    model, _ = _tiny_lstm_model(alternate=False, meprop_k=0.25, encoder_hidden_size=16,
                                decoder_hidden_size=16)
    model.other = Other()
    hook().on_model_built(model)
    assert model.other.k == 0.5


def test_restored_record_waits_for_the_model():
    model, d = _tiny_lstm_model(alternate=False)
    first = hook(mesimp_interval=100)
    first.on_model_built(model)
    first.on_epoch_start(1, model)  # records the top-k
    _sides_with_sparse_grads(model, d)
    first.mesimp.step()
    saved = first.state_dict()
    assert saved["mesimp"]["steps"] == 1 and any(c is not None for c in saved["mesimp"]["counts"])
    second = hook(mesimp_interval=100)
    hooks = HookList([second])
    hooks.load_state_dict({"mesimp": dict(saved, reset_pending=True)})
    assert second.mesimp is None and not second.reset_pending  # kept until the model exists
    model2, _ = _tiny_lstm_model(alternate=False)
    hooks.call("on_model_built", model2)
    assert second.reset_pending and second.mesimp.steps == 1
    for g, c in zip(second.mesimp.groups, saved["mesimp"]["counts"]):
        assert (g.stats.counts is None and c is None) or torch.equal(g.stats.counts, c)


def test_stage_start_resets_the_optimizer_state():
    model, d = _tiny_lstm_model(alternate=False)
    h = hook(mesimp_interval=100, mesimp_stage_epochs=1, mesimp_normal_epochs=1)
    h.on_model_built(model)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for epoch, simplifying in ((1, True), (2, False), (3, True)):
        h.on_epoch_start(epoch, model)
        assert h.simplifying is simplifying
        _sides_with_sparse_grads(model, d)
        had_state = bool(opt.state)
        h.before_optimizer_step(model, opt, epoch)
        assert bool(opt.state) == (had_state and epoch != 3)  # cleared at the 2nd stage start
        opt.step()
        h.after_optimizer_step(model, opt, epoch)
