"""Seeded comparison runs from a TOML spec: methods × seeds, trained, translated and reported.

A spec (see ``benchmarks/specs/``)::

    seeds = [1, 2]
    baseline = "baseline"            # savings are measured against this method
    # target_loss = 4.2              # default: the baseline's (see fairseq_efficiency.report)

    [corpus]                         # the embedded corpus: a preset and/or CorpusConfig fields
    preset = "demo"                  # or: data = "path/to/data-bin" (relative to the spec)

    [train]                          # fairseq-train flags shared by every method (budget)
    args = ["--optimizer", "adam", "--lr", "0.005", "--max-epoch", "10"]
    model = ["--arch", "lstm", "--encoder-layers", "1"]  # replaced by a method's own `model`
    threads = 2                      # OMP_NUM_THREADS of each run

    [generate]                       # fairseq-generate on the test set (enabled = false: skip)
    args = ["--beam", "4"]

    [[method]]
    name = "baseline"

    [[method]]
    name = "hybrid"
    ranks = 2                        # data-parallel CPU ranks (fairseq-efficiency-launch);
    model = ["--arch", "hybrid_lstm"]  # the run takes `ranks` of the --jobs slots

    [[method]]
    name = "prune80"
    after = "baseline"               # prune-then-retrain: start from that method's same-seed
    args = ["--prune-ratio", "0.8"]  # checkpoint_best.pt (fairseq --finetune-from-model)

Each run trains into ``OUT/NAME.seedN`` (``train.log``: fairseq's json log; ``command.sh``:
the exact commands; ``done.json``: written when training and translation finished). A
finished run is skipped; an unfinished one is started again with the same command, which
resumes from its ``checkpoint_last.pt`` (fairseq's default ``--restore-file``). A run being
trained by another ``fairseq-efficiency-bench`` on the same ``OUT`` (it holds ``NAME.seedN/.lock``)
is left to it.
"""
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from fairseq_efficiency.data.synthetic import CorpusConfig

try:
    import tomllib  # Python >= 3.11
except ImportError:  # pragma: no cover
    try:
        import tomli as tomllib
    except ImportError:
        tomllib = None

PRESETS = {  # embedded corpus sizes (CorpusConfig fields)
    "tiny": dict(seed=3, train_size=600, valid_size=60, test_size=60, nouns=60, verbs=30,
                 adjectives=30, adverbs=10, max_len=20),
    "small": dict(seed=1, train_size=6000, valid_size=300, test_size=300, nouns=80, verbs=40,
                  adjectives=30, adverbs=10, max_len=20),
    "demo": dict(seed=1, train_size=12000, valid_size=500, test_size=500, nouns=200, verbs=100,
                 adjectives=80, adverbs=30, max_len=40),
}
_TOP = {"name", "seeds", "baseline", "target_loss", "corpus", "train", "generate", "method"}
_METHOD = {"name", "args", "after", "generate_args", "ranks", "model"}
_TRAIN = {"args", "model", "threads"}
_GENERATE = {"args", "enabled", "subset"}
_MAX_RUNS = 1000
# set by the runner for every run; a spec giving them would break seeds, logs or resuming
RESERVED = ("--seed", "--save-dir", "--log-format", "--log-file", "--restore-file",
            "--finetune-from-model", "--results-path", "--path", "--user-dir")
USER_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # fairseq --user-dir


class SpecError(Exception):
    """A one-line error about a spec."""


@dataclass
class Method:
    name: str
    args: List[str] = field(default_factory=list)
    after: Optional[str] = None
    generate_args: List[str] = field(default_factory=list)
    ranks: int = 1  # > 1: trained as that many data-parallel CPU ranks
    model: Optional[List[str]] = None  # replaces the spec's [train] model flags


@dataclass
class Spec:
    path: str
    name: str
    seeds: List[int]
    methods: List[Method]
    train_args: List[str]
    model_args: List[str] = field(default_factory=list)
    threads: int = 1
    corpus: Optional[CorpusConfig] = None
    data: Optional[str] = None
    generate: bool = True
    generate_args: List[str] = field(default_factory=lambda: ["--beam", "4"])
    gen_subset: str = "test"
    baseline: Optional[str] = None
    target_loss: Optional[float] = None


def _strs(v, where):
    if not isinstance(v, list) or not all(isinstance(x, (str, int, float)) for x in v):
        raise SpecError(f"{where} must be a list of strings")
    out = [str(x) for x in v]
    for a in out:
        if a.split("=", 1)[0] in RESERVED:
            raise SpecError(f"{where}: {a.split('=', 1)[0]} is set by the runner "
                            "(seeds: the seeds list; a method's start: after = ...)")
    return out


