"""Offline pruning's checkpoint handling: masks attached where the task restores them,
masks that no longer hold refused, weights with NaN refused, atomic writes that never
overwrite their input."""
import os

import pytest
import torch

from fairseq_efficiency import checkpoint_state
from fairseq_efficiency.pruning.checkpoint import (PruneError, atomic_save, attach_masks,
                                                   check_finite, check_masks_hold, plain_cfg,
                                                   trained_updates)
from fairseq_efficiency.pruning.masks import MaskSet


def checkpoint(updates=12):
    torch.manual_seed(0)
    return {"model": {"w": torch.randn(4, 6), "b": torch.randn(4)},
            "optimizer_history": [{"num_updates": updates}],
            "extra_state": {"train_iterator": {"epoch": 4, "iterations_in_epoch": 3},
                            "best": 2.5}}


def pruned(state):
    keep = state["model"]["w"].abs() > 0.5
    state["model"]["w"] = state["model"]["w"] * keep
    return MaskSet({"w": keep})


def test_attach_masks_starts_a_new_phase_the_task_restores():
    state = checkpoint()
    masks = pruned(state)
    attach_masks(state, masks, "class-blind")
    hs = checkpoint_state.hook_states(state)["pruning"]
    assert hs["scheme"] == "class-blind" and hs["trained_updates"] == 12
    assert hs["events_done"] == 0
    assert torch.equal(MaskSet.from_state_dict(hs["masks"]).masks["w"], masks.masks["w"])
    assert state["extra_state"]["train_iterator"] == {
        "epoch": 1, "iterations_in_epoch": 0, "shuffle": True, "version": 2}
    assert "best" not in state["extra_state"]
    kept = attach_masks(checkpoint(), masks, "lamp", fresh_start=False)
    assert kept["extra_state"]["best"] == 2.5


def test_masks_that_no_longer_hold_are_refused():
    state = checkpoint()
    attach_masks(state, pruned(state), "class-blind")
    check_masks_hold(state, "ck.pt")  # holds
    check_masks_hold(checkpoint(), "plain.pt")  # no masks: nothing to check
    w = state["model"]["w"]
    n_pruned = int((w == 0).sum())
    w[w == 0] = 1.0
    with pytest.raises(PruneError, match=f"ck.pt: {n_pruned} of its {n_pruned} pruned weights "
                                         "are non-zero again"):
        check_masks_hold(state, "ck.pt")
    state["model"]["w"] = torch.zeros(5, 6)
    with pytest.raises(PruneError, match="mask for w matches no weight"):
        check_masks_hold(state, "ck.pt")


def test_nan_weights_refused():
    state = checkpoint()
    check_finite(state, "ck.pt")
    state["model"]["b"][1] = float("nan")
    with pytest.raises(PruneError, match=r"ck.pt holds NaN/Inf weights in 1 tensor\(s\) \(b\)"):
        check_finite(state, "ck.pt")


def test_trained_updates_and_plain_cfg():
    from omegaconf import OmegaConf

    assert trained_updates(checkpoint(30)) == 30
    assert trained_updates(checkpoint(0)) is None and trained_updates({}) is None
    state = {"cfg": OmegaConf.create({"model": {"_name": "lstm", "layers": 2}})}
    plain = plain_cfg(state)
    assert plain["cfg"] == {"model": {"_name": "lstm", "layers": 2}} and type(plain["cfg"]) is dict
    assert OmegaConf.is_config(state["cfg"])  # the input is left as it was


def test_atomic_save_never_overwrites_its_input_nor_leaves_files(tmp_path):
    src = tmp_path / "in.pt"
    torch.save(checkpoint(), src)
    out = atomic_save(checkpoint(), tmp_path / "out.pt", inputs=[str(src)])
    assert torch.equal(torch.load(out)["model"]["w"], checkpoint()["model"]["w"])
    with pytest.raises(PruneError, match="refusing to overwrite the input checkpoint"):
        atomic_save(checkpoint(), src, inputs=[str(src)])
    os.link(src, tmp_path / "hard.pt")
    with pytest.raises(PruneError, match="refusing to overwrite the input checkpoint"):
        atomic_save(checkpoint(), tmp_path / "hard.pt", inputs=[str(src)])
    with pytest.raises(PruneError, match="does not exist"):
        atomic_save(checkpoint(), tmp_path / "nope" / "out.pt")
    with pytest.raises(Exception):
        atomic_save({"model": lambda: None}, tmp_path / "bad.pt")  # not picklable
    assert sorted(os.listdir(tmp_path)) == ["hard.pt", "in.pt", "out.pt"]
