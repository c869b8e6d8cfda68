"""Masks survive optimizer steps (Adam with weight decay, SGD with momentum, clipping)."""
import math

import pytest
import torch
from torch import nn

from fairseq_efficiency.pruning.classes import class_tensors
from fairseq_efficiency.pruning.masks import MaskSet, pack_bits, unpack_bits
from fairseq_efficiency.pruning.schemes import compute_masks


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Module()
        self.encoder.embed_tokens = nn.Embedding(50, 8)
        self.encoder.lstm = nn.LSTM(8, 8, num_layers=2)
        self.decoder = nn.Module()
        self.decoder.fc_out = nn.Linear(8, 50)

    def forward(self, x):
        h, _ = self.encoder.lstm(self.encoder.embed_tokens(x))
        return self.decoder.fc_out(h)


def loss_of(model, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 50, (5, 3), generator=g)
    return nn.functional.cross_entropy(model(x).reshape(-1, 50), x.reshape(-1))


def prune(model, ratio=0.7):
    masks = MaskSet(compute_masks(class_tensors(model), "class-blind", ratio).masks)
    masks.apply_(model)
    return masks


def train_steps(model, opt, masks, steps, enforce=True):
    for s in range(steps):
        opt.zero_grad()
        loss_of(model, s).backward()
        if enforce:
            masks.mask_grads_(model)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        opt.step()
        if enforce:
            masks.apply_(model)
            masks.mask_optimizer_(opt, model)


def assert_pruned_zero(model, masks, opt=None):
    params = dict(model.named_parameters())
    for n, m in masks.masks.items():
        assert torch.count_nonzero(params[n].data[~m]) == 0, n
        if opt is not None:
            for v in opt.state[params[n]].values():
                if torch.is_tensor(v) and v.shape == m.shape:
                    assert torch.count_nonzero(v[~m]) == 0, n


def test_adam_with_weight_decay_keeps_pruned_weights_zero():
    from argparse import Namespace

    from fairseq.optim.adam import FairseqAdam

    torch.manual_seed(0)
    model = Toy()
    opt = FairseqAdam(Namespace(lr=[0.01], adam_betas="(0.9, 0.999)", adam_eps=1e-8,
                                weight_decay=0.1, fp16_adam_stats=False, tpu=False,
                                use_old_adam=False), list(model.parameters()))
    train_steps(model, opt, MaskSet(), 3, enforce=False)  # Adam moments exist before pruning
    masks = prune(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_steps(model, opt, masks, 5)
    assert_pruned_zero(model, masks, opt.optimizer)
    # surviving weights did train
    params = dict(model.named_parameters())
    for n, m in masks.masks.items():
        assert not torch.equal(params[n].data[m], before[n][m])


def test_without_enforcement_adam_revives_pruned_weights():
    """The check above can fail: stale Adam moments and weight decay move zeros."""
    torch.manual_seed(0)
    model = Toy()
    opt = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1)
    train_steps(model, opt, MaskSet(), 3, enforce=False)
    masks = prune(model)
    train_steps(model, opt, masks, 2, enforce=False)
    params = dict(model.named_parameters())
    assert any(torch.count_nonzero(params[n].data[~m]) > 0 for n, m in masks.masks.items())


def test_sgd_momentum_keeps_pruned_weights_zero():
    torch.manual_seed(0)
    model = Toy()
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=0.01)
    train_steps(model, opt, MaskSet(), 3, enforce=False)
    masks = prune(model, 0.5)
    train_steps(model, opt, masks, 4)
    assert_pruned_zero(model, masks, opt)


def test_fairseq_fp16_optimizer_flat_fp32_masters_keep_zeros(monkeypatch):
    """--fp16: fairseq keeps flat fp32 master weights; masks reach them and their Adam state."""
    from fairseq.optim.fp16_optimizer import FP16Optimizer
    from omegaconf import OmegaConf

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)  # fairseq keys masters by GPU
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Linear(5, 4))
    model[0].weight.data.normal_()
    masks = MaskSet({"0.weight": torch.rand(5, 6) > 0.5, "1.weight": torch.rand(4, 5) > 0.5})
    model.half()
    cfg = OmegaConf.create({
        "common": {"fp16_no_flatten_grads": False, "bf16": False, "fp16_init_scale": 1,
                   "fp16_scale_window": None, "fp16_scale_tolerance": 0.0,
                   "threshold_loss_scale": None, "min_loss_scale": 1e-4,
                   "memory_efficient_bf16": False, "model_parallel_size": 1},
        "optimizer": {"_name": "adam", "lr": [0.05], "adam_betas": "(0.9, 0.999)",
                      "adam_eps": 1e-8, "weight_decay": 0.1, "fp16_adam_stats": False,
                      "tpu": False, "use_old_adam": False},
        "optimization": {"update_freq": [1]},
        "distributed_training": {"distributed_world_size": 1},
    })
    opt = FP16Optimizer.build_optimizer(cfg, list(model.parameters()))
    for step in range(4):
        if step == 2:  # prune after Adam state exists
            masks.apply_(model)
            masks.mask_optimizer_(opt, model)
        opt.zero_grad()
        for p in model.parameters():
            p.grad = torch.randn(p.shape).half()
        if step >= 2:
            masks.mask_grads_(model)
        opt.clip_grad_norm(0.5)  # syncs fp16 grads into the fp32 masters
        if step >= 2:
            masks.mask_optimizer_(opt, model, grads=True)
        opt.step()
        if step >= 2:
            masks.apply_(model)
            masks.mask_optimizer_(opt, model)
    flat = next(iter(opt.fp32_params.values()))
    state = opt.optimizer.state[flat]
    off = 0
    for n, p in model.named_parameters():
        if n in masks:
            m = masks.masks[n].reshape(-1)
            assert torch.count_nonzero(p.data.reshape(-1)[~m]) == 0
            for t in (flat.data, state["exp_avg"], state["exp_avg_sq"]):
                assert torch.count_nonzero(t[off:off + p.numel()][~m]) == 0, n
            assert torch.count_nonzero(flat.data[off:off + p.numel()][m]) > 0
        off += p.numel()


@pytest.mark.parametrize("numel", [1, 7, 8, 9, 1000, 1001])
def test_bit_packing_roundtrip(numel):
    m = torch.rand(numel, generator=torch.Generator().manual_seed(numel)) > 0.3
    packed = pack_bits(m)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(numel / 8)
    assert torch.equal(unpack_bits(packed, numel), m)
    ms = MaskSet({"w": m.reshape(-1, 1)})
    assert torch.equal(MaskSet.from_state_dict(ms.state_dict()).masks["w"], ms.masks["w"])
