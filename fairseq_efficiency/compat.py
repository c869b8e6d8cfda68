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
"""
import argparse
import collections

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


def install():
    """Idempotently install every shim."""
    global _INSTALLED
    if _INSTALLED:
        return
    add = getattr(torch.serialization, "add_safe_globals", None)
    if add is not None:  # torch >= 2.4
        add(checkpoint_safe_globals())
    _INSTALLED = True
