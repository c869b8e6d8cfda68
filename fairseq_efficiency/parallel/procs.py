"""Local rank processes: a free rendezvous port, and ranks that die with their parent.

Shared by :mod:`.spawn` (ranks of a function) and ``fairseq-efficiency-launch``
(ranks of a fairseq command); standard library only.
"""
import os
import signal
import socket
import sys

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_libc = None


def prctl():
    """libc's ``prctl`` (load it once in the parent: nothing should be loaded after a fork)."""
    global _libc
    if _libc is None:
        import ctypes

        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc.prctl


def parent_death_signal(parent_pid: int, sig: int = signal.SIGTERM) -> bool:
    """Have Linux send ``sig`` to this process when its parent ``parent_pid`` dies
    (``prctl(PR_SET_PDEATHSIG)``, kept across ``exec``); if the parent is already gone,
    send it now. Returns False (and does nothing) on other systems."""
    if not sys.platform.startswith("linux"):
        return False
    if prctl()(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        return False
    if os.getppid() != parent_pid:  # the parent died before the prctl
        os.kill(os.getpid(), sig)
    return True


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for a gloo/tcp rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
