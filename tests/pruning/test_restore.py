"""Pruning masks of a restored checkpoint survive every ``--reset-*`` flag; only
``--prune-drop-masks`` drops them; tools refuse checkpoints whose masks no longer hold."""
import logging
import os

import pytest
import torch
from fairseq import checkpoint_utils, options, tasks
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq.trainer import Trainer

import fairseq_efficiency  # noqa: F401  (allow-lists checkpoint types)
from fairseq_efficiency import checkpoint_state
from fairseq_efficiency.hooks import EfficiencyHook
from fairseq_efficiency.pruning.offline import prune_checkpoint
from fairseq_efficiency.pruning.hook import MaskSourceError, hook_state_from_checkpoint
from fairseq_efficiency.pruning.masks import MaskSet
from tests.helpers import assert_one_line_error, run_cli, train_args

TASK = ["--task", "translation_efficiency"]
FLAGS = ["--reset-optimizer", "--reset-dataloader", "--reset-meters", "--reset-lr-scheduler"]
COMBOS = [tuple(f for i, f in enumerate(FLAGS) if k >> i & 1) for k in range(16)]
REPRESENTATIVE = {(), ("--reset-dataloader",), tuple(FLAGS)}


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def revived(model_state, masks):
    """Masked positions that are non-zero."""
    return sum(int(torch.count_nonzero(model_state[n][~m])) for n, m in masks.masks.items())


@pytest.fixture(scope="module")
def pruned(tiny_data_bin, tmp_path_factory):
    """A trained checkpoint pruned 80% class-blind offline: ``(path, masks, dense path)``."""
    d = tmp_path_factory.mktemp("pruned")
    run_cli("fairseq_cli.train", train_args(tiny_data_bin, d / "base", *TASK, "--max-update", "6",
                                            "--no-epoch-checkpoints"))
    base = str(d / "base" / "checkpoint_last.pt")
    out = str(d / "p80.pt")
    prune_checkpoint(base, out, "class-blind", 0.8)
    masks = MaskSet.from_state_dict(hook_state_from_checkpoint(load(out))["masks"])
    return out, masks, base


def build(data_bin, save_dir, *extra):
    """An in-process trainer set up as fairseq-train sets it up."""
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, train_args(data_bin, save_dir, *TASK, *extra))
    cfg = convert_namespace_to_omegaconf(args)
    torch.manual_seed(1)
    task = tasks.setup_task(cfg.task)
    model = task.build_model(cfg.model)
    return cfg, task, Trainer(cfg, task, model, task.build_criterion(cfg.criterion))


def fine_tune(cfg, trainer, updates=3):
    """What fairseq-train does: load the restore file, start the epoch, train."""
    _, epoch_itr = checkpoint_utils.load_checkpoint(cfg.checkpoint, trainer)
    trainer.begin_epoch(epoch_itr.epoch)
    itr = epoch_itr.next_epoch_itr(shuffle=True)
    for _, sample in zip(range(updates), itr):
        trainer.train_step([sample])
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters()}


@pytest.mark.parametrize("flags", [
    pytest.param(c, id="+".join(f[8:] for f in c) or "none",
                 marks=() if c in REPRESENTATIVE else pytest.mark.slow) for c in COMBOS])
def test_masks_kept_whatever_reset_flags(pruned, tiny_data_bin, tmp_path, caplog, flags):
    path, masks, _ = pruned
    cfg, _, trainer = build(tiny_data_bin, tmp_path, "--restore-file", path, *flags)
    with caplog.at_level(logging.INFO, logger="fairseq_efficiency"):
        weights = fine_tune(cfg, trainer)
    assert (f"restored pruning masks from {path}: {len(masks)} tensors, sparsity "
            f"{masks.sparsity():.4f}") in caplog.text
    assert revived(weights, masks) == 0
    start = load(path)["model"]
    assert any(not torch.equal(weights[n], start[n]) for n in masks.masks)  # it did train


class Counter(EfficiencyHook):
    """State that follows the data iterator (no ``restores=``), as AutoAssist's does."""

    name = "counter"

    def __init__(self):
        self.steps = 0

    def state_dict(self):
        return {"steps": self.steps}

    def load_state_dict(self, state):
        self.steps = state["steps"]


