"""meSimp: model simplification from the meProp top-k record (section 2.2, Algorithm 2).

Each prunable hidden layer is a :class:`PruneGroup`: the :class:`TopKStats`
record of the layer producing the units and the parameter slices that hold
them (the layer's rows - all four gates of an LSTM jointly, and its recurrent
columns - plus the next layer's columns). Every ``interval`` updates
:class:`MeSimp` removes the units whose record ``c_i < theta = m * p``, where
``m`` is the number of top-k selections since the last pruning (examples in
per-example mode, backward calls in unified mode) and ``p`` the prune rate,
then clears the record (Algorithm 2, lines 9-14).

Removal is physical: parameters are replaced in place by smaller tensors
(``param.data = param.data[idx]``) so optimizer parameter lists stay valid;
optimizer state tensors of those parameters are sliced the same way.
"""
import logging
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from fairseq_efficiency.errors import PluginConfigError
from fairseq_efficiency.hooks import torch_optimizer
from fairseq_efficiency.meprop.topk import TopKStats

logger = logging.getLogger(__name__)

# (kept unit ids, layer size H, tensor size along the dim) -> indices to keep
IndexFn = Callable[[torch.Tensor, int, int], torch.Tensor]


def units(kept, H, size):
    return kept


def gate_rows(kept, H, size):
    """Rows of the 4 LSTM gates (i, f, g, o) of the kept units."""
    return torch.cat([kept + j * H for j in range(4)])


def offset(fn_offset: Callable[[], int]) -> IndexFn:
    """The layer's units at a (lazily computed) offset inside a concatenated input;
    every other position is kept."""
    def index(kept, H, size):
        start = fn_offset()
        ar = torch.arange(size, device=kept.device)
        return torch.cat([ar[:start], kept + start, ar[start + H:]])
    return index


@dataclass
class Slice:
    module: nn.Module
    name: str  # parameter or buffer name on ``module`` (buffers are replaced via setattr)
    dim: int
    index: IndexFn = units


@dataclass
class PruneGroup:
    """One hidden layer whose units meSimp may remove."""

    name: str
    stats: TopKStats
    slices: List[Slice]
    size: Callable[[], int]
    min_size: int = 1

    def prune(self, kept: torch.Tensor, optimizer=None):
        H = self.size()
        for s in self.slices:
            t = getattr(s.module, s.name)
            idx = s.index(kept.to(t.device), H, t.shape[s.dim])
            old_shape = t.shape
            new = t.data.index_select(s.dim, idx)
            if isinstance(t, nn.Parameter):
                _slice_optimizer_state(optimizer, t, old_shape, s.dim, idx)
                t.data = new
                t.grad = None
            else:
                setattr(s.module, s.name, new)
        self.stats.reset()


def _slice_optimizer_state(optimizer, param, old_shape, dim, idx):
    opt = torch_optimizer(optimizer)
    if opt is None or param not in opt.state:
        return
    st = opt.state[param]
    for key, val in list(st.items()):
        if torch.is_tensor(val) and val.shape == old_shape:
            st[key] = val.index_select(dim, idx.to(val.device))


def reset_optimizer_state(optimizer) -> bool:
    """Cycle training: clear the optimizer's history at a stage start (section 2.2)."""
    opt = torch_optimizer(optimizer)
    if opt is None:
        return False
    opt.state.clear()
    return True


