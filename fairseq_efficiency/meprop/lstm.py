"""LSTM with meProp on the gate pre-activation gradients (section 2.3.2).

One time step is a single autograd Function (:class:`MePropLSTMCellFunction`):
the forward is two ``addmm`` (input and recurrent weights, no per-step weight
concatenation) and the LSTM element-wise ops; the backward computes dL/d(gates) by hand, keeps the top-k of each of the
four gates *independently* (the paper's choice for back propagation) and then
multiplies only the ``4k`` gathered rows of ``[W_ih, W_hh]``:

    dL/d[x, h] = G[:, S] [W_ih, W_hh][S]          (B x 4k x (in + H))
    dL/d[W_ih, W_hh][S] += G[:, S]^T [x, h]        (added into W.grad rows)

so the recurrent and input matmuls of the backward shrink by ``k / H``. The
same cell serves the encoder (:class:`MePropLSTM`, padded sequences with a
length mask instead of packing) and fairseq's decoder loop (input feeding and
attention need a step-by-step cell).

Measured (``benchmarks/meprop.py lstm``, hidden 1024, k = 6.25%, 2 CPU cores): the
backward is 2.3x faster than fairseq's ``nn.LSTM`` encoder + ``nn.LSTMCell`` decoder and
the unrolled forward about as fast (one ``addmm`` per step instead of one batched input
projection), so a full training step is 1.6x faster.

For meSimp the hidden units are counted *jointly* over the four gates (a unit
is active in a step if any of its gates is in the top-k), because a unit can
only be removed from all gates at once (section 2.3.2).
"""
from typing import List, Optional, Tuple, Union

import torch
import torch.nn as nn

from fairseq_efficiency.meprop.topk import (
    MePropLayer, _init_meprop, abs_batch_sum, accumulate_rows, autocast_like, autocast_state,
)


def _gate_topk_unified(D: torch.Tensor, k: int, H: int) -> torch.Tensor:
    """Per-gate unified top-k over the batch; returns 4k indices into 4H."""
    score = abs_batch_sum(D).view(4, H)
    idx = score.topk(k, dim=1, sorted=False).indices
    offs = torch.arange(4, device=D.device).unsqueeze(1) * H
    return (idx + offs).reshape(-1)


class MePropLSTMCellFunction(torch.autograd.Function):
    """One LSTM step (gate order i, f, g, o as ``nn.LSTMCell``) with top-k backward.

    ``k >= H`` gives the exact dense gradient (used to check the hand-written
    backward against ``nn.LSTMCell``).
    """

    @staticmethod
    def forward(ctx, x, h, c, w_ih, w_hh, bias, k, mode, stats, caches):
        H = w_hh.shape[1]
        gates = torch.addmm(bias, x, w_ih.t()) if bias is not None else x @ w_ih.t()
        # (under autocast the first addmm gives the autocast dtype; an in-place op is not cast)
        gates.addmm_(h.to(gates.dtype), w_hh.t().to(gates.dtype))
        i = torch.sigmoid(gates[:, :H])
        f = torch.sigmoid(gates[:, H: 2 * H])
        g = torch.tanh(gates[:, 2 * H: 3 * H])
        o = torch.sigmoid(gates[:, 3 * H:])
        c_new = torch.addcmul(f * c, i, g)
        tc = torch.tanh(c_new)
        h_new = o * tc
        ctx.save_for_backward(x, h, c, i, f, g, o, tc)
        ctx.k, ctx.mode, ctx.stats, ctx.caches = k, mode, stats, caches
        ctx.params = (w_ih, w_hh, bias)
        ctx.autocast = autocast_state(x)
        return h_new, c_new

    @staticmethod
    def backward(ctx, dh, dc):
        with autocast_like(ctx.autocast):
            return MePropLSTMCellFunction._backward(ctx, dh, dc)

    @staticmethod
    def _backward(ctx, dh, dc):
        x, h, c, i, f, g, o, tc = ctx.saved_tensors
        w_ih, w_hh, bias = ctx.params
        H = w_hh.shape[1]
        if dh is None:
            dh = torch.zeros_like(tc)
        dc_t = dh * o * (1 - tc * tc)
        if dc is not None:
            dc_t = dc_t + dc
        D = torch.cat([dc_t * g * i * (1 - i),
                       dc_t * c * f * (1 - f),
                       dc_t * i * (1 - g * g),
                       dh * tc * o * (1 - o)], dim=1)  # B x 4H, dL/d(gates)
        dc_prev = dc_t * f
        k = ctx.k
        grad_w_ih = grad_w_hh = grad_b = None
        if k >= H:
            dx, dh_prev = D @ w_ih, D @ w_hh
            grad_w_ih, grad_w_hh = D.t() @ x, D.t() @ h
            grad_b = D.sum(0) if bias is not None else None
            ctx.stats.record_unified(torch.arange(H, device=D.device), H)
        elif ctx.mode == "unified":
            idx = _gate_topk_unified(D, k, H)
            if ctx.stats.enabled:
                ctx.stats.record_unified(torch.unique(idx % H), H)
            Ds = D.index_select(1, idx)  # B x 4k
            dx = Ds @ w_ih.index_select(0, idx)
            dh_prev = Ds @ w_hh.index_select(0, idx)
            DsT = Ds.t()
            rows_ih, rows_hh = DsT @ x, DsT @ h  # 4k x in, 4k x H
            if not accumulate_rows(w_ih, idx, rows_ih, ctx.caches[0]):
                grad_w_ih = w_ih.new_zeros(w_ih.shape).index_copy_(0, idx, rows_ih)
            if not accumulate_rows(w_hh, idx, rows_hh, ctx.caches[1]):
                grad_w_hh = w_hh.new_zeros(w_hh.shape).index_copy_(0, idx, rows_hh)
            if bias is not None and not accumulate_rows(bias, idx, Ds.sum(0), ctx.caches[2]):
                grad_b = bias.new_zeros(bias.shape).index_copy_(0, idx, Ds.sum(0))
        else:  # per-example: each row keeps its own top-k per gate
            B = D.shape[0]
            D4 = D.view(B, 4, H)
            ind = D4.abs().topk(k, dim=2, sorted=False).indices
            D4 = torch.zeros_like(D4).scatter_(2, ind, D4.gather(2, ind))
            if ctx.stats.enabled:  # a unit is active if any of its gates is kept
                active = torch.zeros(B, H, dtype=torch.bool, device=D.device)
                active.scatter_(1, ind.reshape(B, -1), True)
                ctx.stats.record_active(active)
            D = D4.view(B, 4 * H)
            dx, dh_prev = D @ w_ih, D @ w_hh
            grad_w_ih, grad_w_hh = D.t() @ x, D.t() @ h
            grad_b = D.sum(0) if bias is not None else None
        return dx, dh_prev, dc_prev, grad_w_ih, grad_w_hh, grad_b, None, None, None, None


