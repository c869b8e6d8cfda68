"""PluginConfigError: one logged line and status 2 inside fairseq commands, an exception elsewhere."""
import logging
import sys

import pytest

from fairseq_efficiency import errors
from fairseq_efficiency.errors import PluginConfigError, user_errors


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
