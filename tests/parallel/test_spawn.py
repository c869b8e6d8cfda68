"""run_ranks: no rank outlives the process that started it."""
import os
import signal
import subprocess
import sys

import pytest

from tests.helpers import alive, cli_env, wait_for

CALLER = """
import os, sys, time
from fairseq_efficiency.parallel.spawn import run_ranks

def sleeper(rank, world, d):
    open(os.path.join(d, "rank%d.pid" % rank), "w").write(str(os.getpid()))
    time.sleep(120)

run_ranks(sleeper, 2, sys.argv[1], start_method="fork", timeout=120)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc and PR_SET_PDEATHSIG")
def test_terminated_caller_leaves_no_rank(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", CALLER, str(tmp_path)], env=cli_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    files = [tmp_path / f"rank{r}.pid" for r in range(2)]
    pids = []
    try:
        assert wait_for(lambda: all(f.exists() and f.read_text() for f in files), 120), \
            proc.stderr.read() if proc.poll() is not None else "ranks did not start"
        pids = [int(f.read_text()) for f in files]
        proc.send_signal(signal.SIGTERM)  # no handler: the caller dies, its finally never runs
        proc.wait(timeout=15)
        assert wait_for(lambda: not any(alive(p) for p in pids), 5), "a rank survived"
    finally:
        proc.kill()
        for p in pids:
            if alive(p):
                os.kill(p, signal.SIGKILL)
