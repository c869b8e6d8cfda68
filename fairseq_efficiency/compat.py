"""torch/fairseq version shims, installed when the plugin is imported.

Checkpoint loading on torch >= 2.6
----------------------------------
``torch.load`` defaults to ``weights_only=True`` since torch 2.6, and fairseq
0.12 calls it without that argument, so ``fairseq-generate`` and
``fairseq-interactive`` refuse fairseq checkpoints: they pickle a few
non-tensor Python objects (an ``argparse.Namespace`` in older checkpoints,
numpy scalars and dtypes in meters and "best" values). Rather than turning the
guard off (``weights_only=False`` would let a checkpoint run arbitrary code),
the plugin allow-lists exactly those types with
``torch.serialization.add_safe_globals``; anything else still fails loudly.

Data-parallel resume: rank 0 reads the checkpoint file (under the guard above),
turns its config into an omegaconf ``DictConfig`` and sends the whole state to
the other ranks with ``torch.save``/``torch.load`` over the process group
(``fairseq.distributed.utils._broadcast_object_slow``). Those bytes are the
job's own in-memory objects from a peer rank, not a file, so the receiving side
unpickles them with ``weights_only=False``; without that every rank > 0 fails to
resume on torch >= 2.6.
"""
import argparse
import collections
import io

import numpy as np
import torch

_INSTALLED = False


def checkpoint_safe_globals():
    """The non-tensor types found in fairseq (and plugin) checkpoints."""
    types = [
        argparse.Namespace,
        collections.OrderedDict,
        collections.defaultdict,
        np.dtype,
        np.ndarray,
    ]
    try:
        from numpy._core.multiarray import _reconstruct, scalar
        types += [scalar, _reconstruct]
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct, scalar
        types += [scalar, _reconstruct]
    # numpy >= 1.25 pickles dtypes by their concrete class (np.dtypes.Float64DType, ...)
    if hasattr(np, "dtypes"):
        types += [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]
    return [t for t in types if t is not None]


def _broadcast_object_slow(obj, src_rank, group, dist_device):
    """fairseq's object broadcast; receivers unpickle the peer's bytes without the file guard."""
    from fairseq.distributed.utils import broadcast, get_rank

    if get_rank(group) == src_rank:
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        data = torch.ByteTensor(buffer.getbuffer()).to(dist_device)
        broadcast(torch.LongTensor([len(data)]).to(dist_device), src=src_rank, group=group)
        broadcast(data, src=src_rank, group=group)
        return obj
    length = torch.LongTensor([0]).to(dist_device)
    broadcast(length, src=src_rank, group=group)
    data = torch.ByteTensor(int(length.item())).to(dist_device)
    broadcast(data, src=src_rank, group=group)
    return torch.load(io.BytesIO(data.cpu().numpy()), map_location="cpu", weights_only=False)


def install():
    """Idempotently install every shim."""
    global _INSTALLED
    if _INSTALLED:
        return
    add = getattr(torch.serialization, "add_safe_globals", None)
    if add is not None:  # torch >= 2.4
        add(checkpoint_safe_globals())
        from fairseq.distributed import utils as dist_utils

        if hasattr(dist_utils, "_broadcast_object_slow"):
            dist_utils._broadcast_object_slow = _broadcast_object_slow
    _INSTALLED = True
