"""The report's plots: one PNG per x axis, plus the techniques' own curves when logged."""
from fairseq_efficiency.report import build_report
from fairseq_efficiency.report.plots import write_plots
from tests.report.fake_logs import write_log

PNG = b"\x89PNG\r\n\x1a\n"


def test_one_png_per_axis_and_techniques_only_when_logged(tmp_path):
    runs = tmp_path / "runs"
    write_log(str(runs / "base.seed1" / "train.log"), [5.0, 4.0])
    write_log(str(runs / "base.seed2" / "train.log"), [5.1, 3.9])
    doc = build_report([str(runs)], str(tmp_path / "rep"), plots=False)
    out = tmp_path / "plots"
    out.mkdir()
    paths = write_plots(doc, str(out))
    names = sorted(p.rsplit("/", 1)[-1] for p in paths)
    assert names == ["valid_loss_vs_boss_tokens.png", "valid_loss_vs_updates.png",
                     "valid_loss_vs_wall_s.png"]
    assert all(open(p, "rb").read(8) == PNG for p in paths)
    write_log(str(runs / "fast.seed1" / "train.log"), [4.5, 3.5], extra={"keep_rate": 0.7})
    doc = build_report([str(runs)], str(tmp_path / "rep2"), plots=False)
    assert "techniques.png" in {p.rsplit("/", 1)[-1] for p in write_plots(doc, str(out))}


def test_a_seed_that_stopped_early_is_held_at_its_last_value():
    import numpy as np

    from fairseq_efficiency.report.plots import _band

    long = (np.array([0.0, 10.0]), np.array([4.0, 2.0]))
    short = (np.array([0.0, 5.0]), np.array([4.0, 1.0]))  # early stopping at x = 5
    grid, mean, lo, hi = _band([long, short])
    after = grid > 5
    assert np.allclose(mean[after], (np.interp(grid[after], *long) + 1.0) / 2)
    assert np.allclose(lo[after], np.minimum(np.interp(grid[after], *long), 1.0))
    late = (np.array([4.0, 10.0]), np.array([3.0, 3.0]))  # not there before its first point
    grid, mean, _, _ = _band([long, late])
    assert np.allclose(mean[grid < 4], np.interp(grid[grid < 4], *long))