@pytest.mark.parametrize("flags", [(), ("--reset-dataloader",)])
def test_only_restores_state_outlives_reset_dataloader(pruned, tiny_data_bin, tmp_path, caplog,
                                                       flags):
    """A checkpoint in the layout the task has always written (built here by hand)."""
    path, masks, base = pruned
    state = load(base)
    state["extra_state"]["TranslationEfficiencyTask"] = {"hooks": {
        "counter": {"steps": 7},
        "pruning": {"version": 1, "masks": masks.state_dict(), "events_done": 0,
                    "scheme": "class-blind"}}}
    old = str(tmp_path / "old-layout.pt")
    torch.save(state, old)
    cfg, task, trainer = build(tiny_data_bin, tmp_path / "ft", "--restore-file", old, *flags)
    counter = Counter()
    task.hooks.add(counter)
    with caplog.at_level(logging.INFO, logger="fairseq_efficiency"):
        weights = fine_tune(cfg, trainer)
    assert counter.steps == (0 if flags else 7)
    assert (f"efficiency state of {old} not restored (it follows the data iterator, which this "
            "run resets): counter" in caplog.text) == bool(flags)
    assert revived(weights, masks) == 0 and revived(load(base)["model"], masks) > 0


def test_cli_fine_tune_with_every_reset_flag(pruned, tiny_data_bin, tmp_path):
    path, masks, _ = pruned
    d = tmp_path / "all"
    res = run_cli("fairseq_cli.train", train_args(tiny_data_bin, d, *TASK, "--restore-file", path,
                                                  *FLAGS, "--max-update", "4"))
    log = res.stdout + res.stderr
    assert f"restored pruning masks from {path}: {len(masks)} tensors, sparsity 0.8000" in log
    out = load(d / "checkpoint_last.pt")
    assert out["optimizer_history"][-1]["num_updates"] == 4
    assert revived(out["model"], masks) == 0
    assert MaskSet.from_state_dict(hook_state_from_checkpoint(out)["masks"]).masks.keys() == \
        masks.masks.keys()


def test_drop_flag_drops_the_masks(pruned, tiny_data_bin, tmp_path, caplog):
    path, masks, _ = pruned
    cfg, task, trainer = build(tiny_data_bin, tmp_path, "--restore-file", path,
                               "--reset-optimizer", "--prune-drop-masks")
    with caplog.at_level(logging.INFO, logger="fairseq_efficiency"):
        weights = fine_tune(cfg, trainer)
    assert f"pruning masks of {path} dropped (--prune-drop-masks)" in caplog.text
    assert "restored pruning masks" not in caplog.text
    assert revived(weights, masks) > 0.5 * sum(c[0] for c in masks.counts().values())
    assert not checkpoint_state.hook_states(task.get_checkpoint_dict()).get("pruning")


@pytest.mark.parametrize("main", ["prune", "export"])
def test_tools_refuse_checkpoints_whose_masks_no_longer_hold(pruned, tmp_path, capsys, main):
    """E.g. pruned weights trained again while the masks were carried along unenforced."""
    from fairseq_efficiency.pruning.cli import export_main, prune_main

    path, masks, base = pruned
    state = load(path)
    dense = load(base)["model"]
    for n, keep in masks.masks.items():  # a third of the pruned weights come back
        back = ~keep & (torch.rand(keep.shape, generator=torch.Generator().manual_seed(0)) < 0.33)
        state["model"][n][back] = dense[n][back]
    n_back = revived(state["model"], masks)
    assert n_back > 0
    bad = tmp_path / "revived.pt"
    torch.save(state, bad)
    out = tmp_path / "out.pt"
    rc = (prune_main if main == "prune" else export_main)([str(bad), "-o", str(out)])
    err = capsys.readouterr().err
    n_pruned = sum(c[0] for c in masks.counts().values())
    assert rc == 2 and f"{n_back} of its {n_pruned} pruned weights are non-zero again" in err
    assert err.count("\n") == 1 and not out.exists()


def test_masks_from_checked_before_training(pruned, tiny_data_bin, tmp_path):
    path, masks, base = pruned
    # a checkpoint without masks: refused while the task builds the model
    with pytest.raises(MaskSourceError, match=f"--prune-masks-from {base}: the checkpoint holds "
                                              "no pruning masks"):
        build(tiny_data_bin, tmp_path, "--prune-masks-from", base)
    # a missing file, through fairseq-train: one clear error, no crash.pt, no update run
    res = run_cli("fairseq_cli.train", train_args(
        tiny_data_bin, tmp_path / "ck", *TASK, "--prune-masks-from", str(tmp_path / "nope.pt"),
        "--no-save", "--max-update", "2"), check=False)
    assert_one_line_error(
        res, f"--prune-masks-from checkpoint {tmp_path / 'nope.pt'} does not exist")
    assert not (tmp_path / "ck" / "crash.pt").exists() and "num_updates" not in res.stdout
