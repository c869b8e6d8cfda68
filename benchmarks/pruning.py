"""Benchmark: magnitude pruning of an LSTM NMT model (See et al. 2016, Figures 3 and 6).

Trains a baseline LSTM on the embedded corpus (default: 6k short pairs with a
small lexicon and a 64/128-dim 1-layer LSTM, Adam as in ``make demo``, so the
whole grid runs on 2 shared CPU cores; ``--corpus demo --model demo`` uses the
demo's corpus and model), prunes it offline at each ratio with each scheme
(``fairseq-efficiency-prune``), evaluates it as pruned, retrains it with the
masks kept (``fairseq-train --restore-file PRUNED --reset-optimizer``, half the
learning rate as in the paper, ``--retrain-epochs`` epochs) and evaluates again.
A control row continues training the *unpruned* baseline for the same number of
epochs at the same learning rate, so the retrained rows are compared with a
model that got the same extra training. ``--recipe paper`` retrains (and trains the
control) with the paper's recipe instead (``--prune-retrain-fraction``: 1/3 of the
baseline's updates, the learning rate restarted at half and halved every 1/8 of the
budget after half of it). A scheme written ``class-blind:0.9`` caps every class's pruned
fraction at 0.9 (``--max-class-ratio``).

Prints a markdown table of test BLEU (beam 4, sacrebleu on tokenized text),
validation perplexity (no label smoothing) and the sparse export's size relative
to the dense model checkpoint. It measures quality, not speed (no timings)::

    python benchmarks/pruning.py --workdir bench-pruning --retrain-ratios 0.8,0.9
"""
import argparse
import json
import os
import subprocess
import sys
import time

import torch

from fairseq_efficiency.cli.demo import BASELINE_MODEL, BASELINE_OPTIM, DEMO_CORPUS
from fairseq_efficiency.cli.userdir import userdir
from fairseq_efficiency.data.prepare import prepare
from fairseq_efficiency.data.synthetic import CorpusConfig
from fairseq_efficiency.pruning.checkpoint import build_from_checkpoint, trained_updates
from fairseq_efficiency.pruning.offline import prune_checkpoint
from fairseq_efficiency.pruning.retrain import PAPER_FRACTION
from fairseq_efficiency.evaluate import bleu, perplexity
from fairseq_efficiency.pruning.export import export_state, saved_size
from fairseq_efficiency.pruning.schemes import SCHEMES


# Short sentences from a small lexicon: a model learns them within minutes on 2 shared cores.
BENCH_CORPUS = CorpusConfig(seed=1, train_size=6000, valid_size=300, test_size=300, nouns=80,
                            verbs=40, adjectives=30, adverbs=10, max_len=20)

SMALL_MODEL = [
    "--arch", "lstm", "--encoder-layers", "1", "--decoder-layers", "1",
    "--encoder-embed-dim", "64", "--decoder-embed-dim", "64", "--decoder-out-embed-dim", "64",
    "--encoder-hidden-size", "128", "--decoder-hidden-size", "128", "--dropout", "0.1",
]


def _opt(args, name, value):
    out = list(args)
    i = out.index(name)
    out[i + 1] = str(value)
    return out


def train(data_bin, save_dir, extra, log_path, threads):
    args = [data_bin, "--user-dir", userdir(), "--task", "translation_efficiency", "--cpu",
            "--seed", "1", "--num-workers", "0", "--log-format", "simple", "--log-interval", "100",
            "--no-epoch-checkpoints", "--save-dir", save_dir] + list(extra)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore")
    t0 = time.time()
    with open(log_path, "w") as log:
        rc = subprocess.call([sys.executable, "-m", "fairseq_cli.train"] + args, stdout=log,
                             stderr=subprocess.STDOUT, env=env)
    if rc != 0:
        raise RuntimeError(f"fairseq-train failed, see {log_path}")
    return os.path.join(save_dir, "checkpoint_last.pt"), time.time() - t0


