"""PluginConfigError: one logged line and status 2 inside fairseq commands, an exception elsewhere."""
import logging
import subprocess
import sys

import pytest

from fairseq_efficiency import errors
from fairseq_efficiency.errors import CheckpointError, PluginConfigError, user_errors


@user_errors()
def _fail(exc):
    raise exc


def test_user_error_is_one_line_and_status_2_in_a_fairseq_command(monkeypatch, caplog):
    monkeypatch.setattr(sys, "argv", ["/venv/bin/fairseq-train", "data-bin"])
    # no daemon thread here (else the process would end at once, see the CLI tests)
    monkeypatch.setattr(errors.threading, "enumerate", lambda: [])
    with caplog.at_level(logging.ERROR, logger="fairseq_efficiency"):
        with pytest.raises(SystemExit) as e:
            _fail(PluginConfigError("--x must be > 0,\n  got -1"))
    assert e.value.code == 2 and e.value.__suppress_context__
    assert [r.getMessage() for r in caplog.records] == ["fairseq-efficiency: --x must be > 0, got -1"]
    # real bugs keep their exception (and traceback)
    for exc in (ValueError("a bug"), RuntimeError("a bug"), KeyError("a bug")):
        with pytest.raises(type(exc)):
            _fail(exc)


def test_user_error_is_an_exception_for_library_callers(monkeypatch):
    for prog in ("/usr/lib/python3/site-packages/pytest/__main__.py",
                 "/venv/bin/fairseq-efficiency-prune"):  # the plugin's own tools report their own
        monkeypatch.setattr(sys, "argv", [prog])
        with pytest.raises(ValueError, match="--x"):
            _fail(PluginConfigError("--x"))


def test_uncaught_user_errors_end_a_fairseq_command_the_same_way(tmp_path):
    """An error raised inside fairseq's own code (a refused checkpoint) that nothing catches:
    the same one line and status as at the plugin's edge; bugs keep traceback and status 1."""
    script = tmp_path / "fairseq-generate"
    script.write_text(  # errors.py alone (no torch/fairseq import: fast)
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('errors', {errors.__file__!r})\n"
        "e = importlib.util.module_from_spec(spec); spec.loader.exec_module(e)\n"
        "e.install_excepthook(); e.install_excepthook()\n"
        "kind = sys.argv[1]\n"
        "raise {'checkpoint': e.CheckpointError, 'option': e.PluginConfigError,\n"
        "       'bug': RuntimeError}[kind](kind + ' is refused,\\n  badly')\n")
    for kind in ("checkpoint", "option", "bug"):
        res = subprocess.run([sys.executable, str(script), kind], capture_output=True, text=True)
        out = res.stdout + res.stderr
        if kind == "bug":
            assert res.returncode == 1 and "Traceback" in out
            continue
        assert res.returncode == errors.USER_ERROR_STATUS == 2, out
        assert "Traceback" not in out
        lines = [line for line in out.splitlines() if kind in line]
        assert len(lines) == 1 and lines[0].endswith(f"fairseq-efficiency: {kind} is refused, badly")


def test_checkpoint_errors_are_user_errors():
    assert issubclass(CheckpointError, PluginConfigError) and issubclass(CheckpointError, ValueError)
