"""Masks survive optimizer steps (Adam with weight decay, SGD with momentum, clipping)."""
import torch
from torch import nn

from fairseq_efficiency.pruning.classes import find_weight_classes
from fairseq_efficiency.pruning.masks import MaskSet
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
    classes = find_weight_classes(model)
    params = dict(model.named_parameters())
    masks = MaskSet(compute_masks({c: {n: params[n].data for n in ns} for c, ns in classes.items()},
                                  "class-blind", ratio).masks)
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


def test_classes_of_a_torch_lstm_model():
    classes = find_weight_classes(Toy(), split_lstm=True)
    assert list(classes) == ["src_embed", "src_layer1_ff", "src_layer1_rec", "src_layer2_ff",
                             "src_layer2_rec", "softmax"]
    assert all("bias" not in n for ns in classes.values() for n in ns)


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
