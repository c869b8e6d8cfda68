"""The retraining command rebuilt from a checkpoint's config: the run's own options back,
where it saved, how long it ran and its pruning flags left out."""
import sys

import pytest
from fairseq import options
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from omegaconf import OmegaConf

from fairseq_efficiency.cli.userdir import userdir
from fairseq_efficiency.compat import literal_value
from fairseq_efficiency.pruning.retrain_cmd import display, original_train_args, plan_retrain


def checkpoint_cfg(data, *extra, task="translation_efficiency"):
    args = options.parse_args_and_arch(options.get_training_parser(), [
        data, "--user-dir", userdir(), "--task", task, "--arch", "lstm",
        "--encoder-hidden-size", "16", "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)",
        "--lr", "0.003", "--max-tokens", "777", "--save-dir", "/old/run", "--max-update", "30",
        "--prune-ratio", "0.5", *extra])
    # as fairseq stores it in the checkpoint
    return OmegaConf.to_container(convert_namespace_to_omegaconf(args), resolve=True,
                                  enum_to_str=True)


def test_original_options_come_back_and_parse_to_the_same_values(tiny_data_bin):
    cfg = checkpoint_cfg(tiny_data_bin)
    args = original_train_args(cfg)
    assert args[:7] == [tiny_data_bin, "--user-dir", userdir(), "--task",
                        "translation_efficiency", "--arch", "lstm"]
    for flag, value in (("--encoder-hidden-size", "16"), ("--lr", "0.003"),
                        ("--max-tokens", "777"), ("--optimizer", "adam")):
        assert args[args.index(flag) + 1] == value, flag
    for flag in ("--save-dir", "--max-update", "--prune-ratio", "--max-tokens-valid"):
        assert flag not in args, flag
    parsed = options.parse_args_and_arch(options.get_training_parser(), args)
    assert literal_value(parsed.adam_betas) == (0.9, 0.98)
    assert (parsed.lr, parsed.max_tokens, parsed.encoder_hidden_size) == ([0.003], 777, 16)
    assert original_train_args(cfg, data="/other")[0] == "/other"


def test_plan_retrain_takes_a_fraction_of_the_trained_updates(tiny_data_bin, tmp_path):
    state = {"cfg": checkpoint_cfg(tiny_data_bin), "optimizer_history": [{"num_updates": 30}]}
    cmd, budget = plan_retrain(state, "pruned.pt", str(tmp_path / "re"), 1 / 3, ["--seed", "5"])
    assert budget == 10
    assert cmd[:3] == [sys.executable, "-m", "fairseq_cli.train"] and cmd[-2:] == ["--seed", "5"]
    assert cmd[cmd.index("--max-update") + 1] == "10"
    assert cmd[cmd.index("--save-dir") + 1] == str(tmp_path / "re")
    assert cmd[cmd.index("--restore-file") + 1].endswith("/pruned.pt")
    assert display(cmd).startswith("fairseq-train ")
    (tmp_path / "re").mkdir()
    (tmp_path / "re" / "checkpoint_last.pt").write_bytes(b"x")
    with pytest.raises(ValueError, match="already holds checkpoints"):
        plan_retrain(state, "pruned.pt", str(tmp_path / "re"), 1 / 3)
    with pytest.raises(ValueError, match="does not record how many updates"):
        plan_retrain(dict(state, optimizer_history=[]), "p.pt", str(tmp_path / "x"), 0.5)
    with pytest.raises(ValueError, match="--retrain-fraction must be > 0"):
        plan_retrain(state, "p.pt", str(tmp_path / "x"), 0)


def test_other_tasks_are_refused(tiny_data_bin):
    with pytest.raises(ValueError, match="cannot retrain a checkpoint of task 'language_modeling'"):
        original_train_args({"task": {"_name": "language_modeling"}, "model": {"_name": "x"}})
