"""HybridNMT training speed: 1 rank x 1 thread vs 2 ranks x 1 thread (hybrid) vs 1 rank x 2 threads.

Measures training tokens/s (forward + backward + gradient all-reduce + Adam,
the work of one fairseq update) of the same HybridNMT model on batches of the
embedded corpus (vocabulary >= 8k, so the softmax matters), and the paper's
*scaling factor* (tokens/s relative to one worker; Ono et al., Table 3).

    flock /tmp/bench.lock python benchmarks/hybrid.py            # full table
    python benchmarks/hybrid.py --steps 3 --chunks 4 --quick       # smoke run

The machine's load (``uptime``) is printed with the table: on a shared machine
the figures are only comparable to each other when the load is low.
"""
import argparse
import os
import subprocess
import sys
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fairseq_efficiency.data.prepare import prepare  # noqa: E402
from fairseq_efficiency.data.synthetic import CorpusConfig  # noqa: E402
from fairseq_efficiency.parallel.pipeline import WavefrontPipeline  # noqa: E402
from fairseq_efficiency.parallel.seq2seq import HybridSeq2Seq, batch_bounds  # noqa: E402
from fairseq_efficiency.parallel.spawn import run_ranks  # noqa: E402

# per-update breakdown (ms, per rank): compute and time blocked on the other rank in forward
# (pipeline + head + loss) and backward, the gradient all-reduce, and the optimizer step
PHASES = ("fwd compute", "fwd wait", "bwd compute", "bwd wait", "all-reduce", "optimizer")

# a larger lexicon than the demo's, so that the target vocabulary is >= 8k types
CORPUS = CorpusConfig(seed=7, train_size=20000, valid_size=200, test_size=200,
                      nouns=2000, verbs=1000, adjectives=800, adverbs=300, max_len=40)


def load_batches(data_bin, n_batches, batch_size):
    """Length-bucketed, right-padded batches from the binarized training set."""
    from fairseq.data import Dictionary, data_utils
    src_dict = Dictionary.load(os.path.join(data_bin, "dict.src.txt"))
    tgt_dict = Dictionary.load(os.path.join(data_bin, "dict.tgt.txt"))
    src = data_utils.load_indexed_dataset(os.path.join(data_bin, "train.src-tgt.src"), src_dict)
    tgt = data_utils.load_indexed_dataset(os.path.join(data_bin, "train.src-tgt.tgt"), tgt_dict)
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(src), generator=g)[: n_batches * batch_size].tolist()
    idx.sort(key=lambda i: (src.sizes[i], tgt.sizes[i]))
    pad, eos = tgt_dict.pad(), tgt_dict.eos()
    batches = []
    for b in range(n_batches):
        rows = idx[b * batch_size:(b + 1) * batch_size]
        s = [src[i] for i in rows]
        t = [tgt[i] for i in rows]
        S = data_utils.collate_tokens(s, pad)  # right-padded
        T = data_utils.collate_tokens(t, pad)
        P = data_utils.collate_tokens(t, pad, eos, move_eos_to_beginning=True)  # <eos> y[:-1]
        batches.append((S, P, T))
    perm = torch.randperm(len(batches), generator=g).tolist()
    return [batches[i] for i in perm], len(src_dict), len(tgt_dict), pad


def bench_rank(rank, world, mode, chunks, model_kw, batches, warmup, pad):
    torch.manual_seed(1)
    model = HybridSeq2Seq(padding_idx=pad, **model_kw).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    params = list(model.parameters())
    pipe = None
    if mode == "hybrid":
        per = [b - a for a, b in batch_bounds(model_kw["layers"], world)]  # layers per stage
        pipe = WavefrontPipeline(model.encoder, model.decoder, per, chunks)

    phases = dict.fromkeys(PHASES, 0.0)

    def step(src, prev, tgt):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        ntok = int(tgt.ne(pad).sum())
        if pipe is None:
            logits, _ = model(src, prev, chunks=1)
            target = tgt
        else:
            logits, _, (lo, hi) = pipe(src, prev)
            target = tgt[lo:hi]
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1),
                               ignore_index=pad, reduction="sum") / ntok
        t1 = time.perf_counter()
        wait_fwd = pipe.pop_wait() if pipe is not None else 0.0
        loss.backward()
        t2 = time.perf_counter()
        wait_bwd = pipe.pop_wait() if pipe is not None else 0.0
        if world > 1:  # fairseq legacy_ddp: one flat all-reduce (sum) of every gradient
            flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).view(-1)
                              for p in params])
            dist.all_reduce(flat)
            off = 0
            for p in params:
                n = p.numel()
                p.grad = flat[off:off + n].view_as(p)
                off += n
        t3 = time.perf_counter()
        opt.step()
        t4 = time.perf_counter()
        for name, dt in zip(PHASES, (t1 - t0 - wait_fwd, wait_fwd, t2 - t1 - wait_bwd, wait_bwd,
                                     t3 - t2, t4 - t3)):
            phases[name] += dt

    for b in batches[:warmup]:
        step(*b)
    if world > 1:
        dist.barrier()
    t0 = time.perf_counter()
    phases.update(dict.fromkeys(PHASES, 0.0))
    for b in batches[warmup:]:
        step(*b)
    if world > 1:
        dist.barrier()
    elapsed = time.perf_counter() - t0
    src_tok = sum(int(s.ne(pad).sum()) for s, _, _ in batches[warmup:])
    tgt_tok = sum(int(t.ne(pad).sum()) for _, _, t in batches[warmup:])
    n = max(1, len(batches) - warmup)
    return elapsed, src_tok, tgt_tok, {k: 1000 * v / n for k, v in phases.items()}


