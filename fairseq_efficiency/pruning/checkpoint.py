"""Reading, building and writing the fairseq checkpoints of the pruning tools.

One-line :class:`PruneError` for every file a user names that cannot serve; writes
go through a temporary file, so a failure leaves nothing behind and an input is never
overwritten.
"""
import os
import tempfile

import torch


class PruneError(Exception):
    """A one-line user-facing error of the pruning tools."""


def read_checkpoint(path, arg_overrides=None):
    from fairseq import checkpoint_utils

    from fairseq_efficiency.compat import is_refusal, load_error_detail
    from fairseq_efficiency.errors import CheckpointError

    if not os.path.isfile(path):
        raise PruneError(f"checkpoint {path} does not exist")
    try:
        state = checkpoint_utils.load_checkpoint_to_cpu(path, arg_overrides=arg_overrides)
    except CheckpointError as e:  # config holding code: already names the file
        raise PruneError(str(e)) from e
    except Exception as e:  # noqa: BLE001  (unpickling errors of all kinds)
        if is_refusal(e):
            raise PruneError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from e
        raise PruneError(f"{path} is not a readable checkpoint (truncated, or not written by "
                         f"torch.save): {load_error_detail(e)}") from e
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise PruneError(f"{path} is not a fairseq checkpoint (no 'model' state)")
    return state


def check_finite(state, path):
    """Refuse weights holding NaN/Inf: pruning thresholds and exports of them are meaningless."""
    bad = [k for k, t in state["model"].items()
           if torch.is_tensor(t) and t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise PruneError(f"checkpoint {path} holds NaN/Inf weights in {len(bad)} tensor(s) "
                         f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); refusing to "
                         "use it")


def build_from_checkpoint(path, data=None):
    """``(state, task, model)``: the checkpoint's model built from its own cfg, weights loaded."""
    from fairseq import tasks  # the plugin's tasks and models: registered by importing it

    state = read_checkpoint(path, {"data": data} if data else None)
    check_finite(state, path)
    cfg = state.get("cfg")
    if cfg is None:
        raise PruneError(f"cannot build the model of {path}: the checkpoint has no 'cfg' "
                         "(written by fairseq < 0.10?)")
    try:
        task = tasks.setup_task(cfg.task)
        model = task.build_model(cfg.model, from_checkpoint=True)
        model.load_state_dict(state["model"], strict=True, model_cfg=cfg.model)
    except Exception as e:  # noqa: BLE001
        msg = " ".join(str(e).split())  # one line
        msg = msg if len(msg) <= 300 else msg[:297] + "..."
        raise PruneError(f"cannot build the model of {path}: {type(e).__name__}: {msg}") from e
    model.eval()
    return state, task, model


def trained_updates(state):
    """Updates the checkpoint's training ran (the retraining budget's reference), or None."""
    history = state.get("optimizer_history") or []
    n = history[-1].get("num_updates") if history and isinstance(history[-1], dict) else None
    return int(n) if isinstance(n, int) and n > 0 else None


def plain_cfg(state):
    """fairseq saves ``cfg`` as plain containers (``load_checkpoint_to_cpu`` returns a DictConfig)."""
    from omegaconf import OmegaConf

    cfg = state.get("cfg")
    if cfg is not None and OmegaConf.is_config(cfg):
        state = dict(state)
        state["cfg"] = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    return state


def atomic_save(obj, out_path, inputs=()):
    """``torch.save`` to ``out_path`` through a temporary file (nothing left on failure)."""
    obj = plain_cfg(obj)
    out_abs = os.path.abspath(out_path)
    for p in inputs:
        if os.path.abspath(p) == out_abs or (os.path.exists(out_path) and os.path.samefile(p, out_path)):
            raise PruneError(f"refusing to overwrite the input checkpoint {p}; choose another -o")
    d = os.path.dirname(out_abs)
    if not os.path.isdir(d):
        raise PruneError(f"output directory {d} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=d)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, out_abs)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return out_abs