def _keys(d, allowed, where):
    if not isinstance(d, dict):
        raise SpecError(f"{where} must be a table")
    extra = sorted(set(d) - allowed)
    if extra:
        raise SpecError(f"{where}: unknown key {extra[0]!r} (allowed: {', '.join(sorted(allowed))})")


def load_spec(path: str) -> Spec:
    """Read and check a TOML spec."""
    if tomllib is None:
        raise SpecError("reading TOML specs needs Python >= 3.11 or the tomli package")
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except OSError as e:
        raise SpecError(f"cannot read {path}: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{path} is not valid TOML: {e}") from None
    _keys(raw, _TOP, path)
    seeds = raw.get("seeds", [1])
    if not isinstance(seeds, list) or not seeds or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise SpecError(f"{path}: seeds must be a non-empty list of integers >= 0")
    if len(set(seeds)) != len(seeds):
        raise SpecError(f"{path}: seeds repeat")
    spec = Spec(path=os.path.abspath(path), name=str(raw.get("name", os.path.splitext(
        os.path.basename(path))[0])), seeds=list(seeds), methods=[], train_args=[])
    corpus = raw.get("corpus", {})
    _keys(corpus, {"preset", "data"} | set(CorpusConfig.__dataclass_fields__), f"{path} [corpus]")
    if "data" in corpus:
        if len(corpus) > 1:
            raise SpecError(f"{path} [corpus]: data = ... names a data-bin; no other keys")
        spec.data = os.path.join(os.path.dirname(spec.path), str(corpus["data"]))
    else:
        preset = corpus.get("preset", "tiny")
        if preset not in PRESETS:
            raise SpecError(f"{path} [corpus]: unknown preset {preset!r} "
                            f"(choose from {', '.join(PRESETS)})")
        fields = dict(PRESETS[preset], **{k: v for k, v in corpus.items() if k != "preset"})
        try:
            spec.corpus = CorpusConfig(**fields)
            spec.corpus.validate()
        except (TypeError, ValueError) as e:
            raise SpecError(f"{path} [corpus]: {e}") from None
    train = raw.get("train", {})
    _keys(train, _TRAIN, f"{path} [train]")
    spec.train_args = _strs(train.get("args", []), f"{path} [train] args")
    spec.model_args = _strs(train.get("model", []), f"{path} [train] model")
    spec.threads = train.get("threads", 1)
    if not isinstance(spec.threads, int) or spec.threads < 1:
        raise SpecError(f"{path} [train] threads must be an integer >= 1")
    gen = raw.get("generate", {})
    _keys(gen, _GENERATE, f"{path} [generate]")
    spec.generate = bool(gen.get("enabled", True))
    spec.generate_args = _strs(gen.get("args", spec.generate_args), f"{path} [generate] args")
    spec.gen_subset = str(gen.get("subset", "test"))
    methods = raw.get("method", [])
    if not isinstance(methods, list) or not methods:
        raise SpecError(f"{path}: no [[method]] given")
    for i, m in enumerate(methods):
        _keys(m, _METHOD, f"{path} method #{i + 1}")
        name = m.get("name")
        if not isinstance(name, str) or not name or any(c in name for c in "/\\ ") \
                or name.startswith("."):
            raise SpecError(f"{path} method #{i + 1}: name must be a plain word")
        ranks = m.get("ranks", 1)
        if not isinstance(ranks, int) or isinstance(ranks, bool) or not 1 <= ranks <= 64:
            raise SpecError(f"{path} method {name}: ranks must be an integer from 1 to 64")
        spec.methods.append(Method(name, _strs(m.get("args", []), f"{path} method {name} args"),
                                   m.get("after"),
                                   _strs(m.get("generate_args", []), f"{path} method {name}"),
                                   ranks, _strs(m["model"], f"{path} method {name} model")
                                   if "model" in m else None))
    names = [m.name for m in spec.methods]
    if len(set(names)) != len(names):
        raise SpecError(f"{path}: method names repeat")
    for m in spec.methods:
        if m.after is not None and (m.after not in names or names.index(m.after) >= names.index(m.name)):
            raise SpecError(f"{path} method {m.name}: after = {m.after!r} must name an earlier method")
    if len(spec.methods) * len(spec.seeds) > _MAX_RUNS:
        raise SpecError(f"{path}: more than {_MAX_RUNS} runs")
    spec.baseline = raw.get("baseline", names[0])
    if spec.baseline not in names:
        raise SpecError(f"{path}: baseline {spec.baseline!r} is not a method")
    if "target_loss" in raw:
        if not isinstance(raw["target_loss"], (int, float)):
            raise SpecError(f"{path}: target_loss must be a number")
        spec.target_loss = float(raw["target_loss"])
    return spec


