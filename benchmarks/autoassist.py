"""Benchmark: uniform vs AutoAssist vs self-paced vs dynamic sampling (not a test).

Trains the same small LSTM with the same seed and batch limits under each
``--instance-selection`` on the embedded corpus, then reports per method:
Boss tokens (source + target tokens of the sentences trained on, forward +
backward) and wall time needed to first reach the uniform run's best
validation loss, the best valid loss, test BLEU of ``checkpoint_best.pt``
(greedy, sacrebleu), seconds per update and the share of training time the
loop waited for the asynchronous worker (Assistant overhead).

    python benchmarks/autoassist.py --out /tmp/aa-bench            # full comparison
    python benchmarks/autoassist.py --preset demo --epochs 10 --out /tmp/aa-demo  # demo model
    python benchmarks/autoassist.py --featurize-only --pairs 1000000  # feature build cost

Goal (issue): >= 1.4x fewer Boss tokens to reach the baseline's best valid
loss, BLEU within -0.3 of the baseline, overhead <= 5%.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from fairseq_efficiency.cli.demo import BASELINE_MODEL, DEMO_CORPUS, iter_log_stats  # noqa: E402
from fairseq_efficiency.cli.userdir import userdir  # noqa: E402
from fairseq_efficiency.data.prepare import prepare  # noqa: E402
from fairseq_efficiency.data.synthetic import CorpusConfig  # noqa: E402

METHODS = ["uniform", "autoassist", "self-paced", "dynamic-sampling"]
MODEL = ["--arch", "lstm", "--encoder-embed-dim", "64", "--encoder-hidden-size", "64",
         "--decoder-embed-dim", "64", "--decoder-hidden-size", "64", "--decoder-out-embed-dim", "64",
         "--encoder-layers", "1", "--decoder-layers", "1", "--dropout", "0.1"]


def env(threads=1):
    e = dict(os.environ)
    e["OMP_NUM_THREADS"] = str(threads)
    e["PYTHONWARNINGS"] = "ignore"
    e["PYTHONPATH"] = ROOT + os.pathsep + e.get("PYTHONPATH", "")
    return e


def train(data, save, method, args):
    cmd = [sys.executable, "-m", "fairseq_cli.train", data, "--user-dir", userdir(),
           "--task", "translation_efficiency", "--criterion", "sentence_cross_entropy",
           "--instance-selection", method, "--cpu", "--seed", str(args.seed), "--num-workers", "0",
           "--optimizer", "adam", "--lr", str(args.lr), "--max-tokens", str(args.max_tokens),
           "--max-epoch", str(args.epochs), "--save-dir", save, "--no-epoch-checkpoints",
           "--log-format", "json", "--log-interval", "1000", "--no-progress-bar",
           *(BASELINE_MODEL + ["--clip-norm", "1.0"] if args.preset == "demo" else MODEL)]
    t0 = time.time()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env(args.threads))
    if res.returncode != 0:
        raise RuntimeError(f"{method} failed:\n{res.stderr[-3000:]}")
    wall = time.time() - t0
    train_stats, valid_stats = {}, {}
    for kind, stats in iter_log_stats(res.stdout + res.stderr):
        tag = kind + "_"
        d = {k[len(tag):] if k.startswith(tag) else k: v for k, v in stats.items()}
        (train_stats if kind == "train" else valid_stats)[int(d["epoch"])] = d
    return train_stats, valid_stats, wall


def bleu(data, save):
    cmd = [sys.executable, "-m", "fairseq_cli.generate", data, "--user-dir", userdir(),
           "--task", "translation_efficiency", "--path", os.path.join(save, "checkpoint_best.pt"),
           "--cpu", "--beam", "1", "--max-tokens", "4000", "--scoring", "sacrebleu", "--quiet"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env())
    m = re.search(r"BLEU = ([\d.]+)", res.stdout + res.stderr)
    if not m:
        raise RuntimeError(f"generate failed:\n{res.stderr[-2000:]}")
    return float(m.group(1))


def corpus_tokens(data):
    from fairseq.data import data_utils

    tot = 0
    for lang in ("src", "tgt"):
        ds = data_utils.load_indexed_dataset(os.path.join(data, f"train.src-tgt.{lang}"), None)
        tot += int(np.asarray(ds.sizes).sum())
    return tot


def featurize_only(args):
    """Feature build time and peak RSS on ``--pairs`` generated pairs."""
    cfg = CorpusConfig(seed=args.seed, train_size=args.pairs, valid_size=10, test_size=10)
    t0 = time.time()
    data = prepare(os.path.join(args.out, f"feat{args.pairs}"), cfg, workers=2)
    prep = time.time() - t0
    code = (
        "import resource,time,sys;sys.path.insert(0,%r);"
        "from fairseq_efficiency.assist import features as F;t=time.time();"
        "x,p=F.load_or_build(%r,'train','src','tgt',*[F._dict_size(%r,l)[0] for l in ('src','tgt')],"
        "rebuild=True);"
        "print(time.time()-t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024, x.nnz, "
        "x.shape[1], __import__('os').path.getsize(p)/2**20)" % (ROOT, data, data)
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env())
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    secs, rss, nnz, cols, mb = out.stdout.split()[-5:]
    base = subprocess.run([sys.executable, "-c", "import resource,fairseq,sklearn,scipy;"
                           "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024)"],
                          capture_output=True, text=True, env=env()).stdout.split()[-1]
    print(f"| pairs | build s | peak RSS MiB (imports alone) | non-zeros | features | cache MiB |")
    print(f"|---|---|---|---|---|---|")
    print(f"| {args.pairs} | {float(secs):.1f} | {float(rss):.0f} ({float(base):.0f}) | {int(nnz)} "
          f"| {cols} | {float(mb):.0f} |")
    print(f"(corpus generation + fairseq-preprocess: {prep:.0f} s, not included)")
    if args.compare_hashing:
        from sklearn.feature_extraction.text import HashingVectorizer

        n = min(args.pairs, 100_000)
        src = open(os.path.join(os.path.dirname(data), "text", "train.src")).readlines()[:n]
        tgt = open(os.path.join(os.path.dirname(data), "text", "train.tgt")).readlines()[:n]
        t0 = time.time()
        hv = HashingVectorizer(n_features=2 ** 20, alternate_sign=False, norm=None,
                               token_pattern=r"\S+")
        docs = [" ".join(["s_" + w for w in s.split()] + ["t_" + w for w in t.split()])
                for s, t in zip(src, tgt)]
        hv.transform(docs)
        print(f"HashingVectorizer over token strings, {n} pairs: {time.time() - t0:.1f} s "
              f"(before IDF)")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="/tmp/autoassist-bench")
    p.add_argument("--pairs", type=int, default=20000)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--max-tokens", type=int, default=2000)
    p.add_argument("--lr", type=float, default=0.005)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--methods", default=",".join(METHODS),
                   help="methods to (re)train; others are reported from OUT/results.json")
    p.add_argument("--preset", choices=["small", "demo"], default="small",
                   help="small: --pairs pairs, LSTM 64/64, 1 thread; demo: make demo's corpus "
                        "and model, --max-tokens 4000, 2 threads")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--featurize-only", action="store_true")
    p.add_argument("--compare-hashing", action="store_true")
    p.add_argument("--report-only", action="store_true", help="re-print OUT/results.json")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    if args.featurize_only:
        return featurize_only(args)
    if args.preset == "demo":  # make demo's corpus and LSTM (256 hidden), trained longer
        cfg = DEMO_CORPUS
        args.max_tokens, args.threads = 4000, 2
    else:
        cfg = CorpusConfig(seed=args.seed, train_size=args.pairs, valid_size=500, test_size=500,
                           nouns=600, verbs=300, adjectives=300, adverbs=100, max_len=30)
    data = prepare(os.path.join(args.out, "corpus"), cfg)
    tokens = corpus_tokens(data)
    results = os.path.join(args.out, "results.json")
    # methods not run this time keep their rows from an earlier run with the same --out
    rows = json.load(open(results)) if os.path.exists(results) else {}
    for method in ([] if args.report_only else args.methods.split(",")):
        save = os.path.join(args.out, method)
        shutil.rmtree(save, ignore_errors=True)  # always train from scratch
        tr, va, wall = train(data, save, method, args)
        rows[method] = dict(train=tr, valid=va, wall=wall, bleu=bleu(data, save))
        print(f"done {method}: {wall:.0f} s", file=sys.stderr)
        json.dump(rows, open(results, "w"))
    for r in rows.values():  # json keys are strings
        r["train"] = {int(k): v for k, v in r["train"].items()}
        r["valid"] = {int(k): v for k, v in r["valid"].items()}
    base = rows["uniform"]
    target = min(float(v["loss"]) for v in base["valid"].values())

    def boss_tokens(method, ep):
        if method == "uniform":
            return tokens * ep  # every epoch is exactly one pass over the data
        return float(rows[method]["train"][ep]["boss_tok"])

    print(f"corpus: {cfg.train_size} pairs, {tokens} src+tgt tokens; "
          f"{'LSTM 128/256 (make demo)' if args.preset == 'demo' else 'LSTM 64/64'}; "
          f"max-tokens {args.max_tokens}; {args.epochs} epochs; target valid loss {target:.3f}")
    print("| method | Boss tokens to target | vs uniform | wall s to target | best valid loss "
          "| BLEU | s/update | worker wait % | final keep rate |")
    print("|---|---|---|---|---|---|---|---|---|")
    base_tok = None
    for method, r in rows.items():
        reach = [ep for ep in sorted(r["valid"]) if float(r["valid"][ep]["loss"]) <= target + 1e-9]
        ep = reach[0] if reach else None
        tok = boss_tokens(method, ep) if ep else None
        if method == "uniform":
            base_tok = tok
        last = r["train"][max(r["train"])]
        updates = float(last["num_updates"])
        train_wall = float(last.get("wall", r["wall"]))
        wall_to = float(r["train"][ep]["wall"]) if ep else None
        wait = float(last.get("assist_wait_s", 0.0))
        print(f"| {method} | {f'{tok:,.0f}' if tok else 'not reached'} | "
              f"{f'{base_tok / tok:.2f}x' if tok and base_tok else '-'} | "
              f"{f'{wall_to:.0f}' if wall_to else '-'} | "
              f"{min(float(v['loss']) for v in r['valid'].values()):.3f} | {r['bleu']:.2f} | "
              f"{train_wall / updates:.3f} | {100 * wait / train_wall:.1f} | "
              f"{last.get('keep_rate', '-')} |")

    # the whole learning curve: Boss tokens each method needs to reach uniform's epoch-e loss
    others = [m for m in rows if m != "uniform"]
    print("\n| uniform epoch | its valid loss | uniform Boss tokens | "
          + " | ".join(f"{m} (tokens, saving)" for m in others) + " |")
    print("|---|---|---|" + "---|" * len(others))
    for e in sorted(base["valid"]):
        loss = float(base["valid"][e]["loss"])
        cells = []
        for m in others:
            r = rows[m]
            hit = [x for x in sorted(r["valid"]) if float(r["valid"][x]["loss"]) <= loss + 1e-9]
            tok = boss_tokens(m, hit[0]) if hit else None
            cells.append(f"{tok / 1e6:.2f}M, {tokens * e / tok:.2f}x" if tok else "not reached")
        print(f"| {e} | {loss:.3f} | {tokens * e / 1e6:.2f}M | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    sys.exit(main())
