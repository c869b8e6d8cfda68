"""Prune and retrain in one command, and the recipe inside fairseq-train (through the CLIs)."""
import os
import re

import pytest
import torch

from tests.helpers import run_cli, train_args
from tests.pruning.test_cli import PRUNE_CLI, TASK, assert_masks_hold, load, masks_of


def logged(out, key):
    """Per-update values of ``key`` in fairseq's simple log (``--log-interval 1``)."""
    return [float(v) for v in re.findall(rf"\b{key}=([0-9.e-]+)", out)]


@pytest.fixture(scope="module")
def trained(tiny_data_bin, tmp_path_factory):
    d = str(tmp_path_factory.mktemp("orig"))
    run_cli("fairseq_cli.train", train_args(tiny_data_bin, d, *TASK, "--max-update", "12"))
    return os.path.join(d, "checkpoint_last.pt")


def test_prune_and_retrain_in_one_command(trained, tmp_path):
    out = str(tmp_path / "p70.pt")
    res = run_cli(PRUNE_CLI, [trained, "--scheme", "lamp", "--ratio", "0.7", "-o", out,
                              "--retrain-fraction", "0.5", "--retrain", "--max-tokens", "800"])
    text = res.stdout + res.stderr
    assert "retraining for 6 updates:" in res.stdout
    command = res.stdout.split("retraining for 6 updates:\n")[1].splitlines()[0]
    # the original run's options, not restated by the user, are in the command
    for flag in ("--arch lstm", "--optimizer adam", "--lr 0.005", "--encoder-hidden-size 16",
                 "--prune-retrain-fraction 0.5", "--max-update 6", "--max-tokens 800"):
        assert flag in command, flag
    pruned = load(out)
    masks = masks_of(pruned)
    assert masks.sparsity() == pytest.approx(0.7, abs=1e-2)
    rt_path = str(tmp_path / "p70-retrain" / "checkpoint_last.pt")
    rt = load(rt_path)
    assert rt["optimizer_history"][-1]["num_updates"] == 6
    assert_masks_hold(rt, masks)  # pruned weights still exactly zero
    assert any(not torch.equal(rt["model"][n], pruned["model"][n]) for n in masks.masks)
    assert rt["cfg"]["model"].encoder_hidden_size == 16
    assert rt["cfg"]["dataset"]["max_tokens"] == 800  # the extra flag wins
    # the paper's shape: half of --lr 0.005, halved at 3, 3.75 -> 4, 4.5 -> 5 of 6 updates
    assert logged(text, "retrain_lr") == pytest.approx([0.0025] * 3 + [0.00125, 0.000625,
                                                                        0.0003125])
    # a second run would overwrite the retraining checkpoints: refused, nothing written
    res = run_cli(PRUNE_CLI, [trained, "-o", str(tmp_path / "again.pt"), "--retrain-dir",
                              str(tmp_path / "p70-retrain"), "--retrain"], check=False)
    assert res.returncode == 2 and "already holds checkpoints" in res.stderr
    assert not os.path.exists(tmp_path / "again.pt")


def test_recipe_during_training(tiny_data_bin, tmp_path):
    d = str(tmp_path)
    res = run_cli("fairseq_cli.train", train_args(
        tiny_data_bin, d, *TASK, "--prune-ratio", "0.8", "--prune-at-update", "8",
        "--prune-max-class-ratio", "0.9", "--prune-retrain-fraction", "0.5",
        "--max-update", "12"))
    out = res.stdout + res.stderr
    assert "retraining after pruning" in out and "layer collapse" not in out
    # updates 9..12 retrain (budget 4 = half of the 8 before pruning): halvings at 2, 2.5, 3
    assert logged(out, "retrain_lr") == pytest.approx([0.0025, 0.0025, 0.00125, 0.0003125])
    rows = re.findall(r"^(\S+)\s+\d+\s+\d+\s+([01]\.\d{4})\s", out, flags=re.M)
    assert len(rows) > 4 and max(float(s) for c, s in rows if c != "total") <= 0.9
    state = load(os.path.join(d, "checkpoint_last.pt"))
    assert_masks_hold(state, masks_of(state))


def assert_round_trip(path):
    from fairseq import checkpoint_utils

    from fairseq_efficiency.pruning.retrain_cmd import (_SKIP, _parse, _plain, flatten_cfg,
                                                        original_train_args)

    cfg = checkpoint_utils.load_checkpoint_to_cpu(path)["cfg"]
    args = original_train_args(cfg)
    _, parsed = _parse(args)
    flat = flatten_cfg(cfg)
    differ = {k: (v, getattr(parsed, k)) for k, v in flat.items()
              if hasattr(parsed, k) and k not in _SKIP and _plain(getattr(parsed, k)) != v}
    assert differ == {}
    return args


def test_original_options_round_trip(trained, tiny_data_bin, tmp_path):
    args = assert_round_trip(trained)
    assert args[args.index("--encoder-hidden-size") + 1] == "16"
    # a transformer trained with fairseq's own translation task, a warm-up scheduler and
    # label smoothing: every option comes back, derived ones (--decoder-output-dim) left out.
    # Without the plugin, fairseq's prefetch thread can abort the run at exit (see compat's
    # "Prefetch threads at exit"): this run prefetches nothing.
    d = str(tmp_path)
    run_cli("fairseq_cli.train", [
        tiny_data_bin, "--cpu", "--task", "translation", "--arch", "transformer_iwslt_de_en",
        "--encoder-embed-dim", "16", "--decoder-embed-dim", "16", "--encoder-ffn-embed-dim",
        "32", "--decoder-ffn-embed-dim", "32", "--encoder-layers", "1", "--decoder-layers", "1",
        "--encoder-attention-heads", "2", "--decoder-attention-heads", "2", "--optimizer", "adam",
        "--adam-betas", "(0.9, 0.98)", "--lr", "0.001", "--lr-scheduler", "inverse_sqrt",
        "--warmup-updates", "4", "--criterion", "label_smoothed_cross_entropy",
        "--label-smoothing", "0.1", "--max-tokens", "1000", "--max-update", "2",
        "--save-dir", d, "--num-workers", "0", "--data-buffer-size", "0",
        "--no-epoch-checkpoints"])
    args = assert_round_trip(os.path.join(d, "checkpoint_last.pt"))
    assert "--decoder-output-dim" not in args and "--label-smoothing" in args


@pytest.mark.parametrize("extra,msg", [
    (["--max-class-ratio", "0.5"], "--max-class-ratio 0.5 is below the pruning ratio 0.8"),
    (["--retrain-fraction", "0", "--retrain"], "--retrain-fraction must be > 0"),
    (["--analyze", "--retrain"], "it cannot --retrain"),
])
def test_offline_cap_and_retrain_errors_write_nothing(trained, tmp_path, capsys, extra, msg):
    from fairseq_efficiency.pruning.cli import prune_main

    assert prune_main([trained, "-o", str(tmp_path / "out.pt")] + extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("fairseq-efficiency-prune: error: ") and msg in err
    assert err.count("\n") == 1, err
    assert os.listdir(tmp_path) == []