# -- runs -------------------------------------------------------------------------------------
@dataclass
class Run:
    method: Method
    seed: int
    dir: str
    train_cmd: List[str]
    generate_cmd: Optional[List[str]]

    @property
    def name(self):
        return f"{self.method.name}.seed{self.seed}"

    @property
    def done_path(self):
        return os.path.join(self.dir, "done.json")

    @property
    def log_path(self):
        return os.path.join(self.dir, "train.log")


def plan(spec: Spec, out: str, data_bin: str) -> List[Run]:
    """Every run of the spec with its exact commands (methods in spec order, then seeds)."""
    userdir = USER_DIR
    out = os.path.abspath(out)
    runs = []
    for m in spec.methods:
        for seed in spec.seeds:
            d = os.path.join(out, f"{m.name}.seed{seed}")
            launch = []
            if m.ranks > 1:  # the launcher adds the gloo/legacy_ddp flags of every rank
                launch = [sys.executable, "-m", "fairseq_efficiency.cli.launch", "--nproc",
                          str(m.ranks), "--threads-per-rank", str(spec.threads), "--log-dir", d,
                          "--"]
            cmd = [*launch, sys.executable, "-m", "fairseq_cli.train", data_bin, "--user-dir", userdir,
                   "--task", "translation_efficiency", "--seed", str(seed),
                   "--save-dir", d, "--log-format", "json", "--no-progress-bar",
                   *spec.train_args, *(spec.model_args if m.model is None else m.model),
                   *m.args]
            if m.after:
                cmd += ["--finetune-from-model",
                        os.path.join(out, f"{m.after}.seed{seed}", "checkpoint_best.pt")]
            gen = None
            if spec.generate:
                gen = [sys.executable, "-m", "fairseq_cli.generate", data_bin,
                       "--user-dir", userdir, "--task", "translation_efficiency",
                       "--path", os.path.join(d, "checkpoint_best.pt"), "--gen-subset",
                       spec.gen_subset, "--results-path", d, "--scoring", "sacrebleu",
                       "--required-batch-size-multiple", "1", "--batch-size", "128",
                       *(["--cpu"] if "--cpu" in cmd else []), *spec.generate_args,
                       *m.generate_args]
            runs.append(Run(m, seed, d, cmd, gen))
    return runs


def command_script(run: Run, threads: int) -> str:
    env = f"OMP_NUM_THREADS={threads} PYTHONWARNINGS=ignore"
    lines = ["#!/usr/bin/env bash",
             f"# {run.name}: rerunning resumes from {run.dir}/checkpoint_last.pt if it exists",
             "set -euo pipefail",
             f"{env} {shlex.join(run.train_cmd)} >> {shlex.quote(run.log_path)} 2>&1"]
    if run.generate_cmd:
        lines.append(f"{env} {shlex.join(run.generate_cmd)} "
                     f"> {shlex.quote(os.path.join(run.dir, 'generate.log'))} 2>&1")
    return "\n".join(lines) + "\n"


