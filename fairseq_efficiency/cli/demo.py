"""``fairseq-efficiency-demo``: every feature end to end on the embedded corpus.

Generates and binarizes a small-lexicon preset of the embedded corpus, trains a
baseline LSTM with ``fairseq-train`` on CPU, translates the test set with
``fairseq-generate`` and prints one results table. Each technique adds its own
row (registered with :func:`register_demo_row` in :mod:`.demo_rows`); all rows share the data,
model size, optimizer and batch limits of the baseline, so the table compares
like with like.

Columns: ``valid loss`` is fairseq's validation loss (base 2, per target token)
of the last checkpoint, ``BLEU`` is sacrebleu on the test set (beam search,
already-tokenized text, ``tokenize="none"``), ``train s`` the wall time of the
``fairseq-train`` run, ``tokens`` the target tokens the model was trained on
(forward + backward), summed over epochs from fairseq's own ``wpb`` x updates.
"""
import argparse
import json
import logging
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional

from fairseq_efficiency.cli.launch import launch
from fairseq_efficiency.cli.userdir import userdir
from fairseq_efficiency.data.synthetic import CorpusConfig
from fairseq_efficiency.evaluate import corpus_bleu

# A smaller lexicon than the generator's default keeps the softmax cheap on CPU
# while keeping the Zipfian/agreement/reordering structure.
DEMO_CORPUS = CorpusConfig(seed=1, train_size=12000, valid_size=500, test_size=500,
                           nouns=200, verbs=100, adjectives=80, adverbs=30, max_len=40)

BASELINE_MODEL = [
    "--arch", "lstm", "--encoder-layers", "1", "--decoder-layers", "1",
    "--encoder-embed-dim", "128", "--decoder-embed-dim", "128", "--decoder-out-embed-dim", "128",
    "--encoder-hidden-size", "256", "--decoder-hidden-size", "256", "--dropout", "0.1",
]
BASELINE_OPTIM = [
    "--optimizer", "adam", "--lr", "0.005", "--clip-norm", "1.0",
    "--criterion", "sentence_cross_entropy", "--max-tokens", "4000", "--max-epoch", "4",
]

_ROWS: Dict[str, "DemoRowSpec"] = {}


@dataclass
class DemoRowSpec:
    name: str
    order: int
    fn: Callable


def register_demo_row(name: str, order: int = 100):
    """Decorator registering ``fn(ctx) -> row dict`` as a row of the demo table."""

    def wrap(fn):
        if name in _ROWS:
            raise ValueError(f"demo row {name!r} registered twice")
        _ROWS[name] = DemoRowSpec(name, order, fn)
        return fn

    return wrap


@dataclass
class TrainResult:
    name: str
    save_dir: str
    checkpoint: str
    wall_s: float
    tokens: int
    valid_loss: Optional[float]
    log: str = field(repr=False, default="")
    train_stats: Dict[str, object] = field(repr=False, default_factory=dict)  # last "| train |" line


@dataclass
class DemoContext:
    data_bin: str
    workdir: str
    threads: int = 2
    baseline_args: List[str] = field(default_factory=lambda: BASELINE_MODEL + BASELINE_OPTIM)
    results: Dict[str, TrainResult] = field(default_factory=dict)

    def common_args(self):
        return [self.data_bin, "--user-dir", userdir(), "--task", "translation_efficiency",
                "--cpu", "--seed", "1", "--num-workers", "0", "--log-format", "json",
                "--log-interval", "50", "--no-epoch-checkpoints"]

    def train(self, name, extra_args=(), nproc=1, restore_from=None, base_args=None) -> TrainResult:
        """Run ``fairseq-train`` (``nproc`` > 1: CPU data-parallel ranks) for one row."""
        save_dir = os.path.join(self.workdir, "checkpoints", name)
        os.makedirs(save_dir, exist_ok=True)
        log_path = os.path.join(self.workdir, f"{name}.train.log")
        args = self.common_args() + list(self.baseline_args if base_args is None else base_args)
        args += ["--save-dir", save_dir] + list(extra_args)
        if restore_from:
            args += ["--restore-file", restore_from, "--reset-optimizer", "--reset-dataloader",
                     "--reset-meters", "--reset-lr-scheduler"]
        env = dict(os.environ, PYTHONWARNINGS="ignore")
        t0 = time.time()
        with open(log_path, "w") as log:
            if nproc > 1:  # CPU data-parallel ranks; rank 0's log is the row's log
                rc = launch(["fairseq-train"] + args, nproc=nproc, env=env, stdout=log,
                            log_dir=os.path.join(self.workdir, f"{name}.ranks"))
            else:
                env["OMP_NUM_THREADS"] = str(self.threads)
                rc = subprocess.call([sys.executable, "-m", "fairseq_cli.train"] + args,
                                     stdout=log, stderr=subprocess.STDOUT, env=env)
        wall = time.time() - t0
        text = open(log_path).read()
        if rc != 0:
            raise RuntimeError(f"demo row {name}: fairseq-train failed (exit {rc}); see {log_path}:\n"
                               + "\n".join(text.splitlines()[-15:]))
        tokens, valid_loss, train_stats = parse_train_log(text)
        res = TrainResult(name, save_dir, os.path.join(save_dir, "checkpoint_last.pt"), wall,
                          tokens, valid_loss, log_path, train_stats)
        self.results[name] = res
        return res

    def evaluate(self, res: TrainResult, checkpoint=None, extra_args=(), **extra_columns) -> dict:
        """Translate the test set with ``fairseq-generate`` and build the table row."""
        bleu = generate_bleu(self.data_bin, checkpoint or res.checkpoint, self.threads, extra_args,
                             os.path.join(self.workdir, f"{res.name}.generate.log"))
        row = {"row": res.name, "valid loss": res.valid_loss, "BLEU": bleu,
               "train s": round(res.wall_s, 1), "tokens": res.tokens}
        row.update(extra_columns)
        return row


