"""meSimp: physical removal, unchanged outputs for dead units, optimizer state, alternation."""
import argparse

import pytest
import torch
import torch.nn as nn
from fairseq.data import Dictionary

from fairseq_efficiency.meprop import MePropLSTM, MeSimp, TopKLinear, linear_group, lstm_cell_group
from fairseq_efficiency.meprop.mesimp import Slice, resize_to_state_dict


class MLP(nn.Module):
    def __init__(self, k=3):
        super().__init__()
        self.fc1 = TopKLinear(8, 12, k=k)
        self.fc2 = TopKLinear(12, 10, k=k)
        self.out = nn.Linear(10, 4)

    def forward(self, x):
        return self.out(torch.relu(self.fc2(torch.relu(self.fc1(x)))))

    def groups(self):
        return [linear_group("fc1", self.fc1, [self.fc2]), linear_group("fc2", self.fc2, [self.out])]


def test_removing_dead_units_leaves_outputs_unchanged():
    torch.manual_seed(0)
    m = MLP()
    dead = torch.tensor([1, 5, 6])
    with torch.no_grad():  # relu(W x + b) == 0 for every input: dead units
        m.fc1.weight[dead] = 0
        m.fc1.bias[dead] = -1.0
    x = torch.randn(20, 8)
    before = m(x)
    g = m.groups()[0]
    kept = torch.tensor([i for i in range(12) if i not in dead.tolist()])
    g.prune(kept)
    assert m.fc1.weight.shape == (9, 8) and m.fc1.bias.shape == (9,) and m.fc2.weight.shape == (10, 9)
    torch.testing.assert_close(m(x), before)


def test_removing_dead_lstm_units_leaves_outputs_unchanged():
    """A unit whose output gate is shut has h = 0: removing it (all four gates,
    its recurrent row/column and the next layer's column) changes nothing."""
    torch.manual_seed(1)
    lstm = MePropLSTM(5, 6, num_layers=2, k=2)
    head = nn.Linear(6, 3)
    H = 6
    dead = [2, 4]
    with torch.no_grad():
        c0 = lstm.cells[0]
        for j in dead:
            c0.weight_ih[3 * H + j] = 0
            c0.weight_hh[3 * H + j] = 0
            c0.bias[3 * H + j] = -1e4  # sigmoid -> 0 exactly
    x = torch.randn(4, 3, 5)
    out, _ = lstm(x)
    before = head(out)
    groups = [lstm_cell_group("l0", lstm.cells[0], [Slice(lstm.cells[1], "weight_ih", 1)])]
    kept = torch.tensor([0, 1, 3, 5])
    groups[0].prune(kept)
    assert lstm.cells[0].weight_ih.shape == (16, 5) and lstm.cells[0].weight_hh.shape == (16, 4)
    assert lstm.cells[1].weight_ih.shape == (24, 4)
    assert lstm.cells[0].unit_ids.tolist() == [0, 1, 3, 5]
    out2, _ = lstm(x)
    torch.testing.assert_close(head(out2), before)


def test_mesimp_prunes_inactive_units_and_slices_adam_state():
    torch.manual_seed(2)
    m = MLP(k=2)
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    ms = MeSimp(m.groups(), interval=4, prune_rate=0.5)
    ms.set_recording(True)
    x = torch.randn(32, 8)
    y = torch.randint(0, 4, (32,))
    sizes = None
    for step in range(4):
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(m(x), y).backward()
        counts = m.fc1.stats.counts.clone()
        opt.step()
        sizes = ms.step(opt)
    assert sizes is not None
    # a unit survives iff it was in the top-k in >= half of the 4 backward passes
    assert sizes["fc1"] == int((counts >= 2).sum()) < 12
    assert m.fc1.stats.seen == 0  # record cleared after pruning
    for p in m.parameters():
        st = opt.state[p]
        assert st["exp_avg"].shape == p.shape and st["exp_avg_sq"].shape == p.shape
    opt.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(m(x), y).backward()
    opt.step()  # the optimizer keeps working on the shrunken parameters


def test_resize_to_state_dict_loads_shrunken_checkpoint():
    torch.manual_seed(3)
    small = MLP()
    small.groups()[0].prune(torch.tensor([0, 3, 4, 9]))
    big = MLP()
    from fairseq_efficiency.meprop.mesimp import group_tensor_names
    names = group_tensor_names(big, big.groups())
    assert "fc1.weight" in names and "fc2.weight" in names
    resized = resize_to_state_dict(big, small.state_dict(), names)
    assert set(resized) == {"fc1.weight", "fc1.bias", "fc2.weight"}
    big.load_state_dict(small.state_dict())
    x = torch.randn(5, 8)
    torch.testing.assert_close(big(x), small(x))


def test_mesimp_rejects_bad_settings():
    with pytest.raises(ValueError, match="meProp layers"):
        MeSimp([], interval=10, prune_rate=0.1)
    m = MLP()
    with pytest.raises(ValueError, match="interval"):
        MeSimp(m.groups(), interval=0, prune_rate=0.1)
    with pytest.raises(ValueError, match="prune-rate"):
        MeSimp(m.groups(), interval=3, prune_rate=1.5)


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


def test_mesimp_fixes_a_ratio_k_in_units_so_layers_stop_shrinking_at_k():
    from fairseq_efficiency.meprop.hook import MeSimpHook
    from fairseq_efficiency.meprop.lstm import MePropLSTMCell
    model, d = _tiny_lstm_model(alternate=False, meprop_k=0.25, encoder_hidden_size=16,
                                decoder_hidden_size=16)
    hook = MeSimpHook(argparse.Namespace(mesimp_interval=1, mesimp_prune_rate=1.0,
                                         mesimp_stage_epochs=1, mesimp_normal_epochs=0))
    hook.on_model_built(model)
    cells = [m for m in model.modules() if isinstance(m, MePropLSTMCell)]
    assert cells and all(c.k == 4 for c in cells)  # 0.25 x 16 units, now in units
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(6):  # prune rate 1: every unit not always in the top-k goes
        _sides_with_sparse_grads(model, d)
        hook.mesimp.step(opt)
    assert all(size >= 4 for size in hook.mesimp.sizes().values())


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