def _write(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def _claim(run):
    """Lock ``RUN/.lock`` for this process while the run trains, so that two benches on one
    ``--out`` never train the same run at once; the kernel drops the lock when the process
    ends, so a crash leaves none behind. The open lock file, or ``None`` if another process
    holds it."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no locking
        return open(os.devnull)
    f = open(os.path.join(run.dir, ".lock"), "a")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    return f


def _fmt(s):
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Runner:
    """Runs a spec's runs (``jobs`` at a time, each after the run it starts from)."""

    def __init__(self, spec: Spec, out: str, jobs: int = 1, log=print):
        self.spec, self.out, self.jobs, self.log = spec, os.path.abspath(out), max(1, jobs), log
        self.lock = threading.Lock()
        self.durations: List[float] = []

    def prepare_data(self) -> str:
        if self.spec.data:
            if not os.path.isdir(self.spec.data):
                raise SpecError(f"data-bin {self.spec.data} does not exist")
            return os.path.abspath(self.spec.data)
        from fairseq_efficiency.data.prepare import prepare

        return prepare(os.path.join(self.out, "corpus"), self.spec.corpus)

    def _execute(self, run: Run) -> Optional[str]:
        """Train (resuming) and translate one run; an error message or ``None``."""
        env = dict(os.environ, OMP_NUM_THREADS=str(self.spec.threads), PYTHONWARNINGS="ignore")
        with open(run.log_path, "a", encoding="utf-8") as log:
            rc = subprocess.call(run.train_cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                 stdin=subprocess.DEVNULL)
        if rc != 0:
            return f"fairseq-train exit {rc}, see {run.log_path}"
        if run.generate_cmd:
            gen_log = os.path.join(run.dir, "generate.log")
            with open(gen_log, "w", encoding="utf-8") as log:
                rc = subprocess.call(run.generate_cmd, stdout=log, stderr=subprocess.STDOUT,
                                     env=env, stdin=subprocess.DEVNULL)
            if rc != 0:
                return f"fairseq-generate exit {rc}, see {gen_log}"
        return None

    def run_all(self, runs: List[Run]) -> Dict[str, str]:
        """Status per run name: done, skipped, failed, busy (another bench is training it) or
        blocked."""
        status: Dict[str, str] = {}
        todo = []
        for r in runs:
            os.makedirs(r.dir, exist_ok=True)
            if not os.path.isfile(r.done_path):  # a finished run keeps the commands it ran
                _write(os.path.join(r.dir, "command.sh"), command_script(r, self.spec.threads))
            if os.path.isfile(r.done_path):
                status[r.name] = "skipped"
                try:
                    with open(r.done_path, encoding="utf-8") as f:
                        done = json.load(f)
                except ValueError:
                    done = {}
                if not isinstance(done, dict) or done.get("train_cmd") != r.train_cmd:
                    self.log(f"[bench] {r.name}: finished with other flags than the spec now "
                             "gives; kept (delete its directory to rerun it)")
            else:
                todo.append(r)
        total, t0 = len(todo), time.time()
        skipped = len(runs) - total
        if skipped:
            self.log(f"[bench] {skipped} finished run(s) skipped")
        by_name = {r.name: r for r in runs}
        pending, running, finished = list(todo), {}, 0  # running: future -> (run, lock)
        with ThreadPoolExecutor(self.jobs) as pool:
            while pending or running:
                for r in list(pending):
                    used = sum(x.method.ranks for x, _ in running.values())
                    if used and used + r.method.ranks > self.jobs:
                        break  # a run of more ranks than --jobs runs alone
                    dep = f"{r.method.after}.seed{r.seed}" if r.method.after else None
                    if dep and (status.get(dep) in ("failed", "blocked", "busy") or (
                            dep not in by_name and not os.path.isfile(
                                os.path.join(self.out, dep, "done.json")))):
                        status[r.name] = "blocked"
                        pending.remove(r)
                        self.log(f"[bench] {r.name}: not run ({dep} has not finished)")
                        continue
                    if dep and dep in by_name and status.get(dep) not in ("done", "skipped"):
                        continue
                    pending.remove(r)
                    os.makedirs(r.dir, exist_ok=True)
                    claim = _claim(r)
                    if claim is None:
                        status[r.name] = "busy"
                        self.log(f"[bench] {r.name}: being trained by another "
                                 "fairseq-efficiency-bench; left to it")
                        continue
                    resumed = os.path.isfile(os.path.join(r.dir, "checkpoint_last.pt"))
                    self.log(f"[bench] {r.name}: {'resuming' if resumed else 'starting'}")
                    running[pool.submit(self._timed, r)] = r, claim
                if not running:
                    break
                done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for fut in done:
                    r, claim = running.pop(fut)
                    err, secs = fut.result()
                    claim.close()
                    finished += 1
                    elapsed = time.time() - t0
                    left = total - finished
                    rate = sum(self.durations) / len(self.durations) if self.durations else secs
                    eta = rate * left / min(self.jobs, max(left, 1))
                    if err:
                        status[r.name] = "failed"
                        self.log(f"[bench {finished}/{total}] {r.name} FAILED after {_fmt(secs)}: "
                                 f"{err}; elapsed {_fmt(elapsed)}, ~{_fmt(eta)} left")
                    else:
                        status[r.name] = "done"
                        _write(r.done_path, json.dumps({"train_cmd": r.train_cmd,
                                                        "generate_cmd": r.generate_cmd,
                                                        "seconds": round(secs, 1)}) + "\n")
                        self.log(f"[bench {finished}/{total}] {r.name} done in {_fmt(secs)}; "
                                 f"elapsed {_fmt(elapsed)}, ~{_fmt(eta)} left")
        return status

    def _timed(self, run):
        t = time.time()
        err = self._execute(run)
        secs = time.time() - t
        if not err:
            with self.lock:
                self.durations.append(secs)
        return err, secs
