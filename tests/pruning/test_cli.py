"""End to end through the fairseq CLIs: pruning during training, resume, offline tool, export."""
import os

import pytest
import torch

import fairseq_efficiency  # noqa: F401  (allow-lists checkpoint types)
from fairseq_efficiency.pruning.hook import hook_state_from_checkpoint
from fairseq_efficiency.pruning.masks import MaskSet
from tests.helpers import run_cli, train_args

PRUNE_CLI = "fairseq_efficiency.pruning.cli"
TASK = ["--task", "translation_efficiency"]


def load(path):
    return torch.load(path, map_location="cpu")


def masks_of(state):
    hs = hook_state_from_checkpoint(state)
    assert hs is not None, "no pruning masks in the checkpoint"
    return MaskSet.from_state_dict(hs["masks"])


def assert_masks_hold(state, masks):
    for n, m in masks.masks.items():
        assert torch.count_nonzero(state["model"][n][~m]) == 0, n


def generate(data_bin, path):
    from fairseq_efficiency.cli.userdir import userdir

    res = run_cli("fairseq_cli.generate", [data_bin, "--user-dir", userdir(), "--path", path,
                                           "--cpu", "--gen-subset", "valid", "--beam", "2",
                                           "--batch-size", "64", "--max-len-b", "10",
                                           "--required-batch-size-multiple", "1"])
    hyps = sorted(l for l in res.stdout.splitlines() if l.startswith("H-"))
    assert len(hyps) == 60
    return hyps


@pytest.fixture(scope="module")
def baseline(tiny_data_bin, tmp_path_factory):
    d = str(tmp_path_factory.mktemp("base"))
    run_cli("fairseq_cli.train", train_args(tiny_data_bin, d, *TASK, "--max-update", "12"))
    return os.path.join(d, "checkpoint_last.pt")


def test_prune_during_training_then_resume(tiny_data_bin, tmp_path):
    d = str(tmp_path)
    args = train_args(tiny_data_bin, d, *TASK, "--weight-decay", "0.1", "--clip-norm", "0.5",
                      "--prune-ratio", "0.6", "--prune-scheme", "class-uniform",
                      "--prune-at-update", "3", "--prune-lr-scale", "0.5")
    res = run_cli("fairseq_cli.train", args + ["--max-update", "8"])
    assert "pruning event 1: class-uniform, target 0.6000" in res.stderr + res.stdout
    assert "src_embed" in res.stderr + res.stdout and "sparsity=0.6" in res.stderr + res.stdout
    state = load(os.path.join(d, "checkpoint_last.pt"))
    masks = masks_of(state)
    assert masks.sparsity() == pytest.approx(0.6, abs=1e-3)
    # class-uniform: the 1-layer LSTM's src_embed class is the one embedding tensor
    pruned, total = masks.counts()["encoder.embed_tokens.weight"]
    assert pruned == round(0.6 * total)
    assert_masks_hold(state, masks)
    adam = state["last_optimizer_state"]["state"]
    assert len(adam) > 0
    # resume: masks restored, no second pruning event, still zero after more updates
    res = run_cli("fairseq_cli.train", args + ["--max-update", "14"])
    out = res.stderr + res.stdout
    assert "restored pruning masks" in out and "pruning event" not in out
    state2 = load(os.path.join(d, "checkpoint_last.pt"))
    assert state2["optimizer_history"][-1]["num_updates"] == 14
    masks2 = masks_of(state2)
    assert all(torch.equal(masks.masks[n], masks2.masks[n]) for n in masks.masks)
    assert_masks_hold(state2, masks2)
    changed = [n for n in masks.masks if not torch.equal(state["model"][n], state2["model"][n])]
    assert changed  # the surviving weights kept training


def test_gradual_schedule(tiny_data_bin, tmp_path):
    d = str(tmp_path)
    res = run_cli("fairseq_cli.train", train_args(
        tiny_data_bin, d, *TASK, "--prune-ratio", "0.7", "--prune-steps", "3",
        "--prune-at-update", "1", "--prune-end-update", "5", "--max-update", "7"))
    out = res.stderr + res.stdout
    assert "pruning event 3" in out and "pruning event 4" not in out
    masks = masks_of(load(os.path.join(d, "checkpoint_last.pt")))
    assert masks.sparsity() == pytest.approx(0.7, abs=1e-3)


def test_best_checkpoint_and_patience_after_pruning(baseline, tiny_data_bin, tmp_path):
    """Validation losses of the dense model neither stay checkpoint_best.pt nor stop the run."""
    d = str(tmp_path)
    res = run_cli("fairseq_cli.train", train_args(
        tiny_data_bin, d, *TASK, "--finetune-from-model", baseline, "--prune-ratio", "0.9",
        "--prune-at-update", "2", "--validate-interval-updates", "1",
        "--save-interval-updates", "1", "--no-epoch-checkpoints", "--patience", "1",
        "--max-update", "4"))
    out = res.stderr + res.stdout
    assert "pruning event 1" in out and "early stop" not in out
    best = load(os.path.join(d, "checkpoint_best.pt"))
    assert best["optimizer_history"][-1]["num_updates"] > 2
    assert masks_of(best).sparsity() == pytest.approx(0.9, abs=1e-3)
    assert_masks_hold(best, masks_of(best))


