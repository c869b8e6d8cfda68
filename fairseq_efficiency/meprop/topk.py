"""meProp: top-k sparsified back propagation for linear units.

Implements Sun et al., "Training Simplification and Model Simplification for
Deep Learning: A Minimal Effort Back Propagation Method", section 2.1
(eq. 5-6 and Algorithm 1: per-example top-k of dL/dy) and section 3.3.1
(*unified* meProp: one top-k set for the whole minibatch chosen from the
mean |dL/dy|, so the backward pass is a small dense matmul over the k
gathered rows).

The forward pass is exactly ``nn.Linear``'s. Only the backward changes:

* ``unified``: ``S = topk(sum_batch |dL/dy|)``; ``dL/dx = G[:, S] W[S]``,
  ``dL/dW[S] = G[:, S]^T x`` (every other row of dL/dW is 0). The row
  gradient is added straight into ``W.grad`` (see :func:`accumulate_rows`):
  zero-filling a dense ``n x m`` gradient would cost more than the sparse
  backward itself.
* ``per-example``: each row of G keeps its own top-k (eq. 5-6); computed as a
  masked dense product, which is exact but saves no time on CPU/GPU BLAS.
"""
import contextlib
import math
from typing import Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from fairseq_efficiency.errors import PluginConfigError

MODES = ("unified", "per-example")


def check_k(k) -> None:
    """Reject invalid ``k`` with one clear message (int >= 1 or ratio in (0, 1])."""
    if isinstance(k, bool) or not isinstance(k, (int, float)):
        raise PluginConfigError(
            f"meProp k must be an int >= 1 or a float ratio in (0, 1], got {k!r}")
    if isinstance(k, int):
        if k <= 0:
            raise PluginConfigError(f"meProp k must be >= 1 (got {k})")
    elif not (0.0 < k <= 1.0) or math.isnan(k):
        raise PluginConfigError(f"meProp k ratio must lie in (0, 1] (got {k})")


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise PluginConfigError(f"unknown meProp mode {mode!r}; choose one of {', '.join(MODES)}")


def resolve_k(k: Union[int, float], n: int) -> int:
    """Number of kept gradient entries for an output of size ``n``."""
    if isinstance(k, float):
        return max(1, min(n, int(round(k * n))))
    return min(int(k), n)


def dense_layers(model: nn.Module):
    """``(name, units)`` of every meProp layer of ``model`` whose top-k keeps all of its
    ``units`` outputs (``k >= units``): its backward is dense, meProp saves nothing there."""
    return [(name, m.meprop_units) for name, m in model.named_modules()
            if isinstance(m, MePropLayer) and m.k_eff >= m.meprop_units]


def parse_k(value: float) -> Union[int, float]:
    """CLI value -> k: values < 1 are ratios, values >= 1 absolute (must be integral)."""
    if value is None:
        raise PluginConfigError("--meprop-k is required")
    value = float(value)
    if value <= 0 or math.isnan(value):
        raise PluginConfigError(f"--meprop-k must be > 0 (got {value:g})")
    if value < 1:
        return value
    if value != int(value):
        raise PluginConfigError(f"--meprop-k >= 1 must be an integer count (got {value:g})")
    return int(value)


class TopKStats:
    """meSimp record (Algorithm 2, line 7): how often each output unit was in S.

    ``counts[i]`` is the number of top-k selections unit i took part in and
    ``seen`` the number of selections made (examples for per-example mode,
    backward calls for unified mode), so ``counts / seen`` is the activeness
    that meSimp compares with the prune rate ``p``.
    """

    def __init__(self):
        self.enabled = False
        self.counts: Optional[torch.Tensor] = None  # None: nothing recorded (all zeros)
        self.seen = 0

    def reset(self):
        """Clear the record; ``counts`` is re-created by the next recorded selection."""
        self.counts = None
        self.seen = 0

    def _ensure(self, n: int, device) -> torch.Tensor:
        """``counts`` for ``n`` units on ``device``: created (record cleared) on first use
        or a size change, moved if it lives elsewhere (e.g. loaded from a checkpoint)."""
        if self.counts is None or self.counts.numel() != n:
            self.counts = torch.zeros(n, dtype=torch.long, device=device)
            self.seen = 0
        elif self.counts.device != device:
            self.counts = self.counts.to(device)
        return self.counts

    def record_unified(self, idx: torch.Tensor, n: int):
        """One selection (a backward call) keeping the distinct units ``idx``."""
        if not self.enabled:
            return
        self._ensure(n, idx.device).index_add_(
            0, idx.reshape(-1), torch.ones(idx.numel(), dtype=torch.long, device=idx.device))
        self.seen += 1

    def record_rows(self, ind: torch.Tensor, n: int):
        """One selection per row of ``ind`` (B x k unit indices, per-example mode)."""
        if not self.enabled:
            return
        self._ensure(n, ind.device).add_(torch.bincount(ind.reshape(-1), minlength=n))
        self.seen += ind.shape[0]

    def record_active(self, mask: torch.Tensor):
        """One selection per row of ``mask`` (B x n, True = unit active)."""
        if not self.enabled:
            return
        self._ensure(mask.shape[1], mask.device).add_(mask.sum(0))
        self.seen += mask.shape[0]


