"""The ``fairseq-train`` command that retrains a pruned checkpoint with its original settings.

A fairseq checkpoint stores the configuration of the run that wrote it (``cfg``). The
options of that run that differ from fairseq's defaults (data, architecture, optimizer,
learning rate, batch size, ...) are turned back into ``fairseq-train`` flags, so that
``fairseq-efficiency-prune CKPT -o pruned.pt --retrain`` retrains without restating them.
Left out: where the run saved and restored checkpoints, its length, its distributed
setup, its log destinations and its pruning flags; the retraining recipe sets its own.
"""
import argparse
import os
import sys
from enum import Enum
from typing import List, Sequence

# options of the original run that must not carry over to the retraining run
_SKIP = {
    "data", "user_dir", "task", "arch", "optimizer", "lr_scheduler", "criterion",
    "save_dir", "restore_file", "reset_optimizer", "reset_lr_scheduler", "reset_meters",
    "reset_dataloader", "finetune_from_model", "continue_once", "max_update", "max_epoch",
    "tensorboard_logdir", "wandb_project", "azureml_logging", "aim_repo", "aim_run_hash",
    "log_file",
}
_GROUPS = ("common", "common_eval", "dataset", "optimization", "checkpoint", "bmuf", "task",
           "criterion", "optimizer", "lr_scheduler", "bpe", "tokenizer", "ema", "model")
RETRAIN_TASKS = ("translation", "translation_efficiency")


def _plain(v):
    if isinstance(v, Enum):
        return v.value
    if hasattr(v, "__len__") and not isinstance(v, (str, bytes, dict)):
        try:
            return [_plain(x) for x in v]
        except TypeError:
            return v
    return v


def _items(group):
    if group is None:
        return []
    if isinstance(group, argparse.Namespace):
        return list(vars(group).items())
    if hasattr(group, "items"):
        return list(group.items())
    return []


def flatten_cfg(cfg) -> dict:
    """``dest -> value`` over the config groups (first group wins; the values of a key
    present in several groups come from the same command-line flag)."""
    flat = {}
    skip_groups = set()
    dist = cfg.get("distributed_training") if hasattr(cfg, "get") else None
    skip_groups.update(k for k, _ in _items(dist))
    for g in _GROUPS:
        for k, v in _items(cfg.get(g) if hasattr(cfg, "get") else getattr(cfg, g, None)):
            if k.startswith("_") or k in flat:
                continue
            flat[k] = _plain(v)
    for k in skip_groups:
        flat.pop(k, None)
    return flat


def _name(cfg, group, default=None):
    g = cfg.get(group) if hasattr(cfg, "get") else None
    if g is None:
        return default
    if isinstance(g, argparse.Namespace):
        return getattr(g, "arch", default) if group == "model" else default
    return g.get("_name", default) or default


def _parse(argv):
    from fairseq import options

    parser = options.get_training_parser()
    return parser, options.parse_args_and_arch(parser, list(argv))


def _render(action, value) -> List[str]:
    flag = action.option_strings[0]
    if isinstance(action, argparse._StoreTrueAction):
        return [flag] if value is True else []
    if isinstance(action, argparse._StoreFalseAction):
        return [flag] if value is False else []
    if type(action) is not argparse._StoreAction or value is None:
        return []
    if action.nargs in ("+", "*") or isinstance(action.nargs, int):
        return [flag] + [str(x) for x in (value if isinstance(value, list) else [value])]
    if isinstance(value, list):
        return [flag, ",".join(str(x) for x in value)]
    return [flag, str(value)]


