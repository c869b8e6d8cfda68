"""User errors of the plugin: one line in fairseq's command lines, tracebacks for bugs.

Every check of a user-supplied option or file raises :class:`PluginConfigError`
(a ``ValueError``, so library callers catch it as before). The places where
fairseq calls into the plugin (task set-up, model and criterion building, the
hook calls) are wrapped in :func:`user_errors`: inside a fairseq command
(``fairseq-train``, ``fairseq-generate``, ...) such an error is logged as one
line, ``fairseq-efficiency: <message>``, and the process exits with status 2,
argparse's status for bad arguments (:func:`_exit`). Any other exception keeps its
traceback.
"""
import contextlib
import logging
import os
import sys
import threading

logger = logging.getLogger(__name__)


class PluginConfigError(ValueError):
    """An invalid option, option combination or input file of the plugin."""


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


class user_errors(contextlib.ContextDecorator):
    """Decorator/context manager at the plugin's edge: a :class:`PluginConfigError` that
    reaches it inside a fairseq command becomes one logged line and exit status 2."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if isinstance(exc, PluginConfigError) and fairseq_command_line():
            logger.error("fairseq-efficiency: %s", " ".join(str(exc).split()))
            _exit(2)
        return False
