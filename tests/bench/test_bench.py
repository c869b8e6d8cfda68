"""fairseq-efficiency-bench: spec checks, scheduling, skip finished runs, resume interrupted ones."""
import json
import os
import threading
import time

import pytest

from fairseq_efficiency.bench import Runner, SpecError, load_spec, plan
from fairseq_efficiency.cli.bench import main as bench_main
from fairseq_efficiency.report import read_log

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMOKE = os.path.join(ROOT, "benchmarks", "specs", "smoke.toml")
SPECS = os.path.join(ROOT, "benchmarks", "specs")


@pytest.mark.parametrize("spec", sorted(f for f in os.listdir(SPECS) if f.endswith(".toml")))
def test_every_example_spec_parses_with_fairseq_and_the_plugin(spec, tiny_data_bin, tmp_path):
    from fairseq import options

    s = load_spec(os.path.join(SPECS, spec))
    assert s.methods and s.seeds and s.baseline == s.methods[0].name
    for run in plan(s, str(tmp_path), tiny_data_bin)[:: len(s.seeds)]:
        train = run.train_cmd[run.train_cmd.index("fairseq_cli.train") + 1:]
        args = options.parse_args_and_arch(options.get_training_parser(), train)
        assert args.task == "translation_efficiency" and args.seed == s.seeds[0]
        if run.generate_cmd:
            options.parse_args_and_arch(options.get_generation_parser(), run.generate_cmd[3:])


