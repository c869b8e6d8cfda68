"""``fairseq-efficiency-launch``: run a fairseq command as N data-parallel CPU ranks.

fairseq's own spawning does not work for CPU/gloo training with this torch, but
training does when every rank is started separately. This launcher does that::

    fairseq-efficiency-launch --nproc 2 -- fairseq-train DATA-BIN --user-dir ... [args]

starts ``nproc`` processes, each running the command with::

    --cpu --distributed-world-size N --distributed-rank R --distributed-backend gloo
    --distributed-init-method tcp://127.0.0.1:PORT --distributed-no-spawn
    --ddp-backend legacy_ddp

(flags the command already sets are kept; for ``fairseq-hydra-train`` the same
settings as ``distributed_training.*``/``common.cpu`` overrides), ``OMP_NUM_THREADS``
set per rank.
Rank 0's output goes to the terminal, the others' to ``--log-dir`` (or are
discarded). If one rank fails, the others are stopped and its exit code is
returned, so a crashed rank never leaves the rest hanging.

No rank outlives the launcher: the ranks run in a process group of their own;
SIGTERM, SIGINT and SIGHUP sent to the launcher are forwarded to that group
(SIGKILL after a grace period, or at a second signal) and the launcher exits
with 128 + the signal number; on Linux every rank also gets SIGTERM from the
kernel when the launcher dies without a chance to clean up (``kill -9``;
``prctl(PR_SET_PDEATHSIG)``).
"""
import argparse
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

from fairseq_efficiency.parallel.procs import free_port, parent_death_signal, prctl

_MODULES = {
    "fairseq-train": "fairseq_cli.train",
    "fairseq-hydra-train": "fairseq_cli.hydra_train",
    "fairseq-validate": "fairseq_cli.validate",
}


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _has(argv, flag):
    return any(a == flag or a.startswith(flag + "=") for a in argv)


def _distributed_settings(nproc, port):
    """(fairseq flag, hydra key, value) of every setting a CPU rank needs; value None: a switch."""
    dt = "distributed_training."
    return [
        ("--cpu", "common.cpu", None),
        ("--distributed-world-size", dt + "distributed_world_size", str(nproc)),
        ("--distributed-backend", dt + "distributed_backend", "gloo"),
        ("--distributed-init-method", dt + "distributed_init_method", f"tcp://127.0.0.1:{port}"),
        ("--distributed-no-spawn", dt + "distributed_no_spawn", None),
        ("--ddp-backend", dt + "ddp_backend", "legacy_ddp"),
    ]


def _has_override(argv, key):
    return any(a.lstrip("+").startswith(key + "=") for a in argv)


def rank_argv(argv, rank, nproc, port, hydra=False):
    """The command line of one rank: ``argv`` plus the distributed settings it lacks, as
    flags (``fairseq-train``) or as ``key=value`` overrides (``fairseq-hydra-train``)."""
    rank_flag, rank_key = "--distributed-rank", "distributed_training.distributed_rank"
    if _has(argv, rank_flag) or _has_override(argv, rank_key):
        raise ValueError("do not pass --distributed-rank: the launcher sets it per rank")
    extra = []
    for flag, key, value in _distributed_settings(nproc, port):
        if hydra:
            if not _has_override(argv, key):
                extra.append(f"{key}={'true' if value is None else value}")
        elif not _has(argv, flag):
            extra += [flag] if value is None else [flag, value]
    return list(argv) + extra + ([f"{rank_key}={rank}"] if hydra else [rank_flag, str(rank)])


def _command(argv):
    """Map ``fairseq-train ...`` to ``python -m fairseq_cli.train ...`` (same interpreter)."""
    if not argv:
        raise ValueError("no command given: fairseq-efficiency-launch --nproc 2 -- fairseq-train ...")
    head = os.path.basename(argv[0])
    if head in _MODULES:
        return [sys.executable, "-m", _MODULES[head]], list(argv[1:])
    if shutil.which(argv[0]) is None:
        raise ValueError(f"command not found: {argv[0]}")
    return [argv[0]], list(argv[1:])


def _rank_preexec(pgid: int, parent_pid: int):
    """Runs in each rank between fork and exec: join the ranks' process group (``pgid``
    0: start it) and die with the launcher."""
    def preexec():
        os.setpgid(0, pgid)
        parent_death_signal(parent_pid)
    return preexec


