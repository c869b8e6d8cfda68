"""Pruning masks enforced on the weights themselves (See et al. 2016, section 3.4).

Masks are kept beside the model, keyed by fairseq's own parameter names, instead
of ``torch.nn.utils.prune``: that utility renames ``weight`` to
``weight_orig``/``weight_mask`` (fairseq checkpoints then no longer load) and
applies the mask in a forward pre-hook, which fairseq's ``MultiheadAttention``
fast path bypasses. Here pruned weights are *stored* as zeros and kept there:

* gradients of pruned weights are zeroed after backward and before the step;
* after the step, pruned weights and the optimizer's per-weight state (Adam
  moments, SGD momentum, fp16 master copies) are zeroed again, so no update,
  momentum or weight decay can revive them.
"""
from collections import OrderedDict
from typing import Dict, Iterator, List, Mapping, Optional, Tuple

import torch
from torch import nn

from fairseq_efficiency.hooks import torch_optimizer

_BITS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """Bool tensor -> uint8 tensor with 8 mask bits per byte (row-major, MSB first)."""
    flat = mask.reshape(-1).to(torch.uint8).cpu()
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return (flat.view(-1, 8) * _BITS).sum(dim=1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: a flat bool tensor of ``numel`` elements."""
    bits = packed.reshape(-1, 1).bitwise_and(_BITS.to(packed.device)).ne(0)
    return bits.reshape(-1)[:numel]


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strip DDP / fairseq distributed wrappers (``.module``)."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return model


class MaskSet:
    """Keep masks (``True`` = weight survives) by parameter name."""

    def __init__(self, masks: Optional[Mapping[str, torch.Tensor]] = None):
        self.masks: "OrderedDict[str, torch.Tensor]" = OrderedDict()
        self._pruned: Dict[Tuple[str, torch.device], torch.Tensor] = {}
        self._sparsity: Optional[float] = None
        for n, m in (masks or {}).items():
            self.masks[n] = m.bool()

    def __len__(self):
        return len(self.masks)

    def __contains__(self, name):
        return name in self.masks

    def _pruned_on(self, name, device):
        key = (name, device)
        t = self._pruned.get(key)
        if t is None:
            t = self._pruned[key] = ~self.masks[name].to(device)
        return t

    # -- enforcing ------------------------------------------------------------------------
    def params(self, model: nn.Module) -> "OrderedDict[str, nn.Parameter]":
        named = dict(unwrap_model(model).named_parameters())
        missing = [n for n in self.masks if n not in named]
        if missing:
            raise ValueError(f"pruning masks name parameters the model does not have: {missing[:5]}")
        out = OrderedDict()
        for n, m in self.masks.items():
            p = named[n]
            if tuple(p.shape) != tuple(m.shape):
                raise ValueError(f"pruning mask for {n} has shape {tuple(m.shape)}, "
                                 f"parameter has {tuple(p.shape)}")
            out[n] = p
        return out

    @torch.no_grad()
    def apply_(self, model: nn.Module):
        """Zero the pruned weights."""
        for n, p in self.params(model).items():
            p.data.masked_fill_(self._pruned_on(n, p.device), 0)

    @torch.no_grad()
    def mask_grads_(self, model: nn.Module):
        for n, p in self.params(model).items():
            if p.grad is not None:
                p.grad.masked_fill_(self._pruned_on(n, p.device), 0)

    @torch.no_grad()
    def mask_optimizer_(self, optimizer, model: nn.Module, grads: bool = False):
        """Zero pruned entries of the optimizer's copies: fp32 masters and per-weight state.

        With ``grads`` the optimizer-side gradients (fp32 master grads) are masked
        instead, before the step.
        """
        for n, tensor, state in optimizer_views(optimizer, self.params(model)):
            pruned = self._pruned_on(n, tensor.device)
            if grads:
                g = tensor.grad_view
                if g is not None:
                    g.masked_fill_(pruned, 0)
                continue
            tensor.data_view.masked_fill_(pruned, 0)
            for v in state:
                v.masked_fill_(pruned, 0)

    # -- reporting --------------------------------------------------------------------------
    def counts(self) -> Dict[str, Tuple[int, int]]:
        """Parameter name -> (pruned, total)."""
        return {n: (int((~m).sum()), m.numel()) for n, m in self.masks.items()}

    def sparsity(self) -> float:
        if self._sparsity is None:  # masks are never edited in place
            pruned = sum(int((~m).sum()) for m in self.masks.values())
            total = sum(m.numel() for m in self.masks.values())
            self._sparsity = pruned / max(total, 1)
        return self._sparsity

    # -- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, dict]:
        return OrderedDict((n, {"shape": list(m.shape), "bits": pack_bits(m)})
                           for n, m in self.masks.items())

    @classmethod
    def from_state_dict(cls, state: Mapping[str, dict]) -> "MaskSet":
        masks = OrderedDict()
        for n, d in state.items():
            shape = torch.Size(d["shape"])
            masks[n] = unpack_bits(d["bits"], shape.numel()).reshape(shape)
        return cls(masks)


class _View:
    """A tensor slice standing for one model parameter inside an optimizer."""

    def __init__(self, param, sl=None, shape=None):
        self.param, self.sl, self.shape = param, sl, shape
        self.device = param.device

    def _cut(self, t):
        return t if self.sl is None else t.view(-1)[self.sl].view(self.shape)

    @property
    def data_view(self):
        return self._cut(self.param.data)

    @property
    def grad_view(self):
        return None if self.param.grad is None else self._cut(self.param.grad)

    def state_views(self, st) -> List[torch.Tensor]:
        return [self._cut(v) for v in st.values()
                if torch.is_tensor(v) and v.shape == self.param.shape]


def optimizer_views(optimizer, params: Mapping[str, nn.Parameter]) -> Iterator:
    """Yield ``(name, view, [state tensors])`` for every masked parameter the optimizer holds.

    Handles plain fairseq optimizers (state keyed by the model parameters) and
    fairseq's ``FP16Optimizer`` (fp32 master copies, flat per device or one per
    parameter).
    """
    torch_opt = torch_optimizer(optimizer)
    state = torch_opt.state if torch_opt is not None else {}
    by_id = {id(p): n for n, p in params.items()}
    fp16 = getattr(optimizer, "fp16_params", None)
    fp32 = getattr(optimizer, "fp32_params", None)
    if fp16 is not None and fp32 is not None:
        if isinstance(fp32, dict) or torch.is_tensor(fp32):  # flattened masters
            # fairseq keys them by CUDA device index (one flat tensor unless pipeline parallel)
            flat = fp32 if isinstance(fp32, dict) else {None: fp32}
            keys = list(flat)
            offsets = {k: 0 for k in keys}
            for p in fp16:
                k = keys[0] if len(keys) == 1 else p.device.index
                off = offsets[k]
                offsets[k] = off + p.numel()
                n = by_id.get(id(p))
                if n is None:
                    continue
                v = _View(flat[k], slice(off, off + p.numel()), p.shape)
                st = state.get(flat[k], {})
                yield n, v, [v._cut(t) for t in st.values()
                             if torch.is_tensor(t) and t.shape == flat[k].shape]
        else:
            for p, p32 in zip(fp16, fp32):
                n = by_id.get(id(p))
                if n is not None:
                    v = _View(p32)
                    yield n, v, v.state_views(state.get(p32, {}))
        return
    for n, p in params.items():
        v = _View(p)
        yield n, v, v.state_views(state.get(p, {}))