def uptime():
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "uptime unavailable"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default="/tmp/fairseq_efficiency_bench/hybrid",
                   help="where the benchmark corpus is generated (cached)")
    p.add_argument("--embed", type=int, default=128, help="embedding size")
    p.add_argument("--hidden", type=int, default=256, help="LSTM hidden size")
    p.add_argument("--layers", type=int, default=4, help="LSTM layers per side")
    p.add_argument("--batch-size", type=int, default=48, help="sentences per batch")
    p.add_argument("--steps", type=int, default=8, help="timed updates per configuration")
    p.add_argument("--warmup", type=int, default=2, help="untimed updates first")
    p.add_argument("--chunks", default="1,2,4,8", help="time-chunk counts for the 2-rank runs")
    p.add_argument("--quick", action="store_true", help="only the 2-rank run with the first chunk count")
    args = p.parse_args(argv)
    chunk_list = [int(c) for c in args.chunks.split(",")]
    if min(chunk_list) < 1 or args.steps < 1 or args.warmup < 0:
        p.error("--chunks must be >= 1, --steps >= 1, --warmup >= 0")

    data_bin = prepare(args.workdir, CORPUS)
    batches, vs, vt, pad = load_batches(data_bin, args.steps + args.warmup, args.batch_size)
    if vt < 8000:
        print(f"# warning: target vocabulary {vt} < 8000")
    model_kw = dict(src_vocab=vs, tgt_vocab=vt, embed_dim=args.embed, hidden=args.hidden,
                    layers=args.layers, dropout=0.3)
    print(flush=True)
    print(f"# HybridNMT {args.layers}+{args.layers} layers, hidden {args.hidden}, "
          f"embed {args.embed}, vocab {vs}/{vt}, {args.batch_size} sentences/batch, "
          f"{args.steps} timed updates (+{args.warmup} warm-up), dropout 0.3")
    print(f"# load before: {uptime()}")
    runs = []
    if not args.quick:
        runs += [("1 rank x 1 thread", 1, 1, "single", 1),
                 ("1 rank x 2 threads", 1, 2, "single", 1)]
    runs += [(f"2 ranks x 1 thread, {c} chunks", 2, 1, "hybrid", c)
             for c in (chunk_list[:1] if args.quick else chunk_list)]
    rows, breakdown = [], []
    for name, world, threads, mode, chunks in runs:
        res = run_ranks(bench_rank, world, mode, chunks, model_kw, batches, args.warmup, pad,
                        threads=threads, timeout=3600)
        elapsed = max(r[0] for r in res)
        rows.append((name, res[0][1] / elapsed, res[0][2] / elapsed))
        breakdown += [(name, r, res[r][3]) for r in range(world)]
        print(f"  done: {name}: {elapsed:.1f} s", flush=True)
    base = rows[0][1] if not args.quick else None
    print(f"# load after: {uptime()}")
    print("| configuration | src tokens/s | tgt tokens/s | scaling factor |")
    print("|---|---:|---:|---:|")
    for name, src_tps, tgt_tps in rows:
        scale = f"{src_tps / base:.2f}x" if base else "-"
        print(f"| {name} | {src_tps:,.0f} | {tgt_tps:,.0f} | {scale} |")
    print()
    print("Per update, ms (rank 0 = first pipeline stage, with the embeddings):")
    print("| configuration | rank | " + " | ".join(PHASES) + " | total |")
    print("|---|---:|" + "---:|" * (len(PHASES) + 1))
    for name, r, ph in breakdown:
        print(f"| {name} | {r} | " + " | ".join(f"{ph[k]:.0f}" for k in PHASES)
              + f" | {sum(ph.values()):.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
