"""Embedded corpus at benchmark sizes: generation and binarization time, peak memory.

    .venv/bin/python benchmarks/corpus.py --pairs 100000 1000000
"""
import argparse
import os
import resource
import shutil
import tempfile
import time

from fairseq_efficiency.data.prepare import binarize
from fairseq_efficiency.data.synthetic import CorpusConfig, write_corpus


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, nargs="+", default=[100000])
    parser.add_argument("--workers", type=int, default=2, help="fairseq-preprocess workers")
    parser.add_argument("--keep", default=None, help="keep the last data-bin in this directory")
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    print("| pairs | generate s | pairs/s | binarize s | peak RSS MB |")
    print("|---|---|---|---|---|")
    for n in args.pairs:
        tmp = tempfile.mkdtemp()
        try:
            t0 = time.time()
            write_corpus(CorpusConfig(train_size=n, valid_size=1000, test_size=1000), tmp)
            gen = time.time() - t0
            t0 = time.time()
            binarize(tmp, os.path.join(tmp, "bin"), workers=args.workers)
            bina = time.time() - t0
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"| {n} | {gen:.1f} | {n / gen:.0f} | {bina:.1f} | {rss:.0f} |", flush=True)
            if args.keep and n == args.pairs[-1]:
                shutil.copytree(os.path.join(tmp, "bin"), args.keep, dirs_exist_ok=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
