"""meSimp: physical removal, unchanged outputs for dead units, optimizer state, resized loading."""
import pytest
import torch
import torch.nn as nn

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
