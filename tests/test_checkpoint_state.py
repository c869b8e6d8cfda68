"""The one module that knows where hook state lives in a checkpoint."""
import os
from types import SimpleNamespace

import pytest
import torch

import fairseq_efficiency  # noqa: F401  (allow-lists checkpoint types)
from fairseq_efficiency import checkpoint_state as cs
from fairseq_efficiency.pruning.masks import MaskSet


def masks_state():
    keep = torch.rand(4, 6, generator=torch.Generator().manual_seed(0)) > 0.5
    return MaskSet({"encoder.embed_tokens.weight": keep}).state_dict(), keep


def test_reads_checkpoints_in_the_layout_written_so_far(tmp_path):
    """Built exactly as the task's get_checkpoint_dict has written it: keyed by the task's
    class name, hook states under "hooks"."""
    ms, keep = masks_state()
    pruning = {"version": 1, "masks": ms, "events_done": 0, "scheme": "class-blind"}
    ckpt = {"model": {}, "extra_state": {
        "train_iterator": {"epoch": 1, "iterations_in_epoch": 0, "shuffle": True, "version": 2},
        "TranslationEfficiencyTask": {"hooks": {"pruning": pruning, "recorder": {"steps": 3}}}}}
    path = tmp_path / "old.pt"
    torch.save(ckpt, path)

    states = cs.read_hook_states(str(path))
    assert set(states) == {"pruning", "recorder"} and states["recorder"] == {"steps": 3}
    assert torch.equal(MaskSet.from_state_dict(states["pruning"]["masks"]).masks[
        "encoder.embed_tokens.weight"], keep)
    assert cs.hook_states(ckpt).keys() == cs.hook_states(ckpt["extra_state"]).keys()
    # what fairseq hands to set_checkpoint_dict
    assert cs.task_state_hooks(ckpt["extra_state"]["TranslationEfficiencyTask"]).keys() == \
        states.keys()
    # and the writer still produces that layout
    assert cs.task_checkpoint_dict({"recorder": {"steps": 3}}) == \
        {"TranslationEfficiencyTask": {"hooks": {"recorder": {"steps": 3}}}}


def test_set_and_strip_keep_everything_else():
    ckpt = {"model": {"w": torch.ones(1)}, "extra_state": {"best": 1.0}}
    cs.set_hook_states(ckpt, {"a": {"x": 1}})
    cs.set_hook_states(ckpt, {"b": {"y": 2}})
    assert cs.hook_states(ckpt) == {"a": {"x": 1}, "b": {"y": 2}}
    assert ckpt["extra_state"]["best"] == 1.0
    assert cs.strip_hook_states(ckpt["extra_state"]) == {"best": 1.0}
    assert cs.hook_states({"model": {}}) == {} and cs.hook_states(None) == {}


def test_unreadable_files_are_named_in_one_line(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    good = tmp_path / "good.pt"
    torch.save({"model": {}, "extra_state": {}}, good)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:100])

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {tmp_path / 'MARKER'}",)

    evil = tmp_path / "evil.pt"
    torch.save({"model": {}, "extra_state": {"x": Payload()}}, evil)
    for path, msg in [(tmp_path / "missing.pt", "does not exist"),
                      (text, "is not a readable fairseq checkpoint"),
                      (cut, "is not a readable fairseq checkpoint"),
                      (evil, "refused by torch's weights-only loader")]:
        with pytest.raises(cs.CheckpointStateError, match=msg) as e:
            cs.read_hook_states(str(path))
        assert str(path) in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "MARKER").exists()


def test_legacy_serialization_is_read(tmp_path):
    path = tmp_path / "legacy.pt"
    torch.save({"model": {}, "extra_state": cs.task_checkpoint_dict({"a": {"t": torch.ones(2)}})},
               path, _use_new_zipfile_serialization=False)
    assert torch.equal(cs.read_hook_states(str(path))["a"]["t"], torch.ones(2))


def test_restore_path_resolved_as_fairseq_does(tmp_path):
    def ck(**kw):
        base = dict(restore_file="checkpoint_last.pt", save_dir=str(tmp_path), checkpoint_suffix="",
                    continue_once=None, finetune_from_model=None)
        return SimpleNamespace(**{**base, **kw})

    last = str(tmp_path / "checkpoint_last.pt")
    assert cs.restore_path(ck()) == last
    assert cs.restore_path(ck(finetune_from_model="/m/pre.pt")) == "/m/pre.pt"  # first launch
    open(last, "wb").close()
    assert cs.restore_path(ck(finetune_from_model="/m/pre.pt")) == last  # resuming
    assert cs.restore_path(ck(restore_file="/m/pruned.pt")) == "/m/pruned.pt"
    assert cs.restore_path(ck(restore_file="/m/pruned.pt", checkpoint_suffix="-x")) == "/m/pruned-x.pt"
    assert cs.restore_path(None) is None
