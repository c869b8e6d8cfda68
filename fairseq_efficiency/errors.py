"""User errors of the plugin: one line in fairseq's command lines, tracebacks for bugs.

Every check of a user-supplied option or file raises :class:`PluginConfigError`
(a ``ValueError``, so library callers catch it as before); a checkpoint, or a
config value inside one, that is refused or unreadable raises its subclass
:class:`CheckpointError`. Inside a fairseq command (``fairseq-train``,
``fairseq-generate``, ...) either one ends the process the same way
(:func:`exit_on_user_error`): one logged line ``fairseq-efficiency: <message>``
and exit status :data:`USER_ERROR_STATUS` (2, argparse's status for bad
arguments). Any other exception keeps its traceback (Python's status 1).

It gets there by one of two doors: the places where fairseq calls into the plugin
(task set-up, model and criterion building, the hook calls) are wrapped in
:class:`user_errors`, and an error raised inside fairseq's own code (a checkpoint
refused while fairseq reads it) that nothing catches reaches the
:func:`install_excepthook` hook.
"""
import contextlib
import logging
import os
import sys
import threading

logger = logging.getLogger(__name__)


#: exit status of a fairseq command ended by a user error
USER_ERROR_STATUS = 2


class PluginConfigError(ValueError):
    """An invalid option, option combination or input file of the plugin."""


class CheckpointError(PluginConfigError):
    """A checkpoint, or a config value read from one or given as an option, refused as
    unsafe or unreadable."""


def fairseq_command_line() -> bool:
    """True inside one of fairseq's command-line tools (console script or ``python -m``)."""
    main = sys.modules.get("__main__")
    module = getattr(getattr(main, "__spec__", None), "name", None) or ""
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return module.startswith("fairseq_cli.") or (
        prog.startswith("fairseq-") and not prog.startswith("fairseq-efficiency"))


def _exit(status):
    """``SystemExit(status)``; once training runs, ``os._exit`` after flushing the logs: Python's
    shutdown stops daemon threads (fairseq's batch prefetcher) wherever they are, and one
    stopped inside torch's C++ code aborts the process (status 134) instead."""
    if any(t.daemon and t.is_alive() for t in threading.enumerate()):
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os._exit(status)
    raise SystemExit(status) from None


def exit_on_user_error(exc):
    """Inside a fairseq command, end the process for the user error ``exc``: one logged
    line, exit status :data:`USER_ERROR_STATUS`. Returns (doing nothing) otherwise."""
    if isinstance(exc, PluginConfigError) and fairseq_command_line():
        logger.error("fairseq-efficiency: %s", " ".join(str(exc).split()))
        _exit(USER_ERROR_STATUS)


class user_errors(contextlib.ContextDecorator):
    """Decorator/context manager at the plugin's edge: a :class:`PluginConfigError` that
    reaches it inside a fairseq command ends it (:func:`exit_on_user_error`)."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        exit_on_user_error(exc)
        return False


def install_excepthook():
    """Idempotently route user errors that nothing caught through :func:`exit_on_user_error`
    (``sys.excepthook``; a ``SystemExit`` raised there sets the exit status)."""
    prev = sys.excepthook
    if getattr(prev, "fairseq_efficiency_user_errors", False):
        return

    def hook(exc_type, exc, tb):
        exit_on_user_error(exc)
        prev(exc_type, exc, tb)

    hook.fairseq_efficiency_user_errors = True
    sys.excepthook = hook
