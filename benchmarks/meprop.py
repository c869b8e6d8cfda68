"""meProp / meSimp benchmarks (speed and quality; not tests).

    python benchmarks/meprop.py linear   # backward time of one linear unit, dense vs top-k
    python benchmarks/meprop.py linear --device cuda   # the same on a GPU (paper: 27.5x, h=8192, k=32)
    python benchmarks/meprop.py digits   # MLP on scikit-learn's digits: dense / meProp / meSimp
    python benchmarks/meprop.py lstm     # lstm vs lstm_meprop step-time breakdown at hidden 1024
    python benchmarks/meprop.py lstm-bleu  # lstm vs lstm_meprop: fairseq-train + BLEU

Run timed sections under ``flock /tmp/bench.lock`` on a quiet machine; every
timing is the median of interleaved repetitions (methods alternate inside each
repetition, so background load hits all of them alike).
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fairseq_efficiency.cli.demo import DEMO_CORPUS  # noqa: E402
from fairseq_efficiency.meprop import MeSimp, TopKLinear, linear_group  # noqa: E402


def _load():
    return os.getloadavg()[0]


def _sync(device):
    """Wait for queued kernels, so that a timer read measures them (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device(name):
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: torch sees no CUDA device")
    return device


# -- 1. one linear unit ------------------------------------------------------------------
def bench_linear(args):
    """Backward time of one linear unit: dense vs unified vs per-example meProp.

    Two orders, because fresh memory dominates the sparse backward: *steady* runs each
    layer ``reps`` times in a row (the allocator reuses the previous step's memory, as a
    training loop in steady state does); *interleaved* alternates dense, unified and
    per-example layers, so every large allocation of the sparse backward lands on memory
    the others just returned to the OS (page faults). Medians, dense always steady.
    """
    torch.set_num_threads(args.threads)
    dev = _device(args.device)
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{args.threads} threads"
    print(f"# linear unit backward, batch {args.batch}, {where}, "
          f"median of {args.reps} reps, load {_load():.1f}")
    print("| n | k | dense ms | unified ms (steady) | speedup | unified ms (interleaved) | speedup "
          "| per-example ms | speedup |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n in args.sizes:
        x = torch.randn(args.batch, n, device=dev)
        gy = torch.randn(args.batch, n, device=dev)
        dense = nn.Linear(n, n, device=dev)
        layers = {}
        for k in args.ks:
            layers[("unified", k)] = TopKLinear(n, n, k=k, mode="unified", device=dev)
            layers[("per-example", k)] = TopKLinear(n, n, k=k, mode="per-example", device=dev)

        def run(layer):
            layer.weight.grad = None  # fairseq resets gradients to None every step
            if layer.bias is not None:
                layer.bias.grad = None
            xi = x.detach().requires_grad_()
            y = layer(xi)
            _sync(dev)
            t0 = time.perf_counter()
            y.backward(gy)
            _sync(dev)
            return time.perf_counter() - t0

        def steady(layer):
            run(layer)  # warm-up (allocates the reusable row-gradient buffer)
            return statistics.median(run(layer) for _ in range(args.reps)) * 1e3

        d = steady(dense)
        inter = {key: [] for key in layers}
        for _ in range(args.reps):
            run(dense)
            for key, layer in layers.items():
                inter[key].append(run(layer))
        for k in args.ks:
            us = steady(layers[("unified", k)])
            ui = statistics.median(inter[("unified", k)]) * 1e3
            p = statistics.median(inter[("per-example", k)]) * 1e3
            print(f"| {n} | {k} | {d:.1f} | {us:.2f} | {d / us:.1f}x | {ui:.2f} | {d / ui:.1f}x "
                  f"| {p:.1f} | {d / p:.2f}x |", flush=True)
    print(f"# load after: {_load():.1f}")


# -- 2. MLP on digits -------------------------------------------------------------------------
class MLP(nn.Module):
    """Three-layer MLP (two hidden layers, ReLU) as the paper's MNIST model (section 3.1)."""

    def __init__(self, hidden, k=None, mode="unified"):
        super().__init__()
        if k is None:
            self.fc1, self.fc2 = nn.Linear(64, hidden), nn.Linear(hidden, hidden)
        else:
            self.fc1 = TopKLinear(64, hidden, k=k, mode=mode)
            self.fc2 = TopKLinear(hidden, hidden, k=k, mode=mode)
        self.out = nn.Linear(hidden, 10)  # output layer stays dense (section 2.3.1)

    def forward(self, x):
        return self.out(torch.relu(self.fc2(torch.relu(self.fc1(x)))))

    def groups(self):
        return [linear_group("hidden1", self.fc1, [self.fc2]),
                linear_group("hidden2", self.fc2, [self.out])]


def _digits(seed):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, random_state=seed, stratify=y)
    return (torch.from_numpy(Xtr), torch.from_numpy(ytr).long(),
            torch.from_numpy(Xte), torch.from_numpy(yte).long())


def train_digits(kind, seed, args):
    torch.manual_seed(seed)
    Xtr, ytr, Xte, yte = _digits(seed)
    k = None if kind == "dense" else (args.simp_k if kind.startswith("meSimp") else args.k)
    mode = "per-example" if kind == "meProp per-example" else "unified"
    model = MLP(args.hidden, k=k, mode=mode)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    simp = None
    if kind.startswith("meSimp"):
        simp = MeSimp(model.groups(), interval=args.interval, prune_rate=float(kind.split("p=")[1]))
    g = torch.Generator().manual_seed(seed)
    stage = args.epochs // args.stages
    for epoch in range(args.epochs):
        if simp is not None:
            pos = epoch % stage
            simplifying = pos < stage // 2  # cycle: simplification half, then normal half
            simp.set_recording(simplifying)
            if pos == 0 and epoch > 0:
                opt.state.clear()  # optimizer reset at every stage start (section 2.2)
        model.train()
        perm = torch.randperm(len(Xtr), generator=g)
        for i in range(0, len(Xtr), args.batch):
            idx = perm[i: i + args.batch]
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(Xtr[idx]), ytr[idx]).backward()
            opt.step()
            if simp is not None and simplifying:
                simp.step(opt)
    model.eval()
    with torch.no_grad():
        acc = (model(Xte).argmax(1) == yte).float().mean().item() * 100
    sizes = (model.fc1.weight.shape[0], model.fc2.weight.shape[0])
    return acc, sizes


