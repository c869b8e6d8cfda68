"""Where the ``translation_efficiency`` task keeps its hooks' state inside a fairseq checkpoint.

This module alone knows the layout; the task, the offline tools and the sparse
export go through it. fairseq's task checkpoint API stores what
``get_checkpoint_dict`` returns in the checkpoint's ``extra_state``::

    state["extra_state"]["TranslationEfficiencyTask"]["hooks"][hook.name] = hook.state_dict()

and hands ``extra_state["TranslationEfficiencyTask"]`` back to
``set_checkpoint_dict`` on resume (unless ``--reset-dataloader``: see
:func:`restore_path` for how the task then reads the restore file itself).
The key stays fixed for subclasses of the task, so offline tools find the
state; fairseq itself hands it back only to a task of that class name, and a
subclass gets the state that outlives every ``--reset-*`` flag (pruning masks)
through the task's own reading.
"""
import os
import pickle
from typing import Any, Dict, Mapping, Optional

import torch

from fairseq_efficiency.errors import PluginConfigError

TASK_KEY = "TranslationEfficiencyTask"  # the host task's class name, fairseq's key for its state
HOOKS = "hooks"


class CheckpointStateError(PluginConfigError):
    """A checkpoint named by the user cannot provide the state asked of it (one-line message)."""


def _extra_state(ckpt_or_extra: Mapping) -> Mapping:
    """The ``extra_state`` of a whole checkpoint dict, or the argument when it is one already."""
    if "extra_state" in ckpt_or_extra or "model" in ckpt_or_extra:
        return ckpt_or_extra.get("extra_state") or {}
    return ckpt_or_extra


def hook_states(ckpt_or_extra: Optional[Mapping]) -> Dict[str, Any]:
    """Hook name -> saved state, from a checkpoint dict or its ``extra_state`` (empty if none)."""
    if not ckpt_or_extra:
        return {}
    task_state = _extra_state(ckpt_or_extra).get(TASK_KEY)
    return task_state_hooks(task_state)


def task_state_hooks(task_state: Optional[Mapping]) -> Dict[str, Any]:
    """Hook states inside what fairseq passes to ``set_checkpoint_dict``."""
    hooks = (task_state or {}).get(HOOKS) if isinstance(task_state, Mapping) else None
    return dict(hooks) if isinstance(hooks, Mapping) else {}


def task_checkpoint_dict(states: Mapping[str, Any]) -> Dict[str, Any]:
    """What the task's ``get_checkpoint_dict`` returns for these hook states."""
    return {TASK_KEY: {HOOKS: dict(states)}}


def set_hook_states(ckpt: dict, states: Mapping[str, Any]) -> dict:
    """Store ``states`` (name -> state, replacing those names) in the checkpoint dict ``ckpt``."""
    extra = dict(ckpt.get("extra_state") or {})
    task_state = dict(extra.get(TASK_KEY) or {})
    hooks = dict(task_state.get(HOOKS) or {})
    hooks.update(states)
    task_state[HOOKS] = hooks
    extra[TASK_KEY] = task_state
    ckpt["extra_state"] = extra
    return ckpt


def strip_hook_states(extra_state: Mapping) -> dict:
    """A copy of ``extra_state`` without the task's hook states (e.g. for inference exports)."""
    return {k: v for k, v in (extra_state or {}).items() if k != TASK_KEY}


def read_hook_states(path: str) -> Dict[str, Any]:
    """Hook states of the checkpoint file ``path``, read under torch's weights-only guard.

    Zip-format checkpoints are memory-mapped, so the model and optimizer tensors
    are not read from disk.
    """
    if not os.path.isfile(path):
        raise CheckpointStateError(f"checkpoint {path} does not exist")
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)  # legacy format
    except pickle.UnpicklingError as e:
        if "global" not in str(e).lower():  # a malformed pickle, not a refused object
            raise CheckpointStateError(f"{path} is not a readable fairseq checkpoint") from e
        raise CheckpointStateError(f"{path} was refused by torch's weights-only loader (it "
                                   "holds objects other than tensors and plain data)") from e
    except Exception as e:  # noqa: BLE001  (truncated or foreign files)
        msg = " ".join(str(e).split())[:120]
        raise CheckpointStateError(f"{path} is not a readable fairseq checkpoint "
                                   f"({type(e).__name__}: {msg})") from e
    if not isinstance(state, Mapping):
        raise CheckpointStateError(f"{path} is not a fairseq checkpoint (no state dict)")
    return hook_states(state)


def restore_path(checkpoint_cfg) -> Optional[str]:
    """The file ``fairseq-train`` restores from, resolved as ``checkpoint_utils.load_checkpoint``
    does: ``--restore-file`` as given, except the default ``checkpoint_last.pt``, which means
    ``SAVE_DIR/checkpoint_last{suffix}.pt`` (or ``--continue-once`` /
    ``--finetune-from-model`` when that file does not exist yet). None without a config."""
    if checkpoint_cfg is None:
        return None
    restore = getattr(checkpoint_cfg, "restore_file", None)
    if not restore:
        return None
    suffix = getattr(checkpoint_cfg, "checkpoint_suffix", "") or ""
    if restore == "checkpoint_last.pt":
        path = os.path.join(getattr(checkpoint_cfg, "save_dir", "checkpoints"),
                            f"checkpoint_last{suffix}.pt")
        if not os.path.exists(path):
            for fallback in ("continue_once", "finetune_from_model"):
                other = getattr(checkpoint_cfg, fallback, None)
                if other:
                    return other
        return path
    return restore.replace(".pt", suffix + ".pt") if suffix else restore


def run_checkpoint_cfg(task_cfg):
    """The ``checkpoint`` group of the run's fairseq config, or None.

    fairseq keeps the whole config as the parent of the task's config
    (``merge_with_parent``), as its ``II("dataset.train_subset")`` style
    interpolations need; a task built from a bare dataclass has none.
    """
    get_parent = getattr(task_cfg, "_get_parent", None)
    root = get_parent() if callable(get_parent) else None
    try:
        return root.checkpoint if root is not None and "checkpoint" in root else None
    except Exception:  # noqa: BLE001  (not a fairseq config)
        return None
