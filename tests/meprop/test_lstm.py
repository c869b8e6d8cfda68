"""meProp LSTM: exact dense LSTM at k = hidden, per-gate top-k below."""
import pytest
import torch
import torch.nn as nn

from fairseq_efficiency.meprop import MePropLSTM, MePropLSTMCell


def test_cell_with_k_equal_hidden_matches_nn_lstmcell():
    torch.manual_seed(0)
    ref = nn.LSTMCell(5, 7)
    cell = MePropLSTMCell.from_lstm_cell(ref, k=7)
    x = torch.randn(4, 3, 5)

    def run(c):
        h = cc = torch.zeros(3, 7)
        outs = []
        for t in range(4):
            h, cc = c(x[t], (h, cc))
            outs.append(h)
        return torch.stack(outs), cc

    (o1, c1), (o2, c2) = run(ref), run(cell)
    torch.testing.assert_close(o1, o2)
    g = torch.randn_like(o1)
    (o1 * g).sum().add(c1.sum()).backward()
    (o2 * g).sum().add(c2.sum()).backward()
    torch.testing.assert_close(cell.weight_ih.grad, ref.weight_ih.grad)
    torch.testing.assert_close(cell.weight_hh.grad, ref.weight_hh.grad)
    torch.testing.assert_close(cell.bias.grad, ref.bias_ih.grad)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_layer_with_k_equal_hidden_matches_packed_nn_lstm(bidirectional):
    torch.manual_seed(1)
    ref = nn.LSTM(6, 8, num_layers=2, bidirectional=bidirectional)
    ml = MePropLSTM.from_lstm(ref, k=8)
    lengths = torch.tensor([5, 4, 2])
    x = torch.randn(5, 3, 6)
    packed = nn.utils.rnn.pack_padded_sequence(x, lengths)
    out_p, (h1, c1) = ref(packed)
    o1, _ = nn.utils.rnn.pad_packed_sequence(out_p)
    o2, (h2, c2) = ml(x, lengths=lengths)
    torch.testing.assert_close(o1, o2)
    torch.testing.assert_close(h1, h2)
    torch.testing.assert_close(c1, c2)
    g = torch.randn_like(o1)
    ((o1 * g).sum() + h1.sum()).backward()
    ((o2 * g).sum() + h2.sum()).backward()
    for layer in range(2):
        for d in range(ml.dirs):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            cell = ml.cells[layer * ml.dirs + d]
            torch.testing.assert_close(cell.weight_hh.grad, getattr(ref, "weight_hh" + sfx).grad)
            torch.testing.assert_close(cell.weight_ih.grad, getattr(ref, "weight_ih" + sfx).grad)


@pytest.mark.parametrize("mode", ["unified", "per-example"])
def test_cell_topk_matches_masked_gate_gradient(mode):
    """One step: the gate gradient keeps k entries per gate (gates independent)."""
    torch.manual_seed(2)
    H, k = 6, 2
    cell = MePropLSTMCell(4, H, k=k, mode=mode)
    x, h, c = torch.randn(3, 4), torch.randn(3, H), torch.randn(3, H)
    gh, gc = torch.randn(3, H), torch.randn(3, H)

    def mask(g):
        B = g.shape[0]
        g4 = g.view(B, 4, H)
        if mode == "unified":
            idx = g4.abs().sum(0).topk(k, dim=1).indices  # 4 x k
            m = torch.zeros(4, H).scatter_(1, idx, 1.0).unsqueeze(0)
        else:
            idx = g4.abs().topk(k, dim=2).indices
            m = torch.zeros_like(g4).scatter_(2, idx, 1.0)
        return (g4 * m).view(B, 4 * H)

    W = torch.cat([cell.weight_ih, cell.weight_hh], 1).detach().requires_grad_()
    b = cell.bias.detach().clone().requires_grad_()
    xr, hr, cr = (t.clone().requires_grad_() for t in (x, h, c))
    gates = torch.cat([xr, hr], 1) @ W.t() + b
    gates.register_hook(mask)
    i, f, g, o = gates.chunk(4, 1)
    c_new = torch.sigmoid(f) * cr + torch.sigmoid(i) * torch.tanh(g)
    h_new = torch.sigmoid(o) * torch.tanh(c_new)
    ((h_new * gh).sum() + (c_new * gc).sum()).backward()

    xm, hm, cm = (t.clone().requires_grad_() for t in (x, h, c))
    h2, c2 = cell(xm, (hm, cm))
    torch.testing.assert_close(h2, h_new)
    ((h2 * gh).sum() + (c2 * gc).sum()).backward()
    torch.testing.assert_close(xm.grad, xr.grad)
    torch.testing.assert_close(hm.grad, hr.grad)
    torch.testing.assert_close(cm.grad, cr.grad)
    torch.testing.assert_close(torch.cat([cell.weight_ih.grad, cell.weight_hh.grad], 1), W.grad)
    torch.testing.assert_close(cell.bias.grad, b.grad)
    if mode == "unified":
        assert int((cell.weight_hh.grad.abs().sum(1) > 0).sum()) == 4 * k


def test_eval_mode_backpropagates_densely():
    torch.manual_seed(3)
    cell = MePropLSTMCell(3, 4, k=1).eval()
    h, c = cell(torch.randn(2, 3), (torch.randn(2, 4), torch.randn(2, 4)))
    (h.sum() + c.sum()).backward()
    assert int((cell.weight_hh.grad.abs().sum(1) > 0).sum()) == 16


@pytest.mark.parametrize("mode", ["unified", "per-example"])
def test_lstm_backward_under_autocast(mode):
    """fairseq --amp: forward in the autocast dtype, sparse backward consistent with it."""
    torch.manual_seed(4)
    lstm = MePropLSTM(5, 8, num_layers=2, k=2, mode=mode)
    x = torch.randn(4, 3, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, (h, c) = lstm(x, lengths=torch.tensor([4, 3, 2]))
    (out.float().sum() + c.float().sum()).backward()
    for p in lstm.parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
    assert lstm.cells[1].weight_hh.grad.abs().sum() > 0