class _RowGradBuffer:
    """Reusable ``W.grad`` storage whose rows outside the last write are zero.

    When the optimizer resets gradients to ``None`` every step (fairseq does),
    a fresh dense gradient would be zero-filled each time; instead the buffer
    of the previous step is reused after zeroing only the rows written then.
    Valid as long as whoever touches ``W.grad`` in between only scales it
    (gradient normalisation, clipping) - zero rows stay zero. A distributed
    all-reduce writes other ranks' rows into the buffer, so with more than one
    process the buffer is not reused.
    """

    def __init__(self):
        self.buf: Optional[torch.Tensor] = None
        # rows written since the last reset; None with a buffer: every row (once the
        # written rows add up to the buffer's size, zero_() is cheaper than index_fill_)
        self.dirty: Optional[torch.Tensor] = None


def _distributed() -> bool:
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def accumulate_rows(param: torch.Tensor, idx: torch.Tensor, rows: torch.Tensor,
                    cache: Optional[_RowGradBuffer] = None) -> bool:
    """``param.grad[idx] += rows`` without building a dense zero gradient.

    ``idx`` must hold distinct rows (top-k indices do). Returns False when
    ``param`` is not a leaf that accumulates gradients (the caller must then
    return a dense gradient to autograd).
    """
    if not (param.requires_grad and param.is_leaf):
        return False
    idx = idx.reshape(-1)
    if param.grad is None:
        if cache is not None and _distributed():
            cache = None
        buf = cache.buf if cache is not None else None
        if buf is None or buf.shape != param.shape or buf.dtype != param.dtype:
            buf = torch.zeros_like(param)
        elif cache.dirty is None:  # whole buffer dirty
            buf.zero_()
        else:
            buf.index_fill_(0, cache.dirty, 0)
        if cache is not None:
            cache.buf, cache.dirty = buf, idx
        buf.index_copy_(0, idx, rows.to(buf.dtype))
        param.grad = buf
        return True
    g = param.grad
    g.index_add_(0, idx, rows.to(g.dtype))
    if cache is not None and g is cache.buf and cache.dirty is not None:
        if cache.dirty.numel() + idx.numel() >= g.shape[0]:
            cache.dirty = None  # e.g. T steps of an LSTM backward: reset it all next time
        else:
            cache.dirty = torch.cat([cache.dirty, idx])
    return True


def autocast_state(t: torch.Tensor):
    """The autocast region (``torch.autocast``, fairseq ``--amp``) a forward runs in, on
    ``t``'s device: ``(device type, dtype)``, or None outside one."""
    dev = t.device.type
    if dev in ("cpu", "cuda") and torch.is_autocast_enabled(dev):
        return dev, torch.get_autocast_dtype(dev)
    return None


def autocast_like(state):
    """Re-enter the forward's autocast region in a custom backward (which autograd runs
    outside it), as ``torch.amp.custom_bwd`` does, so its matmuls see the forward's dtypes."""
    return torch.autocast(state[0], dtype=state[1]) if state else contextlib.nullcontext()


_SCORE_ROWS = 128


def abs_batch_sum(grad: torch.Tensor) -> torch.Tensor:
    """``grad.abs().sum(0)`` of an N x n gradient, summed in row blocks.

    No N x n temporary: fresh memory costs page faults that can exceed the rest of
    the sparse backward (``benchmarks/meprop.py linear``). Accumulated in at least
    fp32: with ``--fp16`` the loss-scaled sums overflow fp16 (every saturated unit
    would tie at ``inf``) and bf16 sums lose the ranking's precision.
    """
    acc = torch.promote_types(grad.dtype, torch.float32)
    score = None
    for block in grad.split(_SCORE_ROWS):
        s = block.abs().sum(0, dtype=acc)
        score = s if score is None else score.add_(s)
    return score


def unified_topk_indices(grad: torch.Tensor, k: int) -> torch.Tensor:
    """Indices S of the k largest mean |dL/dy| over the batch (section 3.3.1)."""
    return abs_batch_sum(grad).topk(k, sorted=False).indices


def _init_meprop(module: nn.Module, k: Union[int, float], mode: str, n_caches: int) -> None:
    """meProp state shared by :class:`TopKLinear` and ``MePropLSTMCell``: validated
    ``k`` and ``mode``, the top-k switch, the meSimp record and one row-gradient
    buffer per parameter updated by :func:`accumulate_rows`."""
    check_k(k)
    check_mode(mode)
    module.k, module.mode, module.topk_enabled = k, mode, True
    module.stats = TopKStats()
    module._caches = tuple(_RowGradBuffer() for _ in range(n_caches))


