"""fairseq-efficiency-bench: dry runs, and bad arguments refused in one line."""
import pytest

from fairseq_efficiency.cli.bench import main as bench_main
from tests.bench.test_bench import SMOKE


def test_dry_run_prints_every_command_and_writes_nothing(tmp_path, capsys):
    assert bench_main([SMOKE, "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count("fairseq_cli.train") == 2 and "--finetune-from-model" in out
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args,message", [
    (["--jobs", "0"], "--jobs must be >= 1"),
    (["--methods", "nope"], "unknown method nope (spec has baseline, prune50)"),
])
def test_bad_arguments_are_one_line_and_status_2(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as e:
        bench_main([SMOKE, "--out", str(tmp_path / "out"), *args])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.splitlines() == [f"fairseq-efficiency-bench: error: {message}"]
    assert not (tmp_path / "out").exists()