def evaluate(path, beam):
    state, task, model = build_from_checkpoint(path)
    size = saved_size(export_state(state)) / saved_size(export_state(state, max_density=0.0))
    zeros = sum(int((p == 0).sum()) for p in model.parameters() if p.dim() > 1)
    total = sum(p.numel() for p in model.parameters() if p.dim() > 1)
    return {"bleu": round(bleu(task, model, "test", beam=beam), 2),
            "ppl": round(perplexity(task, model, "valid"), 3), "zeros": round(zeros / total, 4), "sparse_export": round(size, 3)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="bench-pruning")
    parser.add_argument("--ratios", default="0.4,0.6,0.8,0.9")
    parser.add_argument("--schemes", default=",".join(SCHEMES))
    parser.add_argument("--retrain-epochs", type=int, default=1)
    parser.add_argument("--retrain-lr-scale", type=float, default=0.5,
                        help="retraining LR = baseline LR x this (paper: 0.5)")
    parser.add_argument("--no-retrain", action="store_true")
    parser.add_argument("--recipe", choices=["epochs", "paper"], default="epochs",
                        help="epochs: --retrain-epochs at --retrain-lr-scale x the LR; paper: "
                             "See et al.'s recipe for --retrain-fraction of the baseline's updates")
    parser.add_argument("--retrain-fraction", type=float, default=PAPER_FRACTION)
    parser.add_argument("--retrain-ratios", default="0.4,0.6,0.8,0.9",
                        help="ratios at which class-blind is retrained (the paper's Fig. 6); "
                             "the other schemes are retrained at 0.8 (Fig. 3's comparison)")
    parser.add_argument("--retrain-all", action="store_true", help="retrain the full grid")
    parser.add_argument("--retrain-updates", type=int, default=0,
                        help="retrain for this many updates instead of --retrain-epochs")
    parser.add_argument("--model", choices=["small", "demo"], default="small",
                        help="small: 64-dim embeddings, 128-dim LSTMs (fits 2 shared cores); "
                             "demo: the make-demo baseline (128/256)")
    parser.add_argument("--epochs", type=int, default=12, help="baseline training epochs")
    parser.add_argument("--corpus", choices=["bench", "demo"], default="bench",
                        help="bench: 6k short pairs, small lexicon; demo: the make-demo preset")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--beam", type=int, default=4)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    ratios = [float(r) for r in args.ratios.split(",")]
    schemes = args.schemes.split(",")
    os.makedirs(args.workdir, exist_ok=True)
    data_bin = prepare(args.workdir, BENCH_CORPUS if args.corpus == "bench" else DEMO_CORPUS)
    model = BASELINE_MODEL if args.model == "demo" else SMALL_MODEL
    base_args = _opt(model + BASELINE_OPTIM, "--max-epoch", args.epochs)
    base_lr = float(base_args[base_args.index("--lr") + 1])
    retrain_args = _opt(_opt(base_args, "--max-epoch", args.retrain_epochs), "--lr",
                        base_lr * args.retrain_lr_scale)
    if args.retrain_updates:
        retrain_args = _opt(retrain_args, "--max-epoch", 0) + ["--max-update", str(args.retrain_updates)]
    retrain_args += ["--reset-optimizer", "--reset-lr-scheduler", "--reset-meters"]
    if args.recipe == "paper":  # budget known once the baseline exists (below)
        retrain_args = None
    retrain_ratios = [float(r) for r in args.retrain_ratios.split(",") if r]
    results_path = os.path.join(args.workdir, "results.json")
    results = json.load(open(results_path)) if os.path.exists(results_path) else {}

    def save():
        with open(results_path, "w") as f:
            json.dump(results, f, indent=2)

    ck = os.path.join(args.workdir, "ck")
    base_ckpt = os.path.join(ck, "baseline", "checkpoint_last.pt")
    if "baseline" not in results or not os.path.exists(base_ckpt):
        _, wall = train(data_bin, os.path.join(ck, "baseline"), base_args,
                        os.path.join(args.workdir, "baseline.log"), args.threads)
        results = {"baseline": evaluate(base_ckpt, args.beam)}
        save()
    print("baseline", results["baseline"], flush=True)
    if retrain_args is None:
        budget = max(1, round(args.retrain_fraction * trained_updates(
            torch.load(base_ckpt, map_location="cpu", weights_only=False))))
        retrain_args = _opt(base_args, "--max-epoch", 0) + [
            "--max-update", str(budget), "--prune-retrain-fraction", str(args.retrain_fraction),
            "--reset-optimizer", "--reset-lr-scheduler", "--reset-meters"]
    if not args.no_retrain and "control" not in results:
        # the unpruned model trained for the same extra epochs (masks: none)
        pruned0 = os.path.join(args.workdir, "pruned-0.pt")
        prune_checkpoint(base_ckpt, pruned0, "class-blind", 0.0)
        path, wall = train(data_bin, os.path.join(ck, "control"),
                           retrain_args + ["--restore-file", pruned0],
                           os.path.join(args.workdir, "control.log"), args.threads)
        results["control"] = evaluate(path, args.beam)
        save()
    for spec in schemes:
        scheme, _, cap = spec.partition(":")
        for ratio in ratios:
            key = f"{spec}@{ratio}"
            row = results.get(key, {})
            pruned = os.path.join(args.workdir, f"pruned-{spec}-{ratio}.pt")
            if "pruned" not in row:
                prune_checkpoint(base_ckpt, pruned, scheme, ratio,
                                 max_class_ratio=float(cap) if cap else 1.0)
                row["pruned"] = evaluate(pruned, args.beam)
                results[key] = row
                save()
            wanted = args.retrain_all or abs(ratio - 0.8) < 1e-9 or (
                scheme == "class-blind" and any(abs(ratio - r) < 1e-9 for r in retrain_ratios))
            if not args.no_retrain and wanted and "retrained" not in row:
                save_dir = os.path.join(ck, f"{spec}-{ratio}")
                path, wall = train(data_bin, save_dir, retrain_args + ["--restore-file", pruned],
                                   os.path.join(args.workdir, f"retrain-{spec}-{ratio}.log"),
                                   args.threads)
                row["retrained"] = evaluate(path, args.beam)
                results[key] = row
                save()
            print(key, row, flush=True)
    print()
    print(format_table(results, schemes, ratios))
    return 0


def format_table(results, schemes, ratios):
    b = results["baseline"]
    lines = ["| model | pruned | BLEU (pruned) | valid ppl (pruned) | BLEU (retrained) | "
             "valid ppl (retrained) | sparse export / dense |", "|---|---|---|---|---|---|---|",
             f"| baseline | 0% | {b['bleu']:.2f} | {b['ppl']:.3f} | - | - | - |"]
    if "control" in results:
        c = results["control"]
        lines.append(f"| baseline, trained on (control) | 0% | - | - | {c['bleu']:.2f} | {c['ppl']:.3f} | - |")
    for s in schemes:
        for r in ratios:
            row = results.get(f"{s}@{r}")
            if not row:
                continue
            p, t = row["pruned"], row.get("retrained")
            lines.append(f"| {s} | {r:.0%} | {p['bleu']:.2f} | {p['ppl']:.3f} | "
                         + (f"{t['bleu']:.2f} | {t['ppl']:.3f} |" if t else "- | - |")
                         + f" {(t or p)['sparse_export']:.0%} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
