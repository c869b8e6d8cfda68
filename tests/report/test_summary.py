"""Methods, seeds and savings: the report's figures and table."""
import numpy as np
import pytest

from fairseq_efficiency.report import build_report
from fairseq_efficiency.report.summary import default_target
from tests.report.fake_logs import write_log


def test_saving_ratio_and_seeds_that_never_reach(tmp_path):
    out = tmp_path / "runs"
    write_log(str(out / "baseline.seed1" / "train.log"), [5.0, 4.0, 3.0])
    write_log(str(out / "baseline.seed2" / "train.log"), [5.0, 4.0, 3.2])
    # fast reaches 3.2 (the worst baseline seed's best) at update 10 + 0.8/1.0*10 = 18 in one seed
    write_log(str(out / "fast.seed1" / "train.log"), [4.0, 3.0], sec_per_update=1.0)
    write_log(str(out / "fast.seed2" / "train.log"), [4.0, 3.5])
    doc = build_report([str(out)], str(tmp_path / "rep"), plots=False)
    assert doc["baseline"] == "baseline" and doc["target_loss"] == pytest.approx(3.2)
    base, fast = doc["methods"]["baseline"], doc["methods"]["fast"]
    assert base["to_target"]["reached"] == 2
    # baseline: seed 1 crosses 3.2 at 20 + 0.8*10 = 28 updates, seed 2 at 30: 2800 and 3000 tokens
    assert base["to_target"]["boss_tokens"]["values"] == pytest.approx([2800, 3000])
    assert (fast["to_target"]["reached"], fast["to_target"]["of"]) == (1, 2)
    assert fast["to_target"]["boss_tokens"]["values"] == pytest.approx([1800])
    assert fast["to_target"]["token_saving"] == pytest.approx(2900 / 1800)
    assert fast["to_target"]["time_saving"] == pytest.approx(58 / 18)
    assert base["best_valid_loss"]["sd"] == pytest.approx(np.std([3.0, 3.2], ddof=1))
    md = open(tmp_path / "rep" / "report.md").read()
    assert "| fast | 2 |" in md and "| 1/2 |" in md and "1.61x" in md


def test_a_method_started_from_another_runs_checkpoint_gets_no_saving(tmp_path):
    out = tmp_path / "runs"
    write_log(str(out / "baseline.seed1" / "train.log"), [5.0, 4.0, 3.0])
    write_log(str(out / "pruned.seed1" / "train.log"), [3.5, 2.9],
              finetune=str(out / "baseline.seed1" / "checkpoint_best.pt"))
    doc = build_report([str(out)], str(tmp_path / "rep"), plots=False)
    pruned = doc["methods"]["pruned"]
    assert pruned["started_from_checkpoint"] and not doc["methods"]["baseline"][
        "started_from_checkpoint"]
    assert pruned["to_target"]["boss_tokens"]["mean"] == pytest.approx(1000 + 0.5 / 0.6 * 1000)
    assert pruned["to_target"]["token_saving"] is None
    assert "| pruned † | 1 |" in doc["table"] and "† started from" in doc["table"]


def test_group_option_and_explicit_target(tmp_path):
    a = write_log(str(tmp_path / "x" / "first.log"), [5.0, 4.0])
    b = write_log(str(tmp_path / "x" / "second.log"), [5.0, 3.0])
    doc = build_report([a, b], str(tmp_path / "rep"), groups=["both=*"], target_loss=4.5,
                       plots=False)
    assert list(doc["methods"]) == ["both"] and doc["target_loss"] == 4.5
    assert doc["methods"]["both"]["to_target"]["reached"] == 2


def test_default_target_is_the_worst_baseline_seed_best(tmp_path):
    from fairseq_efficiency.report.runs import assign_methods, discover

    write_log(str(tmp_path / "r" / "b.seed1" / "train.log"), [5.0, 3.0])
    write_log(str(tmp_path / "r" / "b.seed2" / "train.log"), [5.0, 3.3, 3.4])
    methods = assign_methods(discover([str(tmp_path / "r")]))
    assert default_target(methods, "b") == pytest.approx(3.3)



def test_best_valid_loss_counts_only_the_final_sparsity(tmp_path):
    """Gradual pruning: the denser model's earlier (lower) losses are not the run's best."""
    out = tmp_path / "runs"
    sparsity = [{"sparsity": 0.44}, {"sparsity": 0.84}, {"sparsity": 0.9}, {"sparsity": 0.9}]
    write_log(str(out / "gradual.seed1" / "train.log"), [1.0, 1.5, 2.2, 2.0],
              epoch_extra=sparsity)
    write_log(str(out / "dense.seed1" / "train.log"), [1.0, 1.5, 2.2, 2.0])
    doc = build_report([str(out)], str(tmp_path / "rep"), baseline="dense", plots=False)
    assert doc["methods"]["gradual"]["best_valid_loss"]["mean"] == pytest.approx(2.0)
    assert doc["methods"]["dense"]["best_valid_loss"]["mean"] == pytest.approx(1.0)