_JSON_LINE = re.compile(r"\| (train|valid) \| (\{.*\})\s*$")


def iter_log_stats(text):
    """``(kind, stats)`` of every end-of-epoch ``| train |``/``| valid |`` line of a
    ``--log-format json`` log, in order (``stats`` keys keep their ``train_``/``valid_`` prefix)."""
    for line in text.splitlines():
        m = _JSON_LINE.search(line)
        if m:
            yield m.group(1), json.loads(m.group(2))


def parse_train_log(text):
    """(target tokens trained on, last validation loss, last end-of-epoch train stats) from a
    ``--log-format json`` log."""
    tokens, prev_updates, valid_loss, last_train = 0, 0, None, {}
    for kind, stats in iter_log_stats(text):
        if kind == "train":
            updates = int(float(stats["train_num_updates"]))
            tokens += int(round(float(stats["train_wpb"]) * (updates - prev_updates)))
            prev_updates = updates
            last_train = stats
        else:
            valid_loss = float(stats["valid_loss"])
    return tokens, valid_loss, last_train


def generate_bleu(data_bin, checkpoint, threads=2, extra_args=(), log_path=None, beam=4):
    """:func:`~fairseq_efficiency.evaluate.corpus_bleu` of ``fairseq-generate`` on the test split."""
    cmd = [sys.executable, "-m", "fairseq_cli.generate", data_bin, "--user-dir", userdir(),
           "--path", checkpoint, "--cpu", "--gen-subset", "test", "--beam", str(beam),
           "--batch-size", "128", "--num-workers", "0",
           # fairseq 0.12 drops a last batch whose size is not a multiple of this (8):
           # without it, up to 7 test sentences would silently be left out of BLEU
           "--required-batch-size-multiple", "1"] + list(extra_args)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore")
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if log_path:
        with open(log_path, "w") as f:
            f.write(res.stdout + res.stderr)
    if res.returncode != 0:
        raise RuntimeError(f"fairseq-generate failed on {checkpoint}:\n" + res.stderr[-2000:])
    hyps, refs = parse_generate_output(res.stdout)
    return round(corpus_bleu(hyps, refs), 2)


def parse_generate_output(stdout):
    """Hypotheses and references, in test-set order, from ``fairseq-generate`` output."""
    hyp, ref = {}, {}
    for line in stdout.splitlines():
        if line.startswith("H-"):
            idx, _score, text = line.split("\t", 2)
            hyp[int(idx[2:])] = text
        elif line.startswith("T-"):
            idx, text = line.split("\t", 1)
            ref[int(idx[2:])] = text
    ids = sorted(ref)
    return [hyp.get(i, "") for i in ids], [ref[i] for i in ids]


@register_demo_row("baseline", order=0)
def baseline_row(ctx: DemoContext):
    """Plain fairseq training (the task with no feature switched on)."""
    return ctx.evaluate(ctx.train("baseline"))


def _discover_rows():
    """Register the technique rows (:mod:`.demo_rows`)."""
    from fairseq_efficiency.cli import demo_rows  # noqa: F401  (registers the rows)


def format_table(rows):
    cols = []
    for r in rows:
        cols += [k for k in r if k not in cols]

    def fmt(v):
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"
        if isinstance(v, int) and v >= 10000:
            return f"{v / 1e6:.2f}M"
        return str(v)

    cells = [[fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(cols, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(v.ljust(w) for v, w in zip(row, widths)) + " |" for row in cells]
    return "\n".join(lines)


def main(argv=None):
    from fairseq_efficiency.data.prepare import prepare

    _discover_rows()
    names = [s.name for s in sorted(_ROWS.values(), key=lambda s: (s.order, s.name))]
    parser = argparse.ArgumentParser(prog="fairseq-efficiency-demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="demo", help="data, checkpoints, logs and results go here")
    parser.add_argument("--rows", default=",".join(names),
                        help=f"comma-separated rows to run (default: all of {','.join(names)})")
    parser.add_argument("--threads", type=int, default=2, help="OMP threads for single-process rows")
    args = parser.parse_args(argv)
    wanted = [r for r in args.rows.split(",") if r]
    unknown = [r for r in wanted if r not in _ROWS]
    if unknown:
        parser.exit(2, f"fairseq-efficiency-demo: error: unknown row(s) {unknown}; choose from {names}\n")

    os.makedirs(args.workdir, exist_ok=True)
    print(f"[demo] preparing the embedded corpus in {args.workdir}/ ...", flush=True)
    logging.getLogger("fairseq_cli.preprocess").setLevel(logging.WARNING)
    data_bin = prepare(args.workdir, DEMO_CORPUS)
    ctx = DemoContext(data_bin=data_bin, workdir=args.workdir, threads=args.threads)
    rows = []
    for name in [n for n in names if n in wanted]:
        print(f"[demo] {name} ...", flush=True)
        t0 = time.time()
        row = _ROWS[name].fn(ctx)
        rows.append(row)
        print(f"[demo] {name} done in {time.time() - t0:.0f}s: {row}", flush=True)
        with open(os.path.join(args.workdir, "results.json"), "w") as f:
            json.dump({"corpus": asdict(DEMO_CORPUS), "rows": rows}, f, indent=2)
    table = format_table(rows)
    with open(os.path.join(args.workdir, "results.md"), "w") as f:
        f.write(table + "\n")
    print("\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
