"""fairseq-efficiency-launch: 2 CPU ranks train, save, and resume (torch >= 2.6 broadcast)."""
import os
import sys

import pytest

from fairseq_efficiency.cli.launch import launch, main, rank_argv
from tests.helpers import cli_env, train_args


def test_rank_argv_adds_only_missing_flags():
    argv = rank_argv(["data", "--ddp-backend", "no_c10d"], rank=1, nproc=2, port=1234)
    assert argv.count("--ddp-backend") == 1 and "no_c10d" in argv
    assert argv[-2:] == ["--distributed-rank", "1"]
    assert "tcp://127.0.0.1:1234" in argv and "--cpu" in argv
    with pytest.raises(ValueError, match="--distributed-rank"):
        rank_argv(["data", "--distributed-rank", "0"], 0, 2, 1)


def test_bad_nproc_is_one_line_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--nproc", "0", "--", "fairseq-train", "x"])
    assert e.value.code == 2 and "--nproc must be >= 1" in capsys.readouterr().err


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