class MePropLayer:
    """What every meProp layer (:class:`TopKLinear`, ``MePropLSTMCell``) offers: ``k`` (a
    count, or a ratio of the ``meprop_units`` its top-k chooses from), ``k_eff`` and the
    top-k record ``stats`` that meSimp reads."""

    k: Union[int, float]
    meprop_units: int

    @property
    def k_eff(self) -> int:
        """The number of outputs kept per backward at the layer's current size."""
        return resolve_k(self.k, self.meprop_units)

    def fix_k(self) -> None:
        """Make a ratio ``k`` the count it resolves to now, so that it no longer shrinks with
        the layer (meSimp, Algorithm 2, uses an absolute k)."""
        if isinstance(self.k, float):
            self.k = self.k_eff


class TopKLinearFunction(torch.autograd.Function):
    """y = x W^T + b with top-k sparsified backward (eq. 9-10)."""

    @staticmethod
    def forward(ctx, x, weight, bias, k, mode, stats, cache_w, cache_b):
        ctx.save_for_backward(x, weight)
        ctx.k, ctx.mode, ctx.stats = k, mode, stats
        ctx.caches = (cache_w, cache_b)
        ctx.bias = bias
        ctx.autocast = autocast_state(x)
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_y):
        with autocast_like(ctx.autocast):
            return TopKLinearFunction._backward(ctx, grad_y)

    @staticmethod
    def _backward(ctx, grad_y):
        x, weight = ctx.saved_tensors
        bias = ctx.bias
        n, m = weight.shape
        G = grad_y.reshape(-1, n)
        X = x.reshape(-1, m)
        k = ctx.k
        grad_x = grad_w = grad_b = None
        if ctx.mode == "unified":
            idx = unified_topk_indices(G, k)
            ctx.stats.record_unified(idx, n)
            Gs = G.index_select(1, idx)  # N x k
            if ctx.needs_input_grad[0]:
                grad_x = (Gs @ weight.index_select(0, idx)).view_as(x)
            if ctx.needs_input_grad[1]:
                rows = Gs.t() @ X  # k x m
                if not accumulate_rows(weight, idx, rows, ctx.caches[0]):
                    grad_w = weight.new_zeros(weight.shape).index_copy_(0, idx, rows)
            if bias is not None and ctx.needs_input_grad[2]:
                rows_b = Gs.sum(0)
                if not accumulate_rows(bias, idx, rows_b, ctx.caches[1]):
                    grad_b = bias.new_zeros(bias.shape).index_copy_(0, idx, rows_b)
        else:  # per-example, eq. 5-6
            vals, ind = G.abs().topk(k, dim=1, sorted=False)
            ctx.stats.record_rows(ind, n)
            Gm = torch.zeros_like(G).scatter_(1, ind, G.gather(1, ind))
            if ctx.needs_input_grad[0]:
                grad_x = (Gm @ weight).view_as(x)
            if ctx.needs_input_grad[1]:
                grad_w = Gm.t() @ X
            if bias is not None and ctx.needs_input_grad[2]:
                grad_b = Gm.sum(0)
        return grad_x, grad_w, grad_b, None, None, None, None, None


class TopKLinear(MePropLayer, nn.Linear):
    """Drop-in ``nn.Linear`` whose backward keeps only the top-k of dL/dy.

    Args:
        in_features, out_features, bias: as ``nn.Linear``.
        k: kept outputs per backward; an ``int`` >= 1 or a ``float`` ratio of
            ``out_features`` in (0, 1]. ``k >= out_features`` is ``nn.Linear``.
        mode: ``"unified"`` (one top-k set per minibatch, section 3.3.1 - the
            mode that saves time) or ``"per-example"`` (eq. 5-6).

    In eval mode, without grad, or with ``k >= out_features`` (or
    ``topk_enabled = False``) it runs ``F.linear`` and autograd exactly as
    ``nn.Linear``. Inputs may have any leading shape. ``stats`` records the
    top-k history used by meSimp (Algorithm 2).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 k: Union[int, float] = 0.05, mode: str = "unified", device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        _init_meprop(self, k, mode, n_caches=2)

    @classmethod
    def from_linear(cls, linear: nn.Linear, k, mode="unified") -> "TopKLinear":
        """A TopKLinear sharing ``linear``'s parameters."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.in_features, new.out_features = linear.in_features, linear.out_features
        new.weight = linear.weight
        new.bias = linear.bias
        _init_meprop(new, k, mode, n_caches=2)
        return new

    @property
    def meprop_units(self) -> int:
        """The outputs the top-k chooses from."""
        return self.weight.shape[0]

    def sparse_backward_active(self) -> bool:
        return (self.training and self.topk_enabled and torch.is_grad_enabled()
                and self.k_eff < self.weight.shape[0])

    def forward(self, x):
        if not self.sparse_backward_active():
            if self.training and self.stats.enabled and torch.is_grad_enabled():
                # dense backward: every unit is "in the top-k"
                n = self.weight.shape[0]
                self.stats.record_unified(torch.arange(n, device=self.weight.device), n)
            return F.linear(x, self.weight, self.bias)
        return TopKLinearFunction.apply(x, self.weight, self.bias, self.k_eff, self.mode,
                                        self.stats, *self._caches)

    def extra_repr(self):
        return (f"in_features={self.weight.shape[1]}, out_features={self.weight.shape[0]}, "
                f"bias={self.bias is not None}, k={self.k}, mode={self.mode}")
