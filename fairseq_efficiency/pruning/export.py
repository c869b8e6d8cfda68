"""Compact checkpoints of pruned models (See et al. 2016, section 4.4).

A sparse export is an ordinary fairseq checkpoint (``cfg``, ``model``, ...)
in which each mostly-zero floating-point tensor is pickled as a call
``densify(shape, bits, values)``: a bitmask of the surviving positions (1 bit
per weight) and the surviving values in row-major order. ``torch.load``
rebuilds the dense tensor while unpickling, so fairseq (``fairseq-generate``,
``fairseq-interactive``, ``checkpoint_utils.load_model_ensemble``) loads the
file unchanged once the plugin is imported (``--user-dir``): importing it
allow-lists :func:`densify` for torch's ``weights_only`` unpickler. Without the
plugin, ``torch.load`` stops with "Unsupported global ... densify" instead of
running unknown code.

A bitmask costs 1/32 of a float32 weight, so storing ``d`` of the values takes
``d + 1/32`` of the dense size: it pays off for density below ~97%; a CSR
layout (int32 column index per value) would cost ``2d``, more than the bitmask
above ~3% density.
"""
import io
import math
from collections import OrderedDict

import torch

from fairseq_efficiency.checkpoint_state import strip_hook_states
from fairseq_efficiency.pruning.masks import pack_bits, unpack_bits

MAX_DENSITY = 0.9  # store tensors denser than this as they are


MAX_DIMS = 16


def densify(shape, bits, values):
    """Rebuild a dense tensor from :func:`sparsify`'s bitmask and values.

    The arguments come from a file: the shape is checked against the stored
    bitmask (``ceil(numel / 8)`` bytes) and the number of set bits against the
    stored values before anything of the shape's size is allocated, so the
    dense tensor is at most 8 x 4 bytes per byte of bitmask.
    """
    if not isinstance(shape, (tuple, list)) or len(shape) > MAX_DIMS or any(
            isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in shape):
        raise ValueError(f"sparse tensor: invalid shape {str(shape)[:80]}")
    numel = math.prod(shape)
    if not torch.is_tensor(bits) or bits.dtype != torch.uint8 or bits.dim() != 1:
        raise ValueError(f"sparse tensor of shape {tuple(shape)}: the bitmask must be a 1-D "
                         "uint8 tensor")
    if bits.numel() != (numel + 7) // 8:
        raise ValueError(f"sparse tensor of shape {tuple(shape)}: bitmask of {bits.numel()} "
                         f"bytes, the shape needs {(numel + 7) // 8}")
    if not torch.is_tensor(values) or not values.is_floating_point() or values.dim() != 1:
        raise ValueError(f"sparse tensor of shape {tuple(shape)}: values must be a 1-D "
                         "floating-point tensor")
    keep = unpack_bits(bits, numel)
    if int(keep.sum()) != values.numel():
        raise ValueError(f"sparse tensor of shape {tuple(shape)}: {int(keep.sum())} positions "
                         f"set in the bitmask but {values.numel()} values stored")
    out = values.new_zeros(numel)
    out[keep] = values
    return out.view(tuple(shape))


class SparseTensor:
    """A tensor stored as bitmask + values; unpickles into the dense tensor."""

    def __init__(self, tensor: torch.Tensor):
        flat = tensor.detach().reshape(-1)
        keep = flat != 0
        self.shape = tuple(tensor.shape)
        self.bits = pack_bits(keep)
        self.values = flat[keep].clone()

    def __reduce__(self):
        return densify, (self.shape, self.bits, self.values)


def sparsify_state(model_state, max_density=MAX_DENSITY):
    """Model state dict with sparse-enough float tensors replaced by :class:`SparseTensor`.

    Tensors sharing storage (tied embeddings) become one object, which pickle
    stores once and which loads back as one tensor.
    """
    out, seen = OrderedDict(), {}
    for k, t in model_state.items():
        if not torch.is_tensor(t) or not t.is_floating_point() or t.numel() < 64:
            out[k] = t
            continue
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)
        if key in seen:
            out[k] = seen[key]
            continue
        density = float((t != 0).sum()) / t.numel()
        out[k] = SparseTensor(t) if density <= max_density else t
        seen[key] = out[k]
    return out


def export_state(state, max_density=MAX_DENSITY):
    """A fairseq checkpoint dict for inference: sparse model, no optimizer state."""
    from fairseq_efficiency.pruning.checkpoint import plain_cfg

    state = plain_cfg(state)
    extra = strip_hook_states(state.get("extra_state"))  # pruning masks are implied by the zeros
    out = {k: v for k, v in state.items() if k not in ("model", "last_optimizer_state", "extra_state")}
    out["model"] = sparsify_state(state["model"], max_density)
    out["extra_state"] = extra
    out["last_optimizer_state"] = None
    return out


def saved_size(obj) -> int:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.tell()


def _install():
    add = getattr(torch.serialization, "add_safe_globals", None)
    if add is not None:
        add([densify])


_install()