def original_train_args(cfg, data=None) -> List[str]:
    """``[data, flags...]``: the checkpoint run's non-default ``fairseq-train`` options,
    with the ``translation_efficiency`` task and this plugin's ``--user-dir``."""
    task = _name(cfg, "task")
    if task not in RETRAIN_TASKS:
        raise ValueError(f"cannot retrain a checkpoint of task {task!r}: only "
                         f"{', '.join(RETRAIN_TASKS)} runs can be retrained with the masks kept")
    flat = flatten_cfg(cfg)
    data = data or flat.get("data")
    if not data:
        raise ValueError("the checkpoint does not name its data; give --data")
    user_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    base = [str(data), "--user-dir", user_dir, "--task", "translation_efficiency",
            "--arch", _name(cfg, "model")]
    for group, flag in (("optimizer", "--optimizer"), ("lr_scheduler", "--lr-scheduler"),
                        ("criterion", "--criterion")):
        name = _name(cfg, group)
        if name:
            base += [flag, name]
    parser, defaults = _parse(base)
    rendered = {}
    for action in parser._actions:
        dest = action.dest
        if not action.option_strings or dest in _SKIP or dest.startswith("prune_") \
                or dest not in flat or not hasattr(defaults, dest):
            continue
        value, default = flat[dest], _plain(getattr(defaults, dest))
        if value == default:
            continue
        if dest.endswith("_valid") and value == flat.get(dest[:-len("_valid")]):
            continue  # fairseq copies --max-tokens/--batch-size into their *_valid twins
        tokens = _render(action, value)
        if tokens:
            rendered[dest] = tokens
    # a value the architecture derives from others (e.g. --decoder-output-dim from the
    # embedding size) is left to it when the command parses back to it without the flag
    _, parsed = _parse(base + [t for ts in rendered.values() for t in ts])
    derived = [d for d in rendered if _plain(getattr(parsed, d, None)) != flat[d]]
    if derived:
        trial = {d: ts for d, ts in rendered.items() if d not in derived}
        _, parsed = _parse(base + [t for ts in trial.values() for t in ts])
        for d in derived:
            if _plain(getattr(parsed, d, None)) != flat[d]:
                trial[d] = rendered[d]
        rendered = trial
    return base + [t for ts in rendered.values() for t in ts]


def retrain_command(cfg, pruned_path: str, save_dir: str, budget: int, fraction: float,
                    extra: Sequence[str] = (), data=None) -> List[str]:
    """``python -m fairseq_cli.train ...`` retraining ``pruned_path`` for ``budget`` updates
    with the recipe of :mod:`.retrain` (``extra`` flags last, so they win)."""
    args = original_train_args(cfg, data)
    args += ["--restore-file", os.path.abspath(pruned_path), "--reset-optimizer",
             "--reset-lr-scheduler", "--reset-meters", "--save-dir", save_dir,
             "--max-epoch", "0", "--max-update", str(budget),
             "--prune-retrain-fraction", repr(float(fraction))]
    return [sys.executable, "-m", "fairseq_cli.train"] + args + list(extra)


def display(cmd: Sequence[str]) -> str:
    """The command as a user would type it."""
    import shlex

    if list(cmd[:3]) == [sys.executable, "-m", "fairseq_cli.train"]:
        cmd = ["fairseq-train"] + list(cmd[3:])
    return " ".join(shlex.quote(str(c)) for c in cmd)


def plan_retrain(state, pruned_path: str, save_dir: str, fraction: float,
                 extra: Sequence[str] = (), data=None):
    """``(command, budget)`` retraining the pruned copy of checkpoint ``state`` for
    ``fraction`` of the updates ``state`` was trained (See et al. 2016, sec. 3.4)."""
    from fairseq_efficiency.pruning.checkpoint import trained_updates
    from fairseq_efficiency.pruning.retrain import Retraining

    if not fraction > 0:
        raise ValueError(f"--retrain-fraction must be > 0, got {fraction}")
    if state.get("cfg") is None:
        raise ValueError("the checkpoint has no 'cfg' to take the training options from")
    recipe = Retraining(fraction)
    recipe.trained_updates = trained_updates(state)
    if recipe.trained_updates is None:
        raise ValueError("the checkpoint does not record how many updates it was trained, so "
                         "--retrain-fraction has nothing to take a fraction of")
    budget = recipe.budget()
    save_dir = os.path.abspath(save_dir)
    if os.path.isdir(save_dir) and any(f.startswith("checkpoint") and f.endswith(".pt")
                                       for f in os.listdir(save_dir)):
        raise ValueError(f"{save_dir} already holds checkpoints; choose another --retrain-dir")
    return retrain_command(state["cfg"], pruned_path, save_dir, budget, fraction, extra,
                           data), budget