@pytest.mark.parametrize("text,message", [
    ("seeds = [1]\nbogus = 1\n[[method]]\nname = 'a'\n", "unknown key 'bogus'"),
    ("seeds = []\n[[method]]\nname = 'a'\n", "seeds must be"),
    ("[[method]]\nname = 'a'\nafter = 'b'\n[[method]]\nname = 'b'\n", "earlier method"),
    ("[[method]]\nname = '../x'\n", "plain word"),
    ("[corpus]\npreset = 'huge'\n[[method]]\nname = 'a'\n", "unknown preset"),
    ("seeds = [1\n", "not valid TOML"),
    ("[train]\nargs = ['--seed', '3']\n[[method]]\nname = 'a'\n", "--seed is set by the runner"),
    ("[[method]]\nname = 'a'\nargs = ['--save-dir=x']\n", "--save-dir is set by the runner"),
    ("[[method]]\nname = 'a'\nranks = 0\n", "ranks must be an integer"),
])
def test_bad_spec_is_refused_in_one_line(tmp_path, capsys, text, message):
    spec = tmp_path / "s.toml"
    spec.write_text(text)
    with pytest.raises(SpecError, match=message):
        load_spec(str(spec))
    with pytest.raises(SystemExit) as e:
        bench_main([str(spec), "--out", str(tmp_path / "out")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message.split("'")[0] in err
    assert not (tmp_path / "out").exists()


def test_plan_gives_each_seed_its_directory_and_prune_runs_their_start(tmp_path):
    spec = load_spec(SMOKE)
    spec.seeds = [1, 2]
    runs = plan(spec, str(tmp_path), "/data")
    assert [r.name for r in runs] == ["baseline.seed1", "baseline.seed2", "prune50.seed1",
                                      "prune50.seed2"]
    cmd = runs[3].train_cmd
    assert cmd[cmd.index("--seed") + 1] == "2"
    assert cmd[cmd.index("--save-dir") + 1] == str(tmp_path / "prune50.seed2")
    assert cmd[cmd.index("--finetune-from-model") + 1] == str(
        tmp_path / "baseline.seed2" / "checkpoint_best.pt")
    assert "--finetune-from-model" not in runs[0].train_cmd


def test_scheduler_runs_jobs_in_parallel_after_their_start_and_blocks_after_a_failure(tmp_path):
    spec = load_spec(SMOKE)
    spec.seeds = [1, 2, 3]
    runs = plan(spec, str(tmp_path), "/data")
    events, active, peak = [], [0], [0]
    lock = threading.Lock()

    def fake(run):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
            events.append(("start", run.name))
        time.sleep(0.05)
        with lock:
            active[0] -= 1
            events.append(("end", run.name))
        return "boom" if run.name == "baseline.seed3" else None

    lines = []
    runner = Runner(spec, str(tmp_path), jobs=2, log=lines.append)
    runner._execute = fake
    status = runner.run_all(runs)
    assert peak[0] == 2
    for s in (1, 2):
        assert events.index(("end", f"baseline.seed{s}")) < events.index(("start", f"prune50.seed{s}"))
    assert status["baseline.seed3"] == "failed" and status["prune50.seed3"] == "blocked"
    assert ("start", "prune50.seed3") not in events
    assert sum("done in" in x and "left" in x for x in lines) == 4  # one progress line per run
    assert os.path.isfile(tmp_path / "prune50.seed1" / "done.json")
    assert not os.path.exists(tmp_path / "baseline.seed3" / "done.json")


def test_a_run_another_bench_is_training_is_left_to_it(tmp_path):
    import fcntl

    spec = load_spec(SMOKE)
    spec.seeds = [1, 2]
    runs = plan(spec, str(tmp_path), "/data")
    trained, lines = [], []
    runner = Runner(spec, str(tmp_path), jobs=2, log=lines.append)
    runner._execute = lambda run: trained.append(run.name)
    os.makedirs(runs[0].dir)
    with open(os.path.join(runs[0].dir, ".lock"), "a") as other:  # another bench's hold
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        status = runner.run_all(runs)
    assert status == {"baseline.seed1": "busy", "prune50.seed1": "blocked",
                      "baseline.seed2": "done", "prune50.seed2": "done"}
    assert sorted(trained) == ["baseline.seed2", "prune50.seed2"]
    assert any("baseline.seed1: being trained by another" in x for x in lines)
    # released (as when the other bench ends or dies): the run is trained now
    assert runner.run_all(runs)["baseline.seed1"] == "done"
    assert "baseline.seed1" in trained


def test_a_run_directory_deleted_before_its_turn_is_made_again(tmp_path):
    import shutil

    spec = load_spec(SMOKE)
    runs = plan(spec, str(tmp_path), "/data")
    seen = {}

    def fake(run):
        seen[run.name] = os.path.isdir(run.dir)
        if run.name == "baseline.seed1":
            shutil.rmtree(runs[1].dir)  # prune50.seed1's, already made by run_all

    runner = Runner(spec, str(tmp_path), jobs=1, log=lambda *_: None)
    runner._execute = fake
    assert runner.run_all(runs)["prune50.seed1"] == "done"
    assert seen == {"baseline.seed1": True, "prune50.seed1": True}


def test_runner_skips_finished_runs_and_resumes_an_interrupted_one(tmp_path, capsys):
    out = tmp_path / "out"
    assert bench_main([SMOKE, "--out", str(out), "--methods", "baseline"]) == 0
    run = out / "baseline.seed1"
    log = run / "train.log"
    first = log.read_text()
    assert (run / "done.json").is_file() and (out / "report" / "report.json").is_file()
    script = (run / "command.sh").read_text()
    assert "fairseq_cli.train" in script and "--seed 1" in script and str(log) in script
    assert read_log(str(log)).updates == 4

    capsys.readouterr()
    assert bench_main([SMOKE, "--out", str(out), "--methods", "baseline", "--no-report"]) == 0
    assert "1 finished run(s) skipped" in capsys.readouterr().out
    assert log.read_text() == first  # not trained again

    # an interrupted run: its checkpoint_last.pt is there, done.json is not; the budget left
    # (8 updates instead of 4) is trained from that checkpoint
    (run / "done.json").unlink()
    longer = tmp_path / "longer.toml"
    longer.write_text(open(SMOKE).read().replace('"--max-update", "4"', '"--max-update", "8"'))
    assert bench_main([str(longer), "--out", str(out), "--methods", "baseline",
                       "--no-report"]) == 0
    assert "baseline.seed1: resuming" in capsys.readouterr().out
    text = log.read_text()
    assert text.startswith(first) and "Loaded checkpoint" in text[len(first):]
    assert "@ 4 updates" in text[len(first):]
    assert "--max-update 8" in (run / "command.sh").read_text()
    curves = read_log(str(log))
    assert curves.segments == 2 and curves.updates == 8
    assert [p.updates for p in curves.train] == sorted(p.updates for p in curves.train)
    done = json.load(open(run / "done.json"))["train_cmd"]
    assert done[done.index("--max-update") + 1] == "8"


@pytest.mark.slow
def test_smoke_spec_end_to_end_with_prune_then_retrain_and_bleu(tmp_path):
    out = tmp_path / "out"
    spec = tmp_path / "smoke.toml"
    spec.write_text(open(SMOKE).read().replace("enabled = false", "enabled = true"))
    assert bench_main([str(spec), "--out", str(out), "--jobs", "2"]) == 0
    doc = json.load(open(out / "report" / "report.json"))
    base, pruned = doc["methods"]["baseline"], doc["methods"]["prune50"]
    assert base["bleu"] is not None and pruned["bleu"] is not None
    ratio = pruned["nonzero_params"]["mean"] / base["nonzero_params"]["mean"]
    assert 0.4 < ratio < 0.6


def test_a_multi_rank_method_runs_under_the_launcher_and_takes_its_slots(tmp_path):
    spec = load_spec(SMOKE)
    spec.seeds = [1, 2]
    spec.methods[1].after = None
    spec.methods[1].ranks = 2
    spec.train_args = ["--cpu", "--max-update", "4"]
    spec.model_args = ["--arch", "lstm", "--encoder-layers", "1"]
    spec.methods[1].model = ["--arch", "hybrid_lstm"]  # replaces the spec's model flags
    runs = plan(spec, str(tmp_path), "/data")
    assert runs[0].train_cmd[runs[0].train_cmd.index("--arch") + 1] == "lstm"
    assert "--encoder-layers" not in runs[2].train_cmd
    assert runs[2].train_cmd[runs[2].train_cmd.index("--arch") + 1] == "hybrid_lstm"
    cmd = runs[2].train_cmd
    launch = cmd[:cmd.index("--")]
    assert launch[1:3] == ["-m", "fairseq_efficiency.cli.launch"]
    assert launch[launch.index("--nproc") + 1] == "2"
    assert cmd[cmd.index("--") + 1:][1:3] == ["-m", "fairseq_cli.train"]
    assert "fairseq_efficiency.cli.launch" not in runs[0].train_cmd
    active, overlap = [], []
    lock = threading.Lock()

    def fake(run):
        with lock:
            active.append(run.name)
            overlap.append(list(active))
        time.sleep(0.05)
        with lock:
            active.remove(run.name)
        return None

    runner = Runner(spec, str(tmp_path), jobs=2, log=lambda *_: None)
    runner._execute = fake
    assert set(runner.run_all(runs).values()) == {"done"}
    assert ["baseline.seed1", "baseline.seed2"] in overlap  # 1-rank runs share the 2 slots
    for seen in overlap:  # a 2-rank run never shares them
        assert len(seen) == 1 or not any(n.startswith("prune50") for n in seen)
