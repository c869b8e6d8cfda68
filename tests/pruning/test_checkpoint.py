"""Reading and writing checkpoints for the pruning tools: one-line errors, atomic writes."""
import os

import pytest
import torch
from omegaconf import OmegaConf

from fairseq_efficiency.pruning.checkpoint import (PruneError, atomic_save, build_from_checkpoint,
                                                   check_finite, plain_cfg, read_checkpoint,
                                                   trained_updates)


def test_unreadable_files_are_refused_in_one_line(tmp_path):
    with pytest.raises(PruneError, match="does not exist"):
        read_checkpoint(str(tmp_path / "missing.pt"))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(PruneError, match="is not a readable checkpoint") as e:
        read_checkpoint(str(junk))
    assert "\n" not in str(e.value)
    with pytest.raises(PruneError, match="is not a readable checkpoint"):
        build_from_checkpoint(str(junk))


def test_non_finite_weights_are_refused():
    state = {"model": {"a": torch.ones(3), "b": torch.tensor([1.0, float("nan")]),
                       "steps": torch.tensor([1, 2])}}
    with pytest.raises(PruneError, match=r"NaN/Inf weights in 1 tensor\(s\) \(b\)"):
        check_finite(state, "c.pt")
    state["model"]["b"] = torch.zeros(2)
    check_finite(state, "c.pt")


@pytest.mark.parametrize("history, expected", [
    ([{"num_updates": 7}], 7), ([{"num_updates": 3}, {"num_updates": 12}], 12),
    ([{"num_updates": 0}], None), ([], None), (None, None), (["junk"], None)])
def test_trained_updates_from_the_optimizer_history(history, expected):
    assert trained_updates({"optimizer_history": history}) == expected


def test_plain_cfg_turns_a_dictconfig_into_containers():
    state = {"cfg": OmegaConf.create({"task": {"data": "bin", "lr": [0.1]}}), "model": {}}
    out = plain_cfg(state)
    assert out["cfg"] == {"task": {"data": "bin", "lr": [0.1]}} and type(out["cfg"]) is dict
    assert OmegaConf.is_config(state["cfg"])  # the input is left alone
    assert plain_cfg({"cfg": None}) == {"cfg": None}


def test_atomic_save_writes_through_a_temporary_file_and_never_over_its_input(tmp_path):
    src = tmp_path / "in.pt"
    torch.save({"model": {"w": torch.ones(2)}}, src)
    out = atomic_save({"model": {"w": torch.zeros(2)}}, str(tmp_path / "out.pt"), inputs=[str(src)])
    assert out == str(tmp_path / "out.pt")
    assert torch.equal(torch.load(out)["model"]["w"], torch.zeros(2))
    with pytest.raises(PruneError, match="refusing to overwrite the input checkpoint"):
        atomic_save({"model": {}}, str(src), inputs=[str(src)])
    os.link(src, tmp_path / "alias.pt")  # the same file under another name
    with pytest.raises(PruneError, match="refusing to overwrite"):
        atomic_save({"model": {}}, str(tmp_path / "alias.pt"), inputs=[str(src)])
    with pytest.raises(PruneError, match="output directory .* does not exist"):
        atomic_save({"model": {}}, str(tmp_path / "nodir" / "x.pt"))
    with pytest.raises(Exception):  # cannot be pickled: nothing is left behind
        atomic_save({"model": {}, "f": lambda: 0}, str(tmp_path / "bad.pt"))
    assert sorted(os.listdir(tmp_path)) == ["alias.pt", "in.pt", "out.pt"]
    assert torch.equal(torch.load(src)["model"]["w"], torch.ones(2))
