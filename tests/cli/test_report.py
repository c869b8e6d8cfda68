"""fairseq-efficiency-report: tables, JSON and plots of real runs; one-line refusals."""
import json

import pytest

from fairseq_efficiency.cli.report import main as report_main
from fairseq_efficiency.report.logs import read_log
from tests.report.fake_logs import write_log


def test_report_of_two_methods_two_seeds_writes_table_json_and_plots(real_run, tmp_path):
    import shutil

    runs = tmp_path / "runs"
    shutil.copytree(real_run, runs / "baseline.seed1")
    real = read_log(str(runs / "baseline.seed1" / "train.log"))
    losses = [p.loss for p in real.valid]
    write_log(str(runs / "baseline.seed2" / "train.log"), [losses[0] + 0.05, losses[1] - 0.05],
              per_epoch=12, wpb=900, sec_per_update=0.2, interval=2)
    for s, d in ((1, 0.2), (2, 0.1)):
        write_log(str(runs / f"autoassist.seed{s}" / "train.log"), [losses[0] - d, losses[1] - d],
                  per_epoch=10, wpb=800, sec_per_update=0.3, interval=2,
                  extra={"keep_rate": 0.8, "rho": 0.3, "T": 5.0, "assistant_acc": 0.7})
    out = tmp_path / "rep"
    assert report_main([str(runs), "--out", str(out)]) == 0
    doc = json.load(open(out / "report.json"))
    assert set(doc["methods"]) == {"baseline", "autoassist"}
    base = doc["methods"]["baseline"]
    assert base["seeds"] == [1, 2] and base["bleu"]["values"] == [12.34]
    assert base["nonzero_params"]["values"][0] > 1000  # from the real checkpoint
    assert doc["methods"]["autoassist"]["to_target"]["reached"] == 2
    for png in ("valid_loss_vs_boss_tokens", "valid_loss_vs_wall_s", "valid_loss_vs_updates",
                "techniques"):
        assert (out / f"{png}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "report.md").read_text()
    assert "| baseline | 2 |" in md and "| autoassist | 2 |" in md and "12.34" in md


def test_partial_log_is_reported(real_run, tmp_path, capsys):
    text = (real_run / "train.log").read_text()
    cut = text.index('"valid_loss"')  # killed in the middle of the first validation line
    part = tmp_path / "partial.seed1.log"
    part.write_text(text[:cut])
    assert report_main([str(part), "--out", str(tmp_path / "rep")]) == 0
    doc = json.load(open(tmp_path / "rep" / "report.json"))
    run = doc["runs"]["partial.seed1"]
    assert run["best_valid_loss"] is None and run["updates"] > 0 and run["boss_tokens"] > 0
    assert doc["target_loss"] is None and "partial" in capsys.readouterr().out


@pytest.mark.parametrize("content", [b"\x00\x01binary", b"epoch 001 | loss 8.5 | simple format\n"])
def test_unreadable_log_is_refused_in_one_line(tmp_path, capsys, content):
    bad = tmp_path / "bad.log"
    bad.write_bytes(content)
    assert report_main([str(bad), "--out", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad) in err
    assert not (tmp_path / "rep" / "report.md").exists()


def test_missing_run_is_refused_in_one_line(tmp_path, capsys):
    assert report_main([str(tmp_path / "nope*"), "--out", str(tmp_path / "rep")]) == 2
    assert "no such file" in capsys.readouterr().err

