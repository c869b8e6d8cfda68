"""fairseq-efficiency-launch: 2 CPU ranks train, save, and resume (torch >= 2.6 broadcast)."""
import os
import sys

import pytest

from fairseq_efficiency.cli.launch import launch, main, rank_argv
from tests.helpers import alive, cli_env, train_args, wait_for


def test_rank_argv_adds_only_missing_flags():
    argv = rank_argv(["data", "--ddp-backend", "no_c10d"], rank=1, nproc=2, port=1234)
    assert argv.count("--ddp-backend") == 1 and "no_c10d" in argv
    assert argv[-2:] == ["--distributed-rank", "1"]
    assert "tcp://127.0.0.1:1234" in argv and "--cpu" in argv
    with pytest.raises(ValueError, match="--distributed-rank"):
        rank_argv(["data", "--distributed-rank", "0"], 0, 2, 1)


@pytest.mark.parametrize("flags,msg", [(["--nproc", "0"], "--nproc must be >= 1"),
                                       (["--grace", "-1"], "--grace must be >= 0 seconds"),
                                       (["--grace", "nan"], "--grace must be >= 0 seconds")])
def test_bad_option_is_one_line_error(capsys, flags, msg):
    with pytest.raises(SystemExit) as e:
        main([*flags, "--", "fairseq-train", "x"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and msg in err and err.count("\n") == 1, err


def test_two_ranks_train_save_and_resume(tiny_data_bin, tmp_path):
    save = tmp_path / "ck"
    args = train_args(tiny_data_bin, save, "--task", "translation_efficiency")
    out = tmp_path / "rank0.log"
    for max_update in (2, 4):
        with open(out, "w") as f:
            rc = launch(["fairseq-train"] + args + ["--max-update", str(max_update)], nproc=2,
                        log_dir=str(tmp_path / "ranks"), env=cli_env(), stdout=f, timeout=300)
        log = out.read_text()
        assert rc == 0, log[-3000:]
    # the second run resumed from rank 0's checkpoint on both ranks (broadcast to rank 1)
    assert "Loaded checkpoint" in log and "@ 2 updates" in log
    assert "num_updates=4" in log or '"num_updates": "4"' in log or "num_updates 4" in log
    rank1 = (tmp_path / "ranks" / "rank1.log").read_text()
    assert "Traceback" not in rank1


def test_failing_rank_stops_the_others(tmp_path):
    # rank 1 cannot start (missing data): the launcher returns its exit code instead of hanging
    rc = launch([sys.executable, "-c", "import sys; sys.exit(3)"], nproc=2, env=cli_env(),
                timeout=60, log_dir=str(tmp_path))
    assert rc == 3


def test_rank_argv_for_hydra_uses_overrides():
    argv = rank_argv(["--config-name", "x", "distributed_training.ddp_backend=no_c10d"],
                     rank=1, nproc=2, port=1234, hydra=True)
    assert not any(a.startswith("--distributed") for a in argv)
    assert "distributed_training.ddp_backend=legacy_ddp" not in argv
    assert "common.cpu=true" in argv and "distributed_training.distributed_world_size=2" in argv
    assert "distributed_training.distributed_init_method=tcp://127.0.0.1:1234" in argv
    assert argv[-1] == "distributed_training.distributed_rank=1"
    with pytest.raises(ValueError, match="--distributed-rank"):
        rank_argv(["distributed_training.distributed_rank=0"], 0, 2, 1, hydra=True)


def test_two_ranks_hydra_train(tiny_data_bin, tmp_path):
    from tests.cli.test_end_to_end import REPO
    from fairseq_efficiency.cli.userdir import userdir

    save, out = tmp_path / "ck", tmp_path / "rank0.log"
    with open(out, "w") as f:
        rc = launch(["fairseq-hydra-train", "--config-dir", os.path.join(REPO, "examples", "hydra"),
                     "--config-name", "tiny_transformer", f"common.user_dir={userdir()}",
                     f"task.data={tiny_data_bin}", f"checkpoint.save_dir={save}",
                     "optimization.max_update=2", "dataset.max_tokens=1000",
                     "model.encoder.layers=1", "model.decoder.layers=1",
                     f"hydra.run.dir={tmp_path / 'hydra_run'}"],
                    nproc=2, log_dir=str(tmp_path / "ranks"), env=cli_env(), stdout=f, timeout=300)
    log = out.read_text()
    assert rc == 0, log[-3000:]
    assert "distributed init (rank 0)" in log and (save / "checkpoint_last.pt").exists()


# -- no rank outlives the launcher ------------------------------------------------------------
# each rank writes its pid to DIR/rank<R>.pid (R: the --distributed-rank the launcher appends)
# and sleeps; the launcher accepts any command, so no training is needed to hold the ranks
SLEEPER = ("import os, sys, time; d = os.environ['PID_DIR']; "
           "open(os.path.join(d, 'rank%s.pid' % sys.argv[-1]), 'w').write(str(os.getpid())); "
           "time.sleep(120)")


def _default_stop_signals():
    import signal

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


def _start_launcher(tmp_path, rank_code=SLEEPER, grace=10):
    import subprocess

    env = cli_env()
    env["PID_DIR"] = str(tmp_path)
    # the same code as the console script
    # the launcher as started from a terminal: a test run under `nohup ... &` would hand it
    # SIGHUP and SIGINT ignored, which the launcher deliberately keeps ignored
    proc = subprocess.Popen(
        [sys.executable, "-m", "fairseq_efficiency.cli.launch", "--nproc", "2",
         "--grace", str(grace), "--",
         sys.executable, "-c", rank_code],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        preexec_fn=_default_stop_signals)
    pid_files = [tmp_path / f"rank{r}.pid" for r in range(2)]
    assert wait_for(lambda: all(p.exists() and p.read_text() for p in pid_files), 60), \
        proc.stderr.read() if proc.poll() is not None else "ranks did not start"
    pids = [int(p.read_text()) for p in pid_files]
    assert all(alive(p) for p in pids)
    return proc, pids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc and PR_SET_PDEATHSIG")
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT", "SIGHUP"])
def test_stop_signal_to_launcher_stops_every_rank(tmp_path, sig):
    import signal

    proc, pids = _start_launcher(tmp_path)
    try:
        proc.send_signal(getattr(signal, sig))
        rc = proc.wait(timeout=15)
        assert wait_for(lambda: not any(alive(p) for p in pids), 5), "a rank survived"
        assert rc == 128 + getattr(signal, sig)  # as a shell reports a signal's exit
    finally:
        proc.kill()
        for p in pids:
            if alive(p):
                os.kill(p, signal.SIGKILL)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc and PR_SET_PDEATHSIG")
def test_killed_launcher_takes_its_ranks_along(tmp_path):
    import signal

    proc, pids = _start_launcher(tmp_path)
    try:
        groups = [os.getpgid(p) for p in pids + [proc.pid]]
        proc.kill()  # no handler runs: the kernel's parent-death signal must end the ranks
        proc.wait(timeout=15)
        assert wait_for(lambda: not any(alive(p) for p in pids), 5), "a rank survived"
        # the ranks share a process group of their own (signals reach their children too)
        assert groups[0] == groups[1] != groups[2]
    finally:
        for p in pids:
            if alive(p):
                os.kill(p, signal.SIGKILL)


STUBBORN = "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN); " + SLEEPER


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")
def test_ranks_that_ignore_sigterm_are_killed_at_a_second_signal(tmp_path):
    import signal
    import time

    grace = 120  # far longer than the launcher needs to react on a loaded machine
    proc, pids = _start_launcher(tmp_path, STUBBORN, grace=grace)
    try:
        t0 = time.time()
        proc.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        assert proc.poll() is None and all(alive(p) for p in pids)  # within the grace period
        proc.send_signal(signal.SIGINT)  # a second stop signal: SIGKILL now
        assert proc.wait(timeout=grace / 2) == 128 + signal.SIGTERM
        assert time.time() - t0 < grace / 2  # not at the end of the grace period
        assert wait_for(lambda: not any(alive(p) for p in pids), 5), "a rank survived"
    finally:
        proc.kill()
        for p in pids:
            if alive(p):
                os.kill(p, signal.SIGKILL)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")
def test_ranks_that_ignore_sigterm_are_killed_after_the_grace_period(tmp_path, monkeypatch):
    import time

    monkeypatch.setenv("PID_DIR", str(tmp_path))
    t0 = time.time()
    rc = launch([sys.executable, "-c", STUBBORN], nproc=2, timeout=4, grace=1.0)
    assert rc == 124 and time.time() - t0 < 60  # the ranks sleep 120 s: killed, not awaited
    pids = [int((tmp_path / f"rank{r}.pid").read_text()) for r in range(2)]
    assert not any(alive(p) for p in pids)