def test_offline_prune_generate_retrain_export(baseline, tiny_data_bin, tmp_path, capsys):
    from fairseq_efficiency.pruning.cli import export_main, prune_main

    out = str(tmp_path / "p80.pt")
    before = os.path.getmtime(baseline)
    # in process (the console script's subprocess path: test_unbuildable_checkpoint...)
    assert prune_main([baseline, "--scheme", "class-blind", "--ratio", "0.8", "-o", out]) == 0
    stdout = capsys.readouterr().out
    assert "total" in stdout and "0.8000" in stdout
    assert os.path.getmtime(baseline) == before
    pruned = load(out)
    masks = masks_of(pruned)
    assert masks.sparsity() == pytest.approx(0.8, abs=1e-3)
    assert_masks_hold(pruned, masks)
    hyps = generate(tiny_data_bin, out)  # fairseq-generate loads it directly

    # retrain from it: masks come back through the task state
    d = str(tmp_path / "rt")
    res = run_cli("fairseq_cli.train", train_args(tiny_data_bin, d, *TASK, "--restore-file", out,
                                                  "--reset-optimizer", "--max-update", "6"))
    assert "restored pruning masks" in res.stderr + res.stdout
    rt = load(os.path.join(d, "checkpoint_last.pt"))
    assert_masks_hold(rt, masks)
    assert any(not torch.equal(rt["model"][n], pruned["model"][n]) for n in masks.masks)

    # --reset-dataloader makes fairseq skip the task state: --prune-masks-from covers it
    d2 = str(tmp_path / "rt2")
    run_cli("fairseq_cli.train", train_args(
        tiny_data_bin, d2, *TASK, "--restore-file", out, "--reset-optimizer",
        "--reset-dataloader", "--prune-masks-from", out, "--max-update", "4"))
    assert_masks_hold(load(os.path.join(d2, "checkpoint_last.pt")), masks)

    # sparse export: smaller, and fairseq-generate gives the same translations
    sp = str(tmp_path / "p80.sparse.pt")
    capsys.readouterr()
    assert export_main([out, "-o", sp]) == 0
    stdout = capsys.readouterr().out
    assert "of dense" in stdout
    dense_bytes = int(stdout.split("dense model checkpoint")[1].split()[0])
    assert os.path.getsize(sp) < 0.5 * dense_bytes
    assert generate(tiny_data_bin, sp) == hyps


def test_analyze_writes_figures(baseline, tmp_path):
    out = tmp_path / "analysis"
    res = run_cli(PRUNE_CLI, [baseline, "--analyze", "-o", str(out)])
    assert "softmax" in res.stdout and "class-distribution" in res.stdout
    names = os.listdir(out)
    assert "fig4_class_breakdown.png" in names and "fig4_class_breakdown.csv" in names
    assert "fig8_encoder_lstm_l0.png" in names and "fig8_gates.csv" in names


@pytest.mark.parametrize("extra,msg", [
    (["--ratio", "1.0"], "--ratio must be in [0, 1), got 1.0"),
    (["--scheme", "magic"], "unknown pruning scheme 'magic'"),
    (["--exclude", "no_such_param"], "exclude pattern 'no_such_param' matches no parameter"),
])
def test_offline_errors_write_nothing(baseline, tmp_path, capsys, extra, msg):
    from fairseq_efficiency.pruning.cli import prune_main

    assert prune_main([baseline, "-o", str(tmp_path / "out.pt")] + extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("fairseq-efficiency-prune: error: ") and msg in err
    assert err.count("\n") == 1, err
    assert os.listdir(tmp_path) == []


def test_unbuildable_checkpoint_and_self_overwrite(baseline, tmp_path):
    bad = tmp_path / "bad.pt"
    state = load(baseline)
    state["model"].pop("decoder.fc_out.weight")
    torch.save(state, bad)
    res = run_cli(PRUNE_CLI, [str(bad), "-o", str(tmp_path / "o.pt")], check=False)
    assert res.returncode == 2 and "cannot build the model of" in res.stderr
    assert "Missing key(s)" in res.stderr.splitlines()[-1]
    from fairseq_efficiency.pruning.cli import prune_main

    assert prune_main([baseline, "-o", baseline]) == 2
    assert sorted(os.listdir(tmp_path)) == ["bad.pt"]


def test_train_flags_validated_up_front(tiny_data_bin):
    from fairseq import options

    from fairseq_efficiency.cli.userdir import userdir
    from fairseq_efficiency.techniques import build_hooks

    def parse(*extra):
        parser = options.get_training_parser()
        return options.parse_args_and_arch(parser, [tiny_data_bin, "--user-dir", userdir(), *TASK,
                                                    "--arch", "lstm", *extra])

    with pytest.raises(SystemExit):  # argparse: invalid choice
        parse("--prune-scheme", "magic")
    for flags, msg in [(("--prune-ratio", "1.2"), r"--prune-ratio must be in \[0, 1\), got 1.2"),
                       (("--prune-ratio", "0.5", "--prune-steps", "3"), "--prune-end-update"),
                       (("--prune-ratio", "0.5", "--prune-lr-scale", "0"), "--prune-lr-scale")]:
        with pytest.raises(ValueError, match=msg):
            build_hooks(parse(*flags))