def bench_digits(args):
    torch.set_num_threads(1)
    kinds = ["dense", "meProp unified", "meProp per-example"] + [
        f"meSimp p={p}" for p in args.prune_rates]
    print(f"# digits MLP 64-{args.hidden}-{args.hidden}-10, meProp k={args.k}, meSimp k={args.simp_k} "
          f"every {args.interval} updates, {args.stages} cycle stages, {args.epochs} epochs, "
          f"Adam lr {args.lr}, batch {args.batch}, seeds {args.seeds}")
    print("| model | test acc % (mean ± sd) | hidden sizes (mean) |")
    print("|---|---|---|")
    for kind in kinds:
        accs, sizes = [], []
        for seed in range(args.seeds):
            a, s = train_digits(kind, seed, args)
            accs.append(a)
            sizes.append(s)
        sz = np.mean(np.array(sizes), axis=0)
        print(f"| {kind} | {np.mean(accs):.2f} ± {np.std(accs):.2f} | "
              f"{sz[0]:.0f}, {sz[1]:.0f} |", flush=True)


# -- 3. lstm vs lstm_meprop ---------------------------------------------------------------
def _demo_data(workdir):
    from fairseq_efficiency.data.prepare import prepare
    return prepare(workdir, DEMO_CORPUS)  # the demo runner's corpus


