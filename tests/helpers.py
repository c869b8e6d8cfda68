"""Helpers shared by the tests: tiny corpus settings and a fairseq CLI runner."""
import contextlib
import os
import subprocess
import sys

from fairseq_efficiency.cli.userdir import userdir
from fairseq_efficiency.data.prepare import prepare
from fairseq_efficiency.data.synthetic import CorpusConfig

TINY = CorpusConfig(seed=3, train_size=600, valid_size=60, test_size=60,
                    nouns=60, verbs=30, adjectives=30, adverbs=10, max_len=20)

# a model small enough that a few updates take well under a second
TINY_LSTM = [
    "--arch", "lstm", "--encoder-embed-dim", "16", "--encoder-hidden-size", "16",
    "--decoder-embed-dim", "16", "--decoder-hidden-size", "16",
    "--decoder-out-embed-dim", "16", "--encoder-layers", "1", "--decoder-layers", "1",
]


def cli_env():
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONWARNINGS"] = "ignore"
    return env


def run_cli(module, args, cwd=None, check=True, timeout=600, env=None):
    """Run ``python -m module args`` (e.g. ``fairseq_cli.train``) and return the result.

    fairseq CLIs are run as subprocesses, exactly as a user runs them.
    """
    cmd = [sys.executable, "-m", module] + [str(a) for a in args]
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                         env=env or cli_env())
    if check and res.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
        )
    return res


def train_args(data_bin, save_dir, *extra):
    """Common fairseq-train arguments for a tiny CPU run with the plugin."""
    return [
        str(data_bin), "--user-dir", userdir(), "--cpu", "--seed", "1", "--num-workers", "0",
        "--optimizer", "adam", "--lr", "0.005", "--max-tokens", "1000",
        "--save-dir", str(save_dir), "--log-format", "simple", "--log-interval", "1",
        "--no-progress-bar",
        *TINY_LSTM, *map(str, extra),
    ]


def gpu_train_args(data_bin, save_dir, *extra):
    """:func:`train_args` on the first CUDA device (fairseq's default without ``--cpu``)."""
    return [a for a in train_args(data_bin, save_dir, *extra) if a != "--cpu"]


def assert_one_line_error(res, message):
    """A user error inside a fairseq command: exit status 2 and one line
    ``fairseq-efficiency: ...`` naming it, no traceback."""
    out = res.stdout + res.stderr
    assert res.returncode == 2, (res.returncode, out[-3000:])
    assert "Traceback" not in out, out[-3000:]
    lines = [line for line in out.splitlines() if "fairseq-efficiency:" in line]
    assert len(lines) == 1 and message in lines[0], out[-3000:]


def alive(pid):
    """Process ``pid`` is running (not gone, not a zombie left to a parent that does not
    reap it); Linux only (/proc)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_for(cond, timeout):
    """Poll ``cond()`` until it is true or ``timeout`` seconds passed; its last value."""
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


@contextlib.contextmanager
def fairseq_best_state():
    """Yield fairseq's ``(save_checkpoint, should_stop_early)`` and put back the best-loss
    attributes they held (tests that set or forget them leave no trace)."""
    from fairseq import checkpoint_utils
    from fairseq_cli import train as fairseq_train

    fns = (checkpoint_utils.save_checkpoint, fairseq_train.should_stop_early)
    saved = [(fn, a, getattr(fn, a)) for fn in fns for a in ("best", "num_runs")
             if hasattr(fn, a)]
    try:
        yield fns
    finally:
        for fn in fns:
            for a in ("best", "num_runs"):
                if hasattr(fn, a):
                    delattr(fn, a)
        for fn, a, v in saved:
            setattr(fn, a, v)
