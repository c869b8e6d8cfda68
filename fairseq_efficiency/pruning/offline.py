"""Offline pruning of a trained checkpoint (See et al. 2016, sec. 3.3), ready to retrain.

The pruned checkpoint is an ordinary fairseq checkpoint whose pruned weights are zeros
and whose masks sit where the ``translation_efficiency`` task restores the pruning
hook's state (:mod:`fairseq_efficiency.checkpoint_state`), so ``fairseq-generate`` reads
it as is and ``fairseq-train --restore-file`` retrains it with the masks kept (sec. 3.4).
"""
import os
from collections import OrderedDict

import torch

from fairseq_efficiency import checkpoint_state
from fairseq_efficiency.pruning.checkpoint import (PruneError, atomic_save, build_from_checkpoint,
                                                   trained_updates)
from fairseq_efficiency.pruning.classes import class_tensors
from fairseq_efficiency.pruning.hook import PruningHook, hook_state, hook_state_from_checkpoint
from fairseq_efficiency.pruning.masks import MaskSet
from fairseq_efficiency.pruning.schemes import check_ratio, check_scheme, compute_masks


def prune_model(model, scheme, ratio, include=(), exclude=(), split_lstm=False,
                max_class_ratio=1.0):
    """``(classes, PruneResult, MaskSet)``; the model's pruned weights are zeroed."""
    tensors = class_tensors(model, include, exclude, split_lstm)
    res = compute_masks(tensors, scheme, ratio, max_class_ratio=max_class_ratio)
    masks = MaskSet(res.masks)
    masks.apply_(model)
    return OrderedDict((c, list(ts)) for c, ts in tensors.items()), res, masks


def attach_masks(state, masks: MaskSet, scheme, fresh_start=True):
    """Put ``masks`` where the ``translation_efficiency`` task restores hook state from.

    With ``fresh_start`` the training iterator is reset to the start of epoch 1
    and the "best" value dropped: ``fairseq-train --restore-file`` then retrains
    the pruned model as a new phase and hands the masks to the pruning hook
    (whatever ``--reset-*`` flags are given; ``--prune-drop-masks`` drops them).
    """
    checkpoint_state.set_hook_states(state, {PruningHook.name: hook_state(
        masks, scheme, trained_updates=trained_updates(state))})
    if fresh_start:
        extra = state["extra_state"]
        extra["train_iterator"] = {"epoch": 1, "iterations_in_epoch": 0, "shuffle": True,
                                   "version": 2}
        extra.pop("best", None)
    return state


def check_masks_hold(state, path):
    """Refuse a checkpoint whose stored pruning masks no longer match its weights.

    Weights at masked positions that are non-zero again were trained without the
    masks (e.g. fine-tuned by a version that lost them): treating the file as
    pruned would export or re-prune a model that is no longer sparse.
    """
    hs = hook_state_from_checkpoint(state)
    if hs is None:
        return
    masks = MaskSet.from_state_dict(hs["masks"])
    revived = pruned = 0
    for n, keep in masks.masks.items():
        w = state["model"].get(n)
        if w is None or tuple(w.shape) != tuple(keep.shape):
            raise PruneError(f"{path}: its pruning mask for {n} matches no weight of the model")
        pruned += int((~keep).sum())
        revived += int(torch.count_nonzero(w[~keep]))
    if revived:
        raise PruneError(f"{path}: {revived} of its {pruned} pruned weights are non-zero again "
                         "(trained without its masks); prune the checkpoint it was "
                         "fine-tuned from, or retrain it with --prune-drop-masks to drop them")


def prune_checkpoint(path, out_path, scheme, ratio, include=(), exclude=(), split_lstm=False,
                     data=None, max_class_ratio=1.0):
    """Prune a checkpoint offline; returns ``(classes, PruneResult, MaskSet)``."""
    check_scheme(scheme)
    check_ratio(ratio)
    if os.path.abspath(path) == os.path.abspath(out_path):
        raise PruneError(f"refusing to overwrite the input checkpoint {path}; choose another -o")
    state, task, model = build_from_checkpoint(path, data)
    check_masks_hold(state, path)
    classes, res, masks = prune_model(model, scheme, ratio, include, exclude, split_lstm,
                                      max_class_ratio)
    pruned = model.state_dict()
    state["model"] = OrderedDict((k, pruned[k]) for k in state["model"])
    attach_masks(state, masks, scheme)
    atomic_save(state, out_path, inputs=[path])
    return classes, res, masks