class _Ranks:
    """The rank processes, one process group; stopped by signal or at the end."""

    def __init__(self):
        self.procs = []
        self.pgid = None
        self.signals = []  # stop signals received by the launcher, in order

    def start(self, cmd, **kwargs):
        if os.name == "posix":
            if sys.platform.startswith("linux"):
                prctl()
            kwargs["preexec_fn"] = _rank_preexec(self.pgid or 0, os.getpid())
        p = subprocess.Popen(cmd, **kwargs)
        self.procs.append(p)
        if self.pgid is None and os.name == "posix":
            self.pgid = p.pid
        return p

    def _send(self, sig):
        """``sig`` to the group (grandchildren included) while one of its ranks is
        unreaped (the group id cannot have been reused then)."""
        if not any(p.returncode is None for p in self.procs):
            return
        if self.pgid is not None:
            try:
                os.killpg(self.pgid, sig)
                return
            except ProcessLookupError:
                pass
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(sig)

    def stop(self, sig=signal.SIGTERM, grace=10.0):
        """Send ``sig``, wait up to ``grace`` s (a further stop signal cuts it short),
        then SIGKILL what is left."""
        self._send(sig)
        seen = len(self.signals)
        deadline = time.time() + grace
        while any(p.poll() is None for p in self.procs):
            if time.time() > deadline or len(self.signals) > seen:
                self._send(signal.SIGKILL)
                break
            time.sleep(0.05)
        for p in self.procs:
            p.wait()


def launch(argv, nproc=2, threads_per_rank=1, port=None, log_dir=None, env=None, timeout=None,
           stdout=None, grace=10.0):
    """Run ``argv`` (e.g. ``["fairseq-train", data, ...]``) as ``nproc`` ranks; return the exit code.

    ``stdout``: a file for rank 0's output (default: this process's stdout).
    A stop signal (SIGTERM, SIGINT, SIGHUP) received meanwhile is forwarded to the
    ranks, which get ``grace`` seconds before SIGKILL; the return code is then
    128 + the signal number (handlers are only installed from the main thread).
    """
    if nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {nproc}")
    if threads_per_rank < 1:
        raise ValueError(f"--threads-per-rank must be >= 1, got {threads_per_rank}")
    if not grace >= 0:  # also NaN
        raise ValueError(f"--grace must be >= 0 seconds, got {grace}")
    prefix, args = _command(argv)
    hydra = os.path.basename(argv[0]) == "fairseq-hydra-train"
    port = port or free_port()
    base_env = dict(env if env is not None else os.environ)
    base_env["OMP_NUM_THREADS"] = str(threads_per_rank)
    if log_dir:
        os.makedirs(log_dir, exist_ok=True)
    ranks, logs, previous = _Ranks(), [], {}
    if threading.current_thread() is threading.main_thread():
        for sig in STOP_SIGNALS:
            if signal.getsignal(sig) is not signal.SIG_IGN:  # keep nohup's SIGHUP ignored
                previous[sig] = signal.signal(sig, lambda signum, frame: ranks.signals.append(signum))
    try:
        for rank in range(nproc):
            if ranks.signals:
                break
            out = stdout
            if rank > 0:
                out = open(os.path.join(log_dir, f"rank{rank}.log"), "w") if log_dir else subprocess.DEVNULL
                if log_dir:
                    logs.append(out)
            cmd = prefix + rank_argv(args, rank, nproc, port, hydra=hydra)
            ranks.start(cmd, env=base_env, stdout=out, stderr=subprocess.STDOUT if out else None)
        deadline = time.time() + timeout if timeout else None
        while True:
            if ranks.signals:
                ranks.stop(ranks.signals[0], grace)
                return 128 + ranks.signals[0]
            codes = [p.poll() for p in ranks.procs]
            failed = [c for c in codes if c not in (None, 0)]
            if failed:
                return failed[0]
            if all(c == 0 for c in codes):
                return 0
            if deadline and time.time() > deadline:
                return 124
            time.sleep(0.2)
    finally:
        ranks.stop(signal.SIGTERM, grace)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for f in logs:
            f.close()


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="fairseq-efficiency-launch",
        description="Run a fairseq command as N data-parallel CPU (gloo) ranks.",
        usage="%(prog)s [--nproc N] [--threads-per-rank T] [--port P] [--log-dir D] [--grace S] "
              "-- fairseq-train ...",
    )
    parser.add_argument("--nproc", type=int, default=2, help="number of ranks")
    parser.add_argument("--threads-per-rank", type=int, default=1, help="OMP_NUM_THREADS of each rank")
    parser.add_argument("--port", type=int, default=None, help="TCP port for the rendezvous (default: a free one)")
    parser.add_argument("--log-dir", default=None, help="write ranks 1..N-1 output to LOG_DIR/rankR.log")
    parser.add_argument("--grace", type=float, default=10.0,
                        help="seconds the ranks get to exit after a stop signal before SIGKILL "
                             "(a second signal cuts it short; default 10)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the fairseq command after --")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    try:
        return launch(command, args.nproc, args.threads_per_rank, args.port, args.log_dir,
                      grace=args.grace)
    except ValueError as e:
        parser.exit(2, f"fairseq-efficiency-launch: error: {e}\n")


if __name__ == "__main__":
    sys.exit(main())
