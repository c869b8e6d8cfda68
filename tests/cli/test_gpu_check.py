"""benchmarks/gpu_check.sh on a machine without a CUDA GPU: says so, writes nothing, exits 0."""
import os
import subprocess
import sys

from tests.helpers import cli_env

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "gpu_check.sh")


def _run(work, python, **env):
    e = cli_env()
    e.update(PYTHON=python, CUDA_VISIBLE_DEVICES="", **env)  # no GPU, whatever the machine has
    return subprocess.run(["bash", SCRIPT, str(work)], env=e, capture_output=True, text=True,
                          timeout=120)


def test_without_cuda_says_so_and_exits_0(tmp_path):
    res = _run(tmp_path / "work", sys.executable)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: no CUDA GPU (torch ")
    assert lines[0].endswith("0 devices): nothing to check")
    assert not (tmp_path / "work").exists()  # nothing prepared, nothing trained


def test_python_without_torch_is_an_error(tmp_path):
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'ModuleNotFoundError: torch' >&2\nexit 1\n")
    fake.chmod(0o755)
    res = _run(tmp_path / "work", str(fake))
    assert res.returncode == 2 and "cannot import torch" in res.stderr