def _model_args(arch, hidden, k):
    a = ["--arch", arch, "--encoder-layers", "1", "--decoder-layers", "1",
         "--encoder-embed-dim", "128", "--decoder-embed-dim", "128",
         "--decoder-out-embed-dim", "128", "--encoder-hidden-size", str(hidden),
         "--decoder-hidden-size", str(hidden), "--dropout", "0.1"]
    if arch == "lstm_meprop":
        a += ["--meprop-k", str(k)]
    return a


OPTIM = ["--optimizer", "adam", "--lr", "0.005", "--clip-norm", "1.0",
         "--criterion", "cross_entropy", "--max-tokens", "4000"]


def _build(data_bin, arch, hidden, k, device):
    from fairseq import options, optim, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq_efficiency.cli.userdir import userdir
    parser = options.get_training_parser()
    ns = options.parse_args_and_arch(parser, [data_bin, "--user-dir", userdir(), "--cpu",
                                              "--task", "translation_efficiency"]
                                     + _model_args(arch, hidden, k) + OPTIM)
    cfg = convert_namespace_to_omegaconf(ns)
    task = tasks.setup_task(cfg.task)
    task.load_dataset("train", combine=True)
    model = task.build_model(cfg.model).to(device)
    crit = task.build_criterion(cfg.criterion).to(device)
    opt = optim.build_optimizer(cfg.optimizer, [p for p in model.parameters() if p.requires_grad])
    itr = task.get_batch_iterator(task.dataset("train"), max_tokens=4000, seed=1,
                                  max_positions=(1024, 1024)).next_epoch_itr(shuffle=True)
    return model, crit, opt, itr


def bench_lstm(args):
    from fairseq import utils
    torch.set_num_threads(args.threads)
    dev = _device(args.device)
    data_bin = _demo_data(args.workdir)
    runs = {}
    for arch in ("lstm", "lstm_meprop"):
        torch.manual_seed(1)
        runs[arch] = _build(data_bin, arch, args.hidden, args.k, dev)
    batches = []
    it = runs["lstm"][3]
    for _ in range(args.batches):
        batches.append(utils.apply_to_sample(lambda t: t.to(dev), next(it)))
    phases = ("forward", "backward", "optimizer")
    times = {a: {p: [] for p in phases} for a in runs}

    def step(arch, sample):
        model, crit, opt, _ = runs[arch]
        model.train()
        opt.zero_grad()
        _sync(dev)
        t0 = time.perf_counter()
        loss, sample_size, _ = crit(model, sample)
        _sync(dev)
        t1 = time.perf_counter()
        loss.backward()
        _sync(dev)
        t2 = time.perf_counter()
        opt.multiply_grads(1.0 / sample_size)
        opt.clip_grad_norm(1.0)
        opt.step()
        _sync(dev)
        t3 = time.perf_counter()
        return t1 - t0, t2 - t1, t3 - t2

    for arch in runs:  # warm-up
        step(arch, batches[0])
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{args.threads} threads"
    print(f"# lstm vs lstm_meprop (k={args.k}), hidden {args.hidden}, embed 128, 1+1 layers, "
          f"attention, max-tokens 4000, {where}, {args.reps} reps x "
          f"{args.batches} batches interleaved, load {_load():.1f}")
    for _ in range(args.reps):
        for sample in batches:
            for arch in runs:
                for p, t in zip(phases, step(arch, sample)):
                    times[arch][p].append(t)
    print("| model | forward ms | backward ms | optimizer ms | full step ms |")
    print("|---|---|---|---|---|")
    med = {}
    for arch in runs:
        m = {p: statistics.median(times[arch][p]) * 1e3 for p in phases}
        tot = statistics.median([sum(ts) for ts in zip(*(times[arch][p] for p in phases))]) * 1e3
        med[arch] = (m, tot)
        print(f"| {arch} | {m['forward']:.0f} | {m['backward']:.0f} | {m['optimizer']:.0f} | "
              f"{tot:.0f} |")
    (md, td), (mm, tm) = med["lstm"], med["lstm_meprop"]
    print(f"# full-step speedup {td / tm:.2f}x; backward speedup "
          f"{md['backward'] / mm['backward']:.2f}x; load after {_load():.1f}")


