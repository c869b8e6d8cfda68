"""Run a function on N local CPU ranks (gloo) and collect what each returns.

Used by the equivalence tests and ``benchmarks/hybrid.py``; fairseq runs use
``fairseq-efficiency-launch`` instead.  With the default ``spawn``
start method ``fn`` must be importable by module path. On Linux the ranks get
SIGTERM when the calling process dies (``prctl(PR_SET_PDEATHSIG)``), so a killed
caller leaves no rank behind.
"""
import io
import os
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fairseq_efficiency.parallel.procs import free_port, parent_death_signal


def _worker(rank, world, port, threads, fn, args, queue, parent_pid):
    if parent_pid is not None:  # the caller forked/spawned this process itself
        parent_death_signal(parent_pid)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}",
                                rank=rank, world_size=world)
        try:
            buf = io.BytesIO()  # plain bytes: tensors must outlive this process
            torch.save(fn(rank, world, *args), buf)
            queue.put((rank, buf.getvalue(), None))
        finally:
            dist.destroy_process_group()
    except BaseException:  # report instead of hanging the parent
        queue.put((rank, None, traceback.format_exc()))


def run_ranks(fn, world_size: int, *args, threads: int = 1, timeout: float = 300.0,
              start_method: str = "spawn"):
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` gloo ranks; return results by rank.

    ``start_method="fork"`` skips re-importing torch/fairseq in every rank (fast
    tests); use it only from a process that has not started threads of its own.
    """
    ctx = mp.get_context(start_method)
    queue = ctx.Queue()
    port = free_port()
    parent = os.getpid() if start_method in ("spawn", "fork") else None
    procs = [ctx.Process(target=_worker,
                         args=(r, world_size, port, threads, fn, args, queue, parent))
             for r in range(world_size)]
    for p in procs:
        p.start()
    import queue as _queue
    import time

    results, errors = {}, []
    deadline = time.time() + timeout
    try:
        while len(results) < world_size and not errors:
            try:
                rank, res, err = queue.get(timeout=0.5)
            except _queue.Empty:
                dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
                if dead or time.time() > deadline:
                    errors.append(f"a rank exited with {dead} or timed out" if dead
                                  else f"timed out after {timeout} s")
                continue
            if err:
                errors.append(f"rank {rank}:\n{err}")
                break
            results[rank] = torch.load(io.BytesIO(res), weights_only=False)
    finally:
        for p in procs:
            p.join(timeout=5 if errors else timeout)
            if p.is_alive():
                p.terminate()
                p.join()
    if errors:
        raise RuntimeError("\n".join(errors))
    return [results[r] for r in range(world_size)]