class MePropLSTMCell(MePropLayer, nn.Module):
    """``nn.LSTMCell`` (single bias ``bias = b_ih + b_hh``) with meProp backward.

    ``k`` as :class:`~fairseq_efficiency.meprop.TopKLinear`, applied per gate
    (k of the H units of each gate). ``topk_enabled = False``, eval mode or
    ``k >= H`` run plain autograd ops.
    """

    def __init__(self, input_size: int, hidden_size: int, k: Union[int, float] = 0.05,
                 mode: str = "unified", bias: bool = True):
        super().__init__()
        _init_meprop(self, k, mode, n_caches=3)  # caches: weight_ih, weight_hh, bias
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
        self.bias = nn.Parameter(torch.empty(4 * hidden_size)) if bias else None
        # original ids of the hidden units still present (meSimp removes units)
        self.register_buffer("unit_ids", torch.arange(hidden_size))
        bound = 1.0 / hidden_size ** 0.5
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def extra_repr(self):
        return f"{self.input_size}, {self.hidden_size}, k={self.k}, mode={self.mode}"

    @property
    def hidden_size(self) -> int:
        return self.weight_hh.shape[1]

    @property
    def input_size(self) -> int:
        return self.weight_ih.shape[1]

    @property
    def meprop_units(self) -> int:
        """The units of each gate the top-k chooses from."""
        return self.hidden_size

    def expand_state(self, h: torch.Tensor, size: int) -> torch.Tensor:
        """B x hidden_size state -> the original unit space of ``size`` (removed units 0)."""
        if self.hidden_size == size:
            return h
        return h.new_zeros(h.shape[0], size).index_copy(1, self.unit_ids, h)

    def select_state(self, h: torch.Tensor) -> torch.Tensor:
        """State in the original unit space -> this cell's remaining units."""
        if h.shape[1] == self.hidden_size:
            return h
        return h.index_select(1, self.unit_ids)

    @classmethod
    def from_lstm_cell(cls, cell: nn.LSTMCell, k, mode="unified") -> "MePropLSTMCell":
        new = cls(cell.input_size, cell.hidden_size, k=k, mode=mode, bias=cell.bias)
        with torch.no_grad():
            new.weight_ih.copy_(cell.weight_ih)
            new.weight_hh.copy_(cell.weight_hh)
            if cell.bias:
                new.bias.copy_(cell.bias_ih + cell.bias_hh)
        return new

    def forward(self, x, state: Optional[Tuple[torch.Tensor, torch.Tensor]] = None):
        H = self.hidden_size
        if state is None:
            z = x.new_zeros(x.shape[0], H)
            state = (z, z)
        h, c = state
        if self.training and torch.is_grad_enabled() and self.topk_enabled:
            return MePropLSTMCellFunction.apply(x, h, c, self.weight_ih, self.weight_hh, self.bias,
                                                self.k_eff, self.mode, self.stats, self._caches)
        gates = torch.addmm(self.bias, x, self.weight_ih.t()) if self.bias is not None \
            else x @ self.weight_ih.t()
        gates = gates + h @ self.weight_hh.t()
        i, f, g, o = gates.chunk(4, 1)
        c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c_new), c_new


