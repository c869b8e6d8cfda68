"""Pruning on CUDA: masks on the device, and masks that hold under fp16/bf16 training
(fairseq's FP16Optimizer keeps flat fp32 master copies). Skipped without CUDA."""
import os
import re

import pytest
import torch

from fairseq_efficiency.pruning.masks import MaskSet
from fairseq_efficiency.pruning.schemes import compute_masks
from tests.helpers import gpu_train_args, run_cli
from tests.pruning.test_cli import TASK, assert_masks_hold, load, masks_of

pytestmark = pytest.mark.gpu


def moments_by_name(state):
    """Adam moments of every model parameter from a checkpoint, keyed by parameter name
    (fairseq's optimizer state is indexed in parameter order; --fp16 flattens it)."""
    model = state["model"]
    names = [n for n, t in model.items() if t.is_floating_point()]
    st = state["last_optimizer_state"]["state"]
    keys = ("exp_avg", "exp_avg_sq")
    if len(st) == 1 and len(names) > 1:  # one flat fp32 master copy
        flat, out, off = next(iter(st.values())), {}, 0
        for n in names:
            k = model[n].numel()
            out[n] = {key: flat[key][off:off + k].view(model[n].shape) for key in keys}
            off += k
        assert off == flat["exp_avg"].numel()
        return out
    assert len(st) == len(names)
    return {n: {key: st[i][key] for key in keys} for i, n in enumerate(names)}


@pytest.mark.parametrize("scheme", ["class-blind", "class-uniform", "class-distribution"])
def test_masks_of_cuda_weights_equal_cpu_masks(scheme):
    torch.manual_seed(0)
    cpu = {"a": {"a.w": torch.randn(30, 20)}, "b": {"b.w": torch.randn(40, 10) * 3}}
    gpu = {c: {n: t.cuda() for n, t in ts.items()} for c, ts in cpu.items()}
    ref = compute_masks(cpu, scheme, 0.6)
    res = compute_masks(gpu, scheme, 0.6)
    for n, m in ref.masks.items():
        assert res.masks[n].device.type == "cuda"
        assert torch.equal(res.masks[n].cpu(), m), n
    # a second event respects the first one's masks, whichever device they live on
    again = compute_masks(gpu, scheme, 0.8, prev={n: m for n, m in ref.masks.items()})
    for n, m in ref.masks.items():
        assert not (again.masks[n].cpu() & ~m).any()


def test_mask_set_enforces_on_cuda_parameters():
    torch.manual_seed(1)
    lin = torch.nn.Linear(8, 6).cuda()
    keep = torch.rand(6, 8) > 0.5  # masks restored from a checkpoint live on the CPU
    ms = MaskSet.from_state_dict(MaskSet({"weight": keep}).state_dict())
    ms.apply_(lin)
    assert not lin.weight[~keep.cuda()].any()
    lin(torch.randn(4, 8, device="cuda")).sum().backward()
    ms.mask_grads_(lin)
    assert not lin.weight.grad[~keep.cuda()].any() and lin.weight.grad[keep.cuda()].any()
    opt = torch.optim.Adam(lin.parameters(), lr=0.1, weight_decay=0.1)
    opt.step()
    ms.apply_(lin)
    ms.mask_optimizer_(opt, lin)
    assert not lin.weight[~keep.cuda()].any()
    assert not opt.state[lin.weight]["exp_avg"][~keep.cuda()].any()


@pytest.mark.parametrize("precision", [["--fp16"], ["--bf16"], ["--fp16", "--fp16-no-flatten-grads"],
                                       ["--memory-efficient-fp16"]])
def test_masks_hold_in_half_precision_training(tiny_data_bin, tmp_path, precision):
    """fairseq-train --fp16/--bf16 on the GPU: after pruning, the pruned weights stay exactly
    zero in the model and in the optimizer's fp32 copies while the others keep training."""
    args = gpu_train_args(tiny_data_bin, tmp_path, *TASK, "--prune-ratio", "0.5",
                          "--prune-scheme", "class-blind", "--prune-at-update", "2",
                          "--max-update", "8", *precision)
    res = run_cli("fairseq_cli.train", args)
    log = res.stdout + res.stderr
    assert "pruning event 1: class-blind" in log, log[-2000:]
    state = load(os.path.join(tmp_path, "checkpoint_last.pt"))
    assert state["optimizer_history"][-1]["num_updates"] == 8
    masks = masks_of(state)
    assert masks.sparsity() == pytest.approx(0.5, abs=0.01)
    assert_masks_hold(state, masks)
    # the optimizer's moments (flat fp32 copy or one per tensor) are zero where the masks are
    moments = moments_by_name(state)
    for n, m in masks.masks.items():
        for key in ("exp_avg", "exp_avg_sq"):
            assert moments[n][key].shape == m.shape and not moments[n][key][~m].any(), (n, key)
    losses = re.findall(r"\| train \| epoch \d+ \| loss ([\d.]+)", log)
    assert losses and float(losses[-1]) < 100
