"""With the plugin loaded, checkpoint_last.pt/checkpoint_best.pt copies are atomic and a
resume from an unreadable checkpoint_last.pt continues from the newest readable checkpoint."""
import os
import re
import subprocess
import sys

import pytest
import torch

import fairseq_efficiency  # noqa: F401  (installs the shims under test)
from tests.helpers import cli_env, run_cli, train_args

KILLED_COPIES = """
import os, signal, sys, time
import fairseq_efficiency
from fairseq.file_io import PathManager
a, b, dst = sys.argv[1:]
blobs = {open(a, "rb").read(), open(b, "rb").read()}
for delay in (0.1, 0.17, 0.25, 0.33):
    pid = os.fork()
    if pid == 0:  # copy a and b over dst in turn, as fairseq does after every save
        i = 0
        while True:
            PathManager.copy((a, b)[i % 2], dst, overwrite=True)
            i += 1
    time.sleep(delay)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    size = os.path.getsize(dst)
    print("complete" if open(dst, "rb").read() in blobs else f"partial {size}", flush=True)
"""


def test_checkpoint_copy_is_atomic_under_kill(tmp_path):
    """fairseq's checkpoint_N -> checkpoint_last copy, killed at various moments: the
    destination is always one complete file, never a prefix."""
    a, b, dst = tmp_path / "a.pt", tmp_path / "b.pt", tmp_path / "checkpoint_last.pt"
    a.write_bytes(os.urandom(4 << 20))
    b.write_bytes(os.urandom(4 << 20))
    res = subprocess.run([sys.executable, "-c", KILLED_COPIES, str(a), str(b), str(dst)],
                         capture_output=True, text=True, env=cli_env(), timeout=120)
    assert res.stdout.split("\n")[:4] == ["complete"] * 4, res.stdout + res.stderr[-2000:]
    for n in os.listdir(tmp_path):  # a killed copy's temporary file is never a checkpoint*.pt
        assert n in ("a.pt", "b.pt", "checkpoint_last.pt") or n.endswith(".tmp"), n


def test_failed_copy_leaves_destination_and_no_temporary(tmp_path, monkeypatch):
    from fairseq.file_io import PathManager

    src, dst = tmp_path / "checkpoint_3.pt", tmp_path / "checkpoint_last.pt"
    src.write_bytes(b"new" * 1000)
    dst.write_bytes(b"old")
    os.chmod(src, 0o640)

    def fail_after_some(fi, fo, length=0):
        fo.write(fi.read(10))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("shutil.copyfileobj", fail_after_some)
    with pytest.raises(OSError, match="No space left"):
        PathManager.copy(str(src), str(dst), overwrite=True)
    assert dst.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["checkpoint_3.pt", "checkpoint_last.pt"]
    monkeypatch.undo()
    assert PathManager.copy(str(src), str(dst), overwrite=True)
    assert dst.read_bytes() == b"new" * 1000 and (os.stat(dst).st_mode & 0o777) == 0o640


def _updates(path):
    return torch.load(path)["optimizer_history"][-1]["num_updates"]


def test_resume_falls_back_from_unreadable_checkpoint_last(tiny_data_bin, tmp_path):
    save = tmp_path / "ck"
    args = train_args(tiny_data_bin, save, "--save-interval-updates", "2")
    run_cli("fairseq_cli.train", args + ["--max-update", "4"])
    last = save / "checkpoint_last.pt"
    assert _updates(save / "checkpoint_1_4.pt") == 4
    last.write_bytes(b"")  # what a kill during fairseq's copy left behind
    res = run_cli("fairseq_cli.train", args + ["--max-update", "6"])
    out = res.stdout + res.stderr
    # the newest readable file: checkpoint_1_4.pt or its copy checkpoint_best.pt
    assert re.search(rf"{last} is not a readable checkpoint \(EOFError\); resuming from "
                     rf"{save}/checkpoint_(1_4|best)\.pt", out), out[-3000:]
    assert re.search(r"Loaded checkpoint .* \(epoch 1 @ 4 updates\)", out)
    assert _updates(last) == 6


def _resume(save_dir):
    """fairseq's resume path (``checkpoint_utils.load_checkpoint``) with a trainer that only
    reads the file, as ``Trainer.load_checkpoint`` does."""
    from fairseq import checkpoint_utils
    from fairseq.dataclass.configs import CheckpointConfig

    class Trainer:
        checkpoint_suffix = ""

        def load_checkpoint(self, filename, *args, **kwargs):
            self.state = checkpoint_utils.load_checkpoint_to_cpu(filename)

        def get_train_iterator(self, *args, **kwargs):
            raise StopIteration  # the state is all this test needs

    trainer = Trainer()
    with pytest.raises(StopIteration):
        checkpoint_utils.load_checkpoint(CheckpointConfig(save_dir=str(save_dir)), trainer)
    return trainer.state


def test_resume_from_truncated_checkpoint_last(tmp_path, caplog):
    hist = {"criterion_name": "CrossEntropyCriterion", "optimizer_name": "Adam",
            "lr_scheduler_state": {"best": 3.0}, "num_updates": 2}
    state = {"model": {"w": torch.arange(4.0)}, "optimizer_history": [hist], "cfg": None,
             "extra_state": {"epoch": 1}, "last_optimizer_state": None}
    torch.save(state, tmp_path / "checkpoint_1_2.pt")
    hist["num_updates"] = 4
    torch.save(state, tmp_path / "checkpoint_1_4.pt")
    torch.save(state, tmp_path / "checkpoint_last.pt")
    data = (tmp_path / "checkpoint_last.pt").read_bytes()
    (tmp_path / "checkpoint_last.pt").write_bytes(data[:len(data) // 2])
    os.utime(tmp_path / "checkpoint_1_2.pt", (1e9, 1e9))  # older than checkpoint_1_4.pt
    with caplog.at_level("WARNING"):
        got = _resume(tmp_path)
    assert got["optimizer_history"][-1]["num_updates"] == 4
    assert f"{tmp_path}/checkpoint_last.pt is not a readable checkpoint" in caplog.text
    assert f"resuming from {tmp_path}/checkpoint_1_4.pt" in caplog.text


def test_resume_with_nothing_readable_is_one_line(tmp_path):
    from fairseq import checkpoint_utils

    from fairseq_efficiency.compat import CheckpointError

    (tmp_path / "checkpoint_last.pt").write_bytes(b"")
    (tmp_path / "checkpoint_1_2.pt").write_text("not a checkpoint\n")
    with pytest.raises(CheckpointError, match="no other checkpoint.*is readable"):
        _resume(tmp_path)
    # outside a resume (generate, the tools) an unreadable file is an error, no fallback
    with pytest.raises(EOFError):
        checkpoint_utils.load_checkpoint_to_cpu(str(tmp_path / "checkpoint_last.pt"))
