"""The techniques compose in one fairseq-train run (and refuse combinations that cannot work)."""
import torch

from fairseq_efficiency.pruning.hook import hook_state_from_checkpoint
from fairseq_efficiency.pruning.masks import MaskSet
from tests.helpers import assert_one_line_error, run_cli, train_args

ALL = ["--task", "translation_efficiency", "--criterion", "sentence_cross_entropy",
       "--arch", "lstm_meprop", "--meprop-k", "4", "--meprop-alternate",
       "--instance-selection", "autoassist", "--prune-ratio", "0.5", "--prune-at-update", "3"]


def test_meprop_autoassist_and_pruning_in_one_run(tiny_data_bin, tmp_path):
    save = tmp_path / "ck"
    res = run_cli("fairseq_cli.train", train_args(tiny_data_bin, save, *ALL, "--max-epoch", "3"))
    log = res.stdout + res.stderr
    assert "efficiency features: instance_selection, pruning" in log
    assert "meProp epoch 2: top-k in the decoder" in log and "pruning event 1" in log
    state = torch.load(save / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    hooks = state["extra_state"]["TranslationEfficiencyTask"]["hooks"]
    assert hooks["instance_selection"]["ranks"][0]["worker"]["selector"]["assistant"]["fitted"]
    masks = MaskSet.from_state_dict(hook_state_from_checkpoint(state)["masks"])
    assert abs(masks.sparsity() - 0.5) < 1e-3
    for name, keep in masks.masks.items():  # the pruned weights stayed zero while training
        assert torch.count_nonzero(state["model"][name][~keep]) == 0, name


def test_mesimp_with_pruning_is_refused_up_front(tiny_data_bin, tmp_path):
    res = run_cli("fairseq_cli.train", train_args(
        tiny_data_bin, tmp_path / "ck", *ALL, "--mesimp-interval", "4", "--max-epoch", "1"),
        check=False)
    assert_one_line_error(res, "pruning masks need fixed matrix shapes, which meSimp")