class MeSimp:
    """Algorithm 2 over a list of :class:`PruneGroup`.

    Args:
        groups: the prunable layers.
        interval: updates between pruning actions (``m`` in updates).
        prune_rate: ``p``; a unit survives if it was in the top-k in at least
            ``p`` of the selections since the last pruning.
    """

    def __init__(self, groups: Sequence[PruneGroup], interval: int, prune_rate: float):
        if not groups:
            raise PluginConfigError("meSimp needs a model with meProp layers (none found)")
        if interval <= 0:
            raise PluginConfigError(f"--mesimp-interval must be >= 1 (got {interval})")
        if not (0.0 <= prune_rate <= 1.0):
            raise PluginConfigError(f"--mesimp-prune-rate must lie in [0, 1] (got {prune_rate})")
        self.groups = list(groups)
        self.interval = interval
        self.prune_rate = prune_rate
        self.steps = 0

    def set_recording(self, on: bool):
        for g in self.groups:
            g.stats.enabled = on  # counts are created on the device of the first selection

    def sizes(self) -> Dict[str, int]:
        return {g.name: g.size() for g in self.groups}

    def step(self, optimizer=None) -> Optional[Dict[str, int]]:
        """Count one update; prune when ``interval`` updates have passed."""
        self.steps += 1
        if self.steps % self.interval:
            return None
        return self.simplify(optimizer)

    @torch.no_grad()
    def simplify(self, optimizer=None) -> Dict[str, int]:
        for g in self.groups:
            st = g.stats
            H = g.size()
            if st.counts is None or st.seen == 0 or st.counts.numel() != H:
                st.reset()  # nothing recorded (None counts = all zeros)
                continue
            theta = st.seen * self.prune_rate
            keep = st.counts >= theta
            if int(keep.sum()) < g.min_size:  # never remove a whole layer
                keep = torch.zeros_like(keep)
                keep[st.counts.topk(g.min_size).indices] = True
            kept = keep.nonzero().squeeze(1)
            if kept.numel() < H:
                g.prune(kept, optimizer)
            else:
                st.reset()
        sizes = self.sizes()
        logger.info("meSimp: layer sizes %s", " ".join(f"{k}={v}" for k, v in sizes.items()))
        return sizes

    def state_dict(self):
        return {"steps": self.steps,
                "counts": [None if g.stats.counts is None else g.stats.counts.cpu() for g in self.groups],
                "seen": [g.stats.seen for g in self.groups]}

    def load_state_dict(self, state):
        self.steps = state.get("steps", 0)
        for g, c, s in zip(self.groups, state.get("counts", []), state.get("seen", [])):
            if c is not None and c.numel() == g.size():
                g.stats.counts, g.stats.seen = c.clone(), s


def resize_to_state_dict(model: nn.Module, state_dict, names: Sequence[str]) -> List[str]:
    """Give ``model``'s tensors named in ``names`` the shapes found in ``state_dict``.

    Used when loading a checkpoint of a simplified model: the model is built
    at its configured size and takes the shrunken shapes before the values
    are copied. Returns the names that were resized.
    """
    resized = []
    for name in names:
        if name not in state_dict:
            continue
        mod_name, _, attr = name.rpartition(".")
        mod = model.get_submodule(mod_name) if mod_name else model
        t = getattr(mod, attr)
        shape = state_dict[name].shape
        if t.shape == shape:
            continue
        if isinstance(t, nn.Parameter):
            t.data = t.data.new_empty(shape)
        else:
            setattr(mod, attr, t.new_empty(shape))
        resized.append(name)
    return resized


def group_tensor_names(model: nn.Module, groups: Sequence[PruneGroup]) -> List[str]:
    """Fully qualified names of every tensor meSimp may shrink."""
    ids = {}
    for mname, mod in model.named_modules():
        ids[id(mod)] = mname
    names = []
    for g in groups:
        for s in g.slices:
            prefix = ids[id(s.module)]
            names.append(f"{prefix}.{s.name}" if prefix else s.name)
    return sorted(set(names))


def linear_group(name: str, layer, next_layers: Sequence[nn.Linear]) -> PruneGroup:
    """A TopKLinear's output units: its rows (and bias) and the next layers' columns."""
    slices = [Slice(layer, "weight", 0)]
    if layer.bias is not None:
        slices.append(Slice(layer, "bias", 0))
    slices += [Slice(nl, "weight", 1) for nl in next_layers]
    return PruneGroup(name, layer.stats, slices, size=lambda: layer.weight.shape[0])


def lstm_cell_group(name: str, cell, consumers: Sequence[Slice]) -> PruneGroup:
    """An LSTM cell's hidden units, removed from all four gates jointly (section 2.3.2)."""
    slices = [Slice(cell, "weight_ih", 0, gate_rows), Slice(cell, "weight_hh", 0, gate_rows),
              Slice(cell, "weight_hh", 1, units)]
    if cell.bias is not None:
        slices.append(Slice(cell, "bias", 0, gate_rows))
    slices += list(consumers)
    slices.append(Slice(cell, "unit_ids", 0, units))  # buffer of original unit ids
    return PruneGroup(name, cell.stats, slices, size=lambda: cell.hidden_size)
