"""Rank processes: a rendezvous port that is free, a child that dies with its parent."""
import signal
import socket
import subprocess
import sys
import textwrap

from fairseq_efficiency.parallel.procs import free_port
from tests.helpers import alive, wait_for


def test_free_port_can_be_bound():
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", port))


def test_child_dies_with_its_parent(tmp_path):
    """A parent that sets up a child with parent_death_signal, then is killed: the child
    gets SIGTERM from Linux (the library is loaded by path: no torch import, fast)."""
    import fairseq_efficiency.parallel.procs as procs

    pid_file = tmp_path / "child.pid"
    parent = textwrap.dedent(f"""
        import importlib.util, os, signal, sys, time
        spec = importlib.util.spec_from_file_location("procs", {procs.__file__!r})
        procs = importlib.util.module_from_spec(spec); spec.loader.exec_module(procs)
        procs.prctl()  # loaded before the fork
        me = os.getpid()
        child = os.fork()
        if child == 0:
            assert procs.parent_death_signal(me, signal.SIGTERM)
            open({str(pid_file)!r}, "w").write(str(os.getpid()))
            time.sleep(60)
            os._exit(0)
        time.sleep(60)
    """)
    p = subprocess.Popen([sys.executable, "-c", parent])
    try:
        assert wait_for(lambda: pid_file.exists() and pid_file.read_text(), 20)
        child = int(pid_file.read_text())
        assert alive(child)
        p.send_signal(signal.SIGKILL)
        p.wait(10)
        assert wait_for(lambda: not alive(child), 10)
    finally:
        p.kill()
