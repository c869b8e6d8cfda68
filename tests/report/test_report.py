"""fairseq-efficiency-report: log parsing, cost-to-target arithmetic, tables, plots, CLI."""
import json
import os

import numpy as np
import pytest

from fairseq_efficiency.cli.report import main as report_main
from fairseq_efficiency.report import build_report, cost_to_target, first_crossing, parse_log
from fairseq_efficiency.report.logs import LogError, read_log
from fairseq_efficiency.report.summary import default_target
from tests.helpers import run_cli, train_args

CONFIG = ("2026-01-01 10:00:00 | INFO | fairseq_cli.train | {'_name': None, 'common': {}, "
          "'checkpoint': {'_name': None, 'save_dir': '%s', 'restore_file': 'checkpoint_last.pt', "
          "'continue_once': None, 'finetune_from_model': %s, 'reset_dataloader': False}}")


def _rec(tag, d):
    return f"2026-01-01 10:00:00 | INFO | {tag} | " + json.dumps({k: str(v) for k, v in d.items()})


def write_log(path, epochs, per_epoch=10, wpb=100.0, sec_per_update=2.0, interval=5, start=0,
              loaded=None, extra=None, finetune=None):
    """A fairseq console json log: ``epochs`` valid losses, ``per_epoch`` updates each."""
    lines = [CONFIG % (os.path.dirname(path), repr(finetune))]
    if loaded is not None:
        lines.append(f"2026-01-01 | INFO | fairseq.trainer | Loaded checkpoint x.pt (epoch 2 @ "
                     f"{loaded} updates)")
    u = start
    for e, loss in enumerate(epochs, start=1 + start // per_epoch):
        for _ in range(per_epoch // interval):
            u += interval
            lines.append(_rec("train_inner", {"epoch": e, "loss": loss + 1, "wpb": wpb,
                                              "num_updates": u,
                                              "wall": (u - start) * sec_per_update,
                                              **(extra or {})}))
        lines.append(_rec("valid", {"epoch": e, "valid_loss": loss, "valid_num_updates": u}))
        lines.append(_rec("train", {"epoch": e, "train_loss": loss + 1, "train_wpb": wpb,
                                    "train_num_updates": u,
                                    "train_wall": (u - start) * sec_per_update}))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as f:
        f.write("\n".join(lines) + "\n")
    return path


# -- the crossing arithmetic ----------------------------------------------------------------------
def test_first_crossing_interpolates_between_the_two_validations():
    assert first_crossing([10, 20, 30], [5.0, 4.0, 3.0], 3.5) == (25.0, 2)
    assert first_crossing([10, 20, 30], [5.0, 4.0, 3.0], 4.0) == (20.0, 1)  # exactly on a point


def test_first_crossing_is_the_first_one_not_the_best():
    u, k = first_crossing([10, 20, 30, 40], [5.0, 3.0, 4.0, 2.0], 3.5)
    assert (u, k) == (17.5, 1)  # 10 + (5 - 3.5) / (5 - 3) * 10


def test_first_validation_below_target_counts_at_that_validation():
    assert first_crossing([10, 20], [3.0, 2.0], 4.0) == (10.0, 0)


def test_never_reached():
    assert first_crossing([10, 20], [5.0, 4.5], 4.0) is None


def test_tokens_and_wall_at_the_crossing(tmp_path):
    # 10 updates per epoch, 100 target tokens and 2 s per update; valid 5, 4, 3
    c = read_log(write_log(str(tmp_path / "a" / "train.log"), [5.0, 4.0, 3.0]))
    x = cost_to_target(c, 3.5)
    assert x.updates == pytest.approx(25.0)
    assert x.tokens == pytest.approx(2500.0) and x.wall == pytest.approx(50.0)
    assert (x.validation_updates, x.validation_tokens, x.validation_wall) == (30.0, 3000.0, 60.0)
    assert cost_to_target(c, 2.0) is None


def test_boss_tokens_follow_fairseq_wpb_per_interval():
    lines = [_rec("train_inner", {"epoch": 1, "loss": 9, "wpb": 100, "num_updates": 4, "wall": 1}),
             _rec("train_inner", {"epoch": 1, "loss": 9, "wpb": 300, "num_updates": 8, "wall": 2}),
             # end of epoch 1 at update 10: the epoch mean is exact (4*100 + 4*300 + 2*50) / 10
             _rec("train", {"epoch": 1, "train_loss": 9, "train_wpb": 170,
                            "train_num_updates": 10, "train_wall": 3}),
             _rec("train_inner", {"epoch": 2, "loss": 9, "wpb": 200, "num_updates": 12, "wall": 4})]
    c = parse_log("\n".join(lines))
    assert [(p.updates, p.tokens) for p in c.train] == [(4, 400), (8, 1600), (10, 1700), (12, 2100)]
    assert c.tokens_at(9) == pytest.approx(1650) and c.wall_at(11) == pytest.approx(3.5)


def test_bare_log_file_records_are_read_like_console_ones(tmp_path):
    console = write_log(str(tmp_path / "c" / "train.log"), [5.0, 4.0])
    bare = tmp_path / "bare.log"
    bare.write_text("\n".join(l.split(" | ")[-1] for l in open(console).read().splitlines()
                              if "{\"" in l) + "\n")
    hydra = tmp_path / "hydra.log"  # fairseq-hydra-train: [DATE][NAME][LEVEL] - MESSAGE
    hydra.write_text("\n".join("[2026-01-01 10:00:00,000][%s][INFO] - %s" % tuple(l.split(" | ")[2:])
                               for l in open(console).read().splitlines() if "{\"" in l) + "\n")
    a, b, h = read_log(console), read_log(str(bare)), read_log(str(hydra))
    assert [(p.updates, p.tokens, p.wall) for p in a.train] == \
           [(p.updates, p.tokens, p.wall) for p in b.train] == \
           [(p.updates, p.tokens, p.wall) for p in h.train]
    assert [p.loss for p in b.valid] == [p.loss for p in h.valid] == [5.0, 4.0]


def test_resumed_run_drops_redone_updates_and_continues_wall(tmp_path):
    path = str(tmp_path / "r" / "train.log")
    write_log(path, [5.0, 4.0, 3.5])  # ran to update 30, 60 s; checkpoint at update 20 kept
    write_log(path, [3.0], start=20, loaded=20, sec_per_update=1.0)  # resumed: updates 21..30
    c = read_log(path)
    assert c.segments == 2
    assert [p.loss for p in c.valid] == [5.0, 4.0, 3.0]
    assert c.updates == 30 and c.train[-1].tokens == pytest.approx(3000)
    assert c.train[-1].wall == pytest.approx(40.0 + 10.0)  # 40 s to update 20, then 10 s


def test_overlong_lines_are_skipped(tmp_path):
    from fairseq_efficiency.report.logs import MAX_LINE

    path = write_log(str(tmp_path / "o" / "train.log"), [5.0])
    text = open(path).read()
    with open(path, "w") as f:
        f.write('{"loss": "' + "9" * (2 * MAX_LINE) + '"}\n' + text)
    assert [p.loss for p in read_log(path).valid] == [5.0]


def test_resume_without_config_lines_is_found_from_the_checkpoint_line():
    first = [_rec("train_inner", {"epoch": 1, "loss": 9, "wpb": 10, "num_updates": u, "wall": u})
             for u in (2, 4, 6)]
    again = ["INFO - Loaded checkpoint ck.pt (epoch 1 @ 4 updates)"] + [
        _rec("train_inner", {"epoch": 1, "loss": 9, "wpb": 10, "num_updates": u, "wall": u - 4})
        for u in (6, 8)]
    c = parse_log("\n".join(first + again))
    assert c.segments == 2 and [p.updates for p in c.train] == [2, 4, 6, 8]
    assert [p.wall for p in c.train] == [2, 4, 6, 8] and c.train[-1].tokens == 80


# -- methods, seeds, savings ------------------------------------------------------------------------
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


# -- real fairseq runs ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_run(tiny_data_bin, tmp_path_factory):
    """One tiny plain-fairseq run (2 epochs, json log every 2 updates) with a generate output."""
    d = tmp_path_factory.mktemp("real") / "baseline.seed1"
    args = train_args(tiny_data_bin, d, "--max-epoch", "2", "--no-epoch-checkpoints")
    args[args.index("simple")] = "json"
    args[args.index("--log-interval") + 1] = "2"
    res = run_cli("fairseq_cli.train", args)
    (d / "train.log").write_text(res.stdout + res.stderr)
    (d / "generate-test.txt").write_text("S-0\ta b\nGenerate test with beam=4: BLEU = 12.34 40/20\n")
    return d


def test_tokens_of_a_real_epoch_are_the_target_tokens_of_the_corpus(real_run, tiny_data_bin):
    from fairseq.data import data_utils

    c = read_log(str(real_run / "train.log"))
    end1 = [p for p in c.train if p.epoch_end][0]
    tgt = data_utils.load_indexed_dataset(os.path.join(tiny_data_bin, "train.src-tgt.tgt"), None)
    # ntokens counts each target sentence and its end-of-sentence symbol once per epoch
    assert end1.tokens == pytest.approx(int(np.asarray(tgt.sizes).sum()), rel=1e-3)
    assert len(c.valid) == 2 and c.train[-1].tokens == pytest.approx(2 * end1.tokens, rel=0.02)


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


def test_directory_of_several_runs_logs_finds_each_runs_own_bleu(tmp_path):
    d = tmp_path / "work"
    write_log(str(d / "base.train.log"), [5.0, 4.0])
    write_log(str(d / "fast.log"), [4.5, 3.5])
    (d / "base.generate.log").write_text("H-0\tx\nGenerate test with beam=4: BLEU4 = 15.94, 50/20\n")
    (d / "fast.gen").write_text("Generate valid with beam=5: BLEU = 1.00 1/1\n"
                                "Generate test with beam=5: BLEU = 21.50 60.0/30.0\n")
    doc = build_report([str(d)], str(tmp_path / "rep"), plots=False)
    assert list(doc["methods"]) == ["base", "fast"]  # the generate log is no run
    assert doc["runs"]["base"]["bleu"] == 15.94 and doc["runs"]["fast"]["bleu"] == 21.5
    assert doc["methods"]["fast"]["bleu_delta"] == pytest.approx(21.5 - 15.94)


def test_default_target_is_the_worst_baseline_seed_best(tmp_path):
    from fairseq_efficiency.report.runs import assign_methods, discover

    write_log(str(tmp_path / "r" / "b.seed1" / "train.log"), [5.0, 3.0])
    write_log(str(tmp_path / "r" / "b.seed2" / "train.log"), [5.0, 3.3, 3.4])
    methods = assign_methods(discover([str(tmp_path / "r")]))
    assert default_target(methods, "b") == pytest.approx(3.3)


@pytest.mark.parametrize("zipfile", [True, False])
def test_parameters_and_non_zeros_of_a_checkpoint(tmp_path, zipfile):
    import torch

    from fairseq_efficiency.report.runs import count_parameters

    path = str(tmp_path / "checkpoint_best.pt")
    torch.save({"model": {"w": torch.tensor([[0.0, 1.0], [2.0, 0.0]]), "b": torch.ones(3),
                          "steps": torch.tensor([5])}, "cfg": {"x": 1}}, path,
               _use_new_zipfile_serialization=zipfile)
    assert count_parameters(path) == (7, 5)  # integer buffers are not parameters


def test_checkpoint_that_runs_code_is_refused(tmp_path):
    import pickle

    from fairseq_efficiency.report.runs import count_parameters

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo owned",))

    path = tmp_path / "checkpoint_best.pt"
    path.write_bytes(pickle.dumps({"model": Evil()}))
    with pytest.raises(LogError, match="cannot read checkpoint"):
        count_parameters(str(path))
