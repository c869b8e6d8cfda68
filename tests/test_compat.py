"""compat: config values parsed as literals only, checkpoints holding code refused, atomic
copies that leave the old file or the whole new one, the resume fallback's candidates."""
import os
import signal
import subprocess
import sys
import time

import pytest

from fairseq_efficiency.compat import (CheckpointError, UnsafeValueError, _fallback_candidates,
                                       atomic_copy, check_checkpoint_config, is_refusal,
                                       literal_list, literal_value, looks_like_code)
from tests.helpers import cli_env


def test_literal_values_and_bounded_list_arithmetic():
    assert literal_value("[(512, 3)] * 2 + [(1024, 3)]") == [(512, 3), (512, 3), (1024, 3)]
    assert literal_value(" {'beam': 4} ") == {"beam": 4}
    for text in ("__import__('os')", "[0] * 10 ** 12", "open('x')", "a.b"):
        with pytest.raises(UnsafeValueError, match="not a literal value"):
            literal_value(text, "--opt")
    assert literal_list("[2, 2]", "--balance") == [2, 2] and literal_list(3, "--b") == [3]
    assert literal_list(None, "--b") is None
    for bad in ("[2, 'x']", "[True]", "[1.5]", "print(1)"):
        with pytest.raises(UnsafeValueError, match="--balance"):
            literal_list(bad, "--balance")


def test_checkpoint_config_holding_code_is_refused():
    assert looks_like_code("__import__('os').system('x') or [2]")
    assert looks_like_code("().__class__") and not looks_like_code("[(512, 3)] * 20")
    check_checkpoint_config({"cfg": {"model": {"layers": "[2, 2]"}}}, "ok.pt")
    with pytest.raises(CheckpointError, match=r"checkpoint bad.pt: option model.balance\[1\] "
                                              "holds Python code"):
        check_checkpoint_config({"cfg": {"model": {"balance": ["1", "exec('x')"]}}}, "bad.pt")
    assert is_refusal(UnsafeValueError("x")) and not is_refusal(EOFError())


def test_atomic_copy_replaces_whole_or_not_at_all(tmp_path, monkeypatch):
    src, dst = tmp_path / "checkpoint_3.pt", tmp_path / "checkpoint_last.pt"
    src.write_bytes(b"new" * 1000)
    dst.write_bytes(b"old")
    atomic_copy(str(src), str(dst))
    assert dst.read_bytes() == b"new" * 1000

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    src.write_bytes(b"newer")
    with pytest.raises(OSError, match="disk full"):
        atomic_copy(str(src), str(dst))
    assert dst.read_bytes() == b"new" * 1000
    assert sorted(os.listdir(tmp_path)) == ["checkpoint_3.pt", "checkpoint_last.pt"]


def test_fallback_candidates_are_the_other_checkpoints_newest_first(tmp_path):
    """Only those of the same ``--checkpoint-suffix``."""
    for i, name in enumerate(["checkpoint1-s.pt", "checkpoint_best-s.pt", "checkpoint2.pt",
                              "checkpoint_last-s.pt", "other-s.pt"]):
        (tmp_path / name).write_bytes(b"x")
        os.utime(tmp_path / name, (time.time() + i, time.time() + i))
    cands = [os.path.basename(p) for p in _fallback_candidates(str(tmp_path /
                                                                    "checkpoint_last-s.pt"))]
    assert cands == ["checkpoint_best-s.pt", "checkpoint1-s.pt"]


EXIT_PROBE = '''
import sys, time
import torch
from fairseq.data import iterators
if sys.argv[1] == "plugin":
    from fairseq_efficiency import compat
    compat.install()

def batches():  # each batch is made in torch's C++ code, with the GIL released
    a = torch.randn(200, 200)
    while True:
        yield a @ a

it = iterators.BufferedIterator(100000, range(100000))  # room for every batch: never waits
it._iterable = batches()
next(it)  # the prefetch thread is still making batches when the run ends
time.sleep(0.05)
'''


def test_prefetch_thread_busy_at_exit_does_not_abort_the_run(tmp_path):
    """A run stopping inside an epoch exits while fairseq's prefetch thread is in torch code."""
    probe = tmp_path / "probe.py"
    probe.write_text(EXIT_PROBE)

    def run(mode):
        return subprocess.run([sys.executable, str(probe), mode], capture_output=True,
                              text=True, timeout=120, env=cli_env())

    plain = run("plain")
    if plain.returncode == 0:
        pytest.skip("this Python ends daemon threads at exit without aborting")
    assert plain.returncode == -signal.SIGABRT and "terminate called" in plain.stderr
    res = run("plugin")
    assert res.returncode == 0 and "terminate called" not in res.stderr, res.stderr[-2000:]


def test_prefetching_still_yields_every_batch_in_order():
    from fairseq.data import iterators

    from fairseq_efficiency import compat

    compat.install()
    assert list(iterators.BufferedIterator(3, list(range(50)))) == list(range(50))
    it = iterators.BufferedIterator(3, list(range(50)))
    assert [next(it) for _ in range(5)] == list(range(5))
