"""meProp / meSimp on CUDA: same results as the CPU, state on the device (skipped without CUDA)."""
import copy
import os
import re

import pytest
import torch
import torch.nn as nn

from fairseq_efficiency.meprop import MePropLSTM, MeSimp, TopKLinear
from tests.helpers import gpu_train_args, run_cli
from tests.meprop.test_mesimp import MLP
from tests.meprop.test_transformer_meprop import tiny_transformer

pytestmark = pytest.mark.gpu

RTOL, ATOL = 1e-4, 1e-5


def _grads(module):
    return {n: p.grad.detach().cpu() for n, p in module.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("mode", ["unified", "per-example"])
def test_topk_linear_cuda_equals_cpu(cuda_exact, mode):
    torch.manual_seed(0)
    cpu = TopKLinear(48, 64, k=8, mode=mode)
    gpu = copy.deepcopy(cpu).to(cuda_exact)
    gpu.stats.enabled = cpu.stats.enabled = True
    for step in range(3):  # row-gradient buffer reused between steps, as in fairseq
        x = torch.randn(4, 5, 48)
        gy = torch.randn(4, 5, 64)
        outs = []
        for layer, dev in ((cpu, "cpu"), (gpu, cuda_exact)):
            layer.zero_grad(set_to_none=True)
            xi = x.to(dev).requires_grad_()
            y = layer(xi)
            y.backward(gy.to(dev))
            outs.append((y.detach().cpu(), xi.grad.cpu(), _grads(layer)))
        (y_c, gx_c, g_c), (y_g, gx_g, g_g) = outs
        torch.testing.assert_close(y_g, y_c, rtol=RTOL, atol=ATOL)
        torch.testing.assert_close(gx_g, gx_c, rtol=RTOL, atol=ATOL)
        for n in g_c:
            torch.testing.assert_close(g_g[n], g_c[n], rtol=RTOL, atol=ATOL, msg=f"step {step} {n}")
    assert gpu.weight.grad.device.type == "cuda"
    assert gpu.stats.counts.device.type == "cuda" and gpu.stats.seen == cpu.stats.seen
    assert torch.equal(gpu.stats.counts.cpu(), cpu.stats.counts)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_topk_linear_half_on_cuda(cuda_exact, dtype):
    """fp16/bf16 parameters (fairseq --fp16/--bf16): k rows updated, finite, close to fp32."""
    torch.manual_seed(1)
    ref = TopKLinear(64, 128, k=16).to(cuda_exact)
    half = copy.deepcopy(ref).to(dtype)
    x = torch.randn(512, 64, device=cuda_exact)
    big = torch.randperm(128)[:16]
    gy = torch.randn(512, 128) * 30  # loss-scaled: the top columns sum beyond fp16's 65504
    gy[:, big] *= 10  # the top-k set is unambiguous in every precision
    gy = gy.to(cuda_exact)
    ref(x).backward(gy)
    half(x.to(dtype)).backward(gy.to(dtype))
    g = half.weight.grad
    assert g.dtype == dtype and torch.isfinite(g).all()
    rows = (g.abs().sum(1) > 0).cpu()
    assert rows.nonzero().squeeze(1).tolist() == sorted(big.tolist())
    torch.testing.assert_close(g.float(), ref.weight.grad, rtol=0.05,
                               atol=0.02 * float(ref.weight.grad.abs().max()))


@pytest.mark.parametrize("mode", ["unified", "per-example"])
def test_meprop_lstm_cuda_equals_cpu(cuda_exact, mode):
    torch.manual_seed(2)
    cpu = MePropLSTM(6, 16, num_layers=2, k=4, mode=mode)
    gpu = copy.deepcopy(cpu).to(cuda_exact)
    x = torch.randn(5, 3, 6)
    lengths = torch.tensor([5, 4, 2])
    g_out = torch.randn(5, 3, 16)
    res = []
    for lstm, dev in ((cpu, "cpu"), (gpu, cuda_exact)):
        xi = x.to(dev).requires_grad_()
        out, (h, c) = lstm(xi, lengths=lengths.to(dev))
        ((out * g_out.to(dev)).sum() + h.sum() + c.sum()).backward()
        res.append((out.detach().cpu(), h.detach().cpu(), c.detach().cpu(), xi.grad.cpu(),
                    _grads(lstm)))
    for a, b in zip(res[0][:4], res[1][:4]):
        torch.testing.assert_close(b, a, rtol=RTOL, atol=ATOL)
    for n, g in res[0][4].items():
        torch.testing.assert_close(res[1][4][n], g, rtol=RTOL, atol=ATOL, msg=n)
    # unified: 4 gates x k rows of W_hh per step; every step's rows land on the device buffer
    assert gpu.cells[0].weight_hh.grad.device.type == "cuda"


def test_mesimp_shrinks_cuda_tensors_and_optimizer_state(cuda_exact):
    torch.manual_seed(3)
    m = MLP(k=2).to(cuda_exact)
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    ms = MeSimp(m.groups(), interval=4, prune_rate=0.5)
    ms.set_recording(True)
    x = torch.randn(32, 8, device=cuda_exact)
    y = torch.randint(0, 4, (32,), device=cuda_exact)
    sizes = None
    for step in range(4):
        if step == 2:  # a checkpointed record (CPU tensors) returns to the device when used
            state = ms.state_dict()
            assert state["counts"][0].device.type == "cpu"
            ms.load_state_dict(state)
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(m(x), y).backward()
        assert m.fc1.stats.counts.device.type == "cuda" and m.fc1.stats.seen == step + 1
        counts = m.fc1.stats.counts.clone()
        opt.step()
        sizes = ms.step(opt)
    # a unit survives iff it was selected in >= half of the 4 passes (never fewer than 1 unit)
    assert sizes is not None and sizes["fc1"] == max(1, int((counts >= 2).sum())) < 12
    for p in m.parameters():
        assert p.device.type == "cuda"
        for key in ("exp_avg", "exp_avg_sq"):
            st = opt.state[p][key]
            assert st.shape == p.shape and st.device == p.device
    opt.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(m(x), y).backward()
    opt.step()  # the optimizer keeps working on the shrunken device tensors
    assert torch.isfinite(m.fc1.weight).all()


def test_removing_dead_cuda_units_leaves_outputs_unchanged(cuda_exact):
    torch.manual_seed(0)
    m = MLP().to(cuda_exact)
    dead = torch.tensor([1, 5, 6])
    with torch.no_grad():
        m.fc1.weight[dead] = 0
        m.fc1.bias[dead] = -1.0
    x = torch.randn(20, 8, device=cuda_exact)
    before = m(x)
    kept = torch.tensor([i for i in range(12) if i not in dead.tolist()])  # CPU index
    m.groups()[0].prune(kept)
    assert m.fc1.weight.shape == (9, 8) and m.fc1.weight.device.type == "cuda"
    torch.testing.assert_close(m(x), before)


@pytest.mark.parametrize("precision", [[], ["--fp16"], ["--memory-efficient-fp16"], ["--amp"]])
def test_lstm_meprop_trains_on_cuda(tiny_data_bin, tmp_path, precision):
    """fairseq-train on the GPU: lstm_meprop (alternating) in fp32, fp16 and AMP; meSimp
    where its optimizer state can be sliced (not with --fp16's flat fp32 copies)."""
    simp = [] if precision == ["--fp16"] else ["--mesimp-interval", "3",
                                               "--mesimp-prune-rate", "0.3"]
    args = gpu_train_args(tiny_data_bin, tmp_path, "--task", "translation_efficiency",
                          "--criterion", "cross_entropy", "--meprop-k", "4", "--meprop-alternate",
                          "--max-update", "8", *simp, *precision)
    args[args.index("--arch") + 1] = "lstm_meprop"
    res = run_cli("fairseq_cli.train", args)
    log = res.stdout + res.stderr
    losses = [float(v) for v in re.findall(r"\| train \| epoch \d+ \| loss ([\d.]+|nan|inf)", log)]
    assert losses and all(v == v and v < 100 for v in losses), log[-2000:]
    state = torch.load(os.path.join(tmp_path, "checkpoint_last.pt"), map_location="cpu",
                       weights_only=False)
    w = state["model"]["encoder.lstm.cells.0.weight_hh"]
    assert torch.isfinite(w.float()).all()
    if simp:
        assert "meSimp: layer sizes" in log
        assert w.shape[0] == 4 * w.shape[1] <= 64


def test_transformer_meprop_trains_on_cuda_in_fp16(tiny_data_bin, tmp_path):
    args = gpu_train_args(tiny_data_bin, tmp_path, "--task", "translation_efficiency",
                          "--criterion", "cross_entropy", "--max-update", "6", "--fp16")
    args = tiny_transformer(args)
    res = run_cli("fairseq_cli.train", args)
    losses = re.findall(r"\| train \| epoch \d+ \| loss ([\d.]+)", res.stdout + res.stderr)
    assert losses and float(losses[-1]) < 100