def bench_lstm_bleu(args):
    from fairseq_efficiency.cli.userdir import userdir
    from tests.helpers import run_cli
    data_bin = _demo_data(args.workdir)
    print(f"# fairseq-train {args.epochs} epochs, hidden {args.hidden}, then fairseq-generate "
          f"(beam 4) on test; load {_load():.1f}")
    print("| model | train s | s/update | valid loss | BLEU |")
    print("|---|---|---|---|---|")
    import re
    for arch in ("lstm", "lstm_meprop"):
        save = os.path.join(args.workdir, f"ck_{arch}_{args.hidden}")
        t0 = time.time()
        res = run_cli("fairseq_cli.train", [
            data_bin, "--user-dir", userdir(), "--cpu", "--seed", "1", "--num-workers", "0",
            "--task", "translation_efficiency", "--save-dir", save, "--no-epoch-checkpoints",
            "--max-epoch", str(args.epochs), "--log-format", "simple", "--no-progress-bar",
            *_model_args(arch, args.hidden, args.k), *OPTIM])
        wall = time.time() - t0
        log = res.stdout + res.stderr
        nupd = int(re.findall(r"num_updates (\d+)", log)[-1])
        vloss = float(re.findall(r"valid on 'valid' subset \| loss ([\d.]+)", log)[-1])
        gen = run_cli("fairseq_cli.generate", [
            data_bin, "--user-dir", userdir(), "--cpu", "--path",
            os.path.join(save, "checkpoint_last.pt"), "--task", "translation_efficiency",
            "--beam", "4", "--max-tokens", "8000", "--gen-subset", "test"])
        bleu = float(re.findall(r"BLEU4 = ([\d.]+)", gen.stdout + gen.stderr)[-1])
        print(f"| {arch} | {wall:.0f} | {wall / nupd:.2f} | {vloss:.3f} | {bleu:.2f} |", flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("linear")
    a.add_argument("--batch", type=int, default=1024)
    a.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096, 8192])
    a.add_argument("--ks", type=int, nargs="+", default=[32, 128, 512])
    a.add_argument("--reps", type=int, default=5)
    a.add_argument("--threads", type=int, default=2)
    a.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    a.set_defaults(fn=bench_linear)
    a = sub.add_parser("digits")
    a.add_argument("--hidden", type=int, default=500)
    a.add_argument("--k", type=int, default=25, help="~5%% of the hidden size")
    a.add_argument("--simp-k", type=int, default=160, help="meSimp's k (paper, MNIST: k=160, p=0.1)")
    a.add_argument("--prune-rates", type=float, nargs="+", default=[0.1, 0.2],
                   help="meSimp prune rates p (paper, MNIST: 0.1)")
    a.add_argument("--interval", type=int, default=40, help="updates between prunings")
    a.add_argument("--epochs", type=int, default=40)
    a.add_argument("--stages", type=int, default=2)
    a.add_argument("--batch", type=int, default=32)
    a.add_argument("--lr", type=float, default=1e-3)
    a.add_argument("--seeds", type=int, default=3)
    a.set_defaults(fn=bench_digits)
    for name, fn in (("lstm", bench_lstm), ("lstm-bleu", bench_lstm_bleu)):
        a = sub.add_parser(name)
        a.add_argument("--hidden", type=int, default=1024)
        a.add_argument("--k", type=float, default=0.0625)
        a.add_argument("--workdir", default="/tmp/meprop_bench")
        a.add_argument("--threads", type=int, default=2)
        a.add_argument("--batches", type=int, default=3)
        a.add_argument("--reps", type=int, default=3)
        a.add_argument("--epochs", type=int, default=2)
        if name == "lstm":
            a.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
        a.set_defaults(fn=fn)
    args = p.parse_args(argv)
    args.fn(args)


if __name__ == "__main__":
    main()