class MePropLSTM(nn.Module):
    """Multi-layer (optionally bidirectional) LSTM of :class:`MePropLSTMCell`.

    Input ``x``: T x B x C (time-major), ``lengths``: B (right-padded
    sequences). Steps beyond a sequence's length keep its state, so the final
    states are those at each sequence's last token (as a packed ``nn.LSTM``).
    Returns ``(outputs T x B x dirs*H, (h_n, c_n))`` with ``h_n`` of shape
    ``layers*dirs x B x H``; padded output positions are 0. States (given and
    returned) live in the original unit space of size ``hidden_size``: units
    removed by meSimp read as 0, so layers of different simplified sizes
    still stack.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bidirectional: bool = False, dropout: float = 0.0,
                 k: Union[int, float] = 0.05, mode: str = "unified"):
        super().__init__()
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bidirectional = bidirectional
        self.dirs = 2 if bidirectional else 1
        self.dropout = nn.Dropout(dropout)
        cells = []
        for layer in range(num_layers):
            in_size = input_size if layer == 0 else hidden_size * self.dirs
            for _ in range(self.dirs):
                cells.append(MePropLSTMCell(in_size, hidden_size, k=k, mode=mode))
        self.cells = nn.ModuleList(cells)

    @classmethod
    def from_lstm(cls, lstm: nn.LSTM, k, mode="unified") -> "MePropLSTM":
        new = cls(lstm.input_size, lstm.hidden_size, lstm.num_layers, lstm.bidirectional,
                  lstm.dropout, k=k, mode=mode)
        with torch.no_grad():
            for layer in range(lstm.num_layers):
                for d in range(new.dirs):
                    sfx = f"_l{layer}" + ("_reverse" if d == 1 else "")
                    cell = new.cells[layer * new.dirs + d]
                    cell.weight_ih.copy_(getattr(lstm, "weight_ih" + sfx))
                    cell.weight_hh.copy_(getattr(lstm, "weight_hh" + sfx))
                    cell.bias.copy_(getattr(lstm, "bias_ih" + sfx) + getattr(lstm, "bias_hh" + sfx))
        return new

    def _run(self, cell, x, mask, h, c, reverse):
        T = x.shape[0]
        outs: List[Optional[torch.Tensor]] = [None] * T
        steps = range(T - 1, -1, -1) if reverse else range(T)
        for t in steps:
            h_new, c_new = cell(x[t], (h, c))
            m = mask[t]
            if m is not None:
                h = torch.where(m, h_new, h)
                c = torch.where(m, c_new, c)
                outs[t] = h_new * m
            else:
                h, c = h_new, c_new
                outs[t] = h_new
        return torch.stack(outs), h, c

    def forward(self, x, lengths: Optional[torch.Tensor] = None, state=None):
        T, B, _ = x.shape
        if lengths is not None and bool((lengths < T).any()):
            mk = (torch.arange(T, device=x.device).unsqueeze(1) < lengths.to(x.device).unsqueeze(0))
            mask = [mk[t].unsqueeze(1) for t in range(T)]
        else:
            mask = [None] * T
        hs, cs = [], []
        inp = x
        for layer in range(self.num_layers):
            outs = []
            for d in range(self.dirs):
                j = layer * self.dirs + d
                cell = self.cells[j]
                if state is not None:
                    h0, c0 = cell.select_state(state[0][j]), cell.select_state(state[1][j])
                else:
                    h0 = c0 = x.new_zeros(B, cell.hidden_size)
                o, h, c = self._run(cell, inp, mask, h0, c0, reverse=(d == 1))
                outs.append(o)
                hs.append(cell.expand_state(h, self.hidden_size))
                cs.append(cell.expand_state(c, self.hidden_size))
            inp = outs[0] if self.dirs == 1 else torch.cat(outs, dim=2)
            if layer < self.num_layers - 1:
                inp = self.dropout(inp)
        return inp, (torch.stack(hs), torch.stack(cs))
