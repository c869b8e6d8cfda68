"""Asynchronous batch generation and Assistant learning (AutoAssist, section 4.2, eq. 6).

A background thread owns two bounded queues:

* ``BossQueue`` -- ready, collated Boss batches (indices + sample);
* ``AssistantQueue`` -- ``(ids, per-sentence losses)`` of batches the Boss trained on.

Whenever the BossQueue (counting batches restored from a checkpoint and not yet
served) runs low the worker takes candidates from its stream -- whole base batches
of fairseq's length buckets over its shard, a fresh random permutation per pass
(:class:`~fairseq_efficiency.assist.bucketing.LengthBucketStream`) -- keeps each with
the policy's keep probability (Algorithm 1) and hands the kept ones to the batcher
(:class:`~fairseq_efficiency.assist.bucketing.BucketBatcher`), which emits the
batches that are ready. Otherwise it learns from the AssistantQueue.

A refill is bounded: it examines at most one pass of the shard, one chunk at a
time, releasing the lock between chunks. If no batch is ready then, everything kept
is batched as it is (under-full batches included); if the whole pass kept nothing
(keep probabilities ~0, possible with ``--assist-min-keep 0``), its ``chunk`` most
probable candidates are kept, with a warning, so training always progresses (never
those a curriculum forbids: ``Selector.zero_is_final``).

The training loop only does ``get`` (a ready batch, with a timeout) and
``put_nowait`` (losses; dropped and counted when the queue is full), so it never
waits for the Assistant to learn. A worker exception is re-raised in the
training loop.
"""
import collections
import logging
import queue
import threading
import time
import traceback

import numpy as np

logger = logging.getLogger(__name__)


class AssistWorkerError(RuntimeError):
    pass


class AssistWorker:
    """Produces Boss batches and trains the selection policy off the training loop's path."""

    def __init__(self, selector, stream, batcher, collate, ntokens, rng, queue_size=16,
                 chunk=256, name="autoassist", batch_timeout=600.0):
        self.selector, self.stream, self.batcher = selector, stream, batcher
        self.collate = collate          # indices -> fairseq sample
        self.ntokens = ntokens          # src + tgt tokens per instance (accounting)
        self.rng = rng
        self.chunk = chunk
        # produced only while it holds <= queue_size // 2 batches, so it stays bounded
        # (<= queue_size // 2 + one pool's worth) without a blocking put under the lock
        self.queue_size = queue_size
        self.boss_q = queue.Queue()
        self.assist_q = queue.Queue(maxsize=queue_size * 4)
        self.resumed = collections.deque()      # restored batches, served first
        self.resumed_losses = collections.deque()
        self.lock = threading.RLock()
        self.wake = threading.Event()
        self.stop_event = threading.Event()
        self.error = None
        self.thread = None
        self.name = name
        self.batch_timeout = float(batch_timeout)  # seconds next_batch waits for the worker
        self.counters = dict(candidate_sentences=0, candidate_tokens=0, kept_tokens=0,
                             learned_batches=0, dropped_loss_batches=0, forced_refills=0)
        self.wait_s = 0.0               # time the training loop waited for a batch
        self.recent_keep_rate = 1.0     # EMA over candidate chunks (token-weighted per chunk)
        self._reset_refill()

    # -- worker side ------------------------------------------------------------------
    def _reset_refill(self):
        """Candidates examined since the last emitted batch, and the most probable of them."""
        self.examined = 0
        self.best_ids = np.zeros(0, dtype=np.int64)
        self.best_p = np.zeros(0, dtype=np.float64)

    def pending(self):
        """Batches ready for the Boss: restored ones not yet served plus the queue."""
        return len(self.resumed) + self.boss_q.qsize()

    def _refill_step(self):
        """One chunk of candidates through the policy (Algorithm 1) into the pool: the
        batches the pool yields, or ``[]`` while it is filling (at most one pass of the
        shard per refill, see the module docstring)."""
        cand = self.stream.take(self.chunk)
        self.selector.start_pass(self.stream.passes)
        p = np.asarray(self.selector.keep_prob(cand), dtype=np.float64)
        kept = cand[self.rng.random(len(cand)) < p]
        cand_tok, kept_tok = int(self.ntokens[cand].sum()), int(self.ntokens[kept].sum())
        c = self.counters
        c["candidate_sentences"] += len(cand)
        c["candidate_tokens"] += cand_tok
        c["kept_tokens"] += kept_tok
        if cand_tok > 0:
            self.recent_keep_rate = 0.9 * self.recent_keep_rate + 0.1 * (kept_tok / cand_tok)
        self.batcher.add(kept)
        batches = self.batcher.pop_batches(self.rng)
        if not batches:
            self.examined += len(cand)
            ids, pr = np.concatenate([self.best_ids, cand]), np.concatenate([self.best_p, p])
            top = np.argsort(-pr, kind="stable")[:self.chunk]
            self.best_ids, self.best_p = ids[top], pr[top]
            if self.examined >= len(self.stream.shard):
                allowed = self.best_ids
                if self.selector.zero_is_final:  # never what the policy forbids
                    allowed = allowed[self.best_p > 0]
                if not len(self.batcher.pool) and len(allowed):
                    self._force_keep(allowed)
                batches = self.batcher.flush(self.rng)
                if not batches:  # nothing allowed yet (e.g. a curriculum): another pass
                    self._reset_refill()
        if batches:
            self._reset_refill()
        return batches

    def _force_keep(self, ids):
        """A full pass kept nothing: keep its most probable candidates so training progresses."""
        ids = np.unique(ids)  # a refill may straddle two permutations of the shard
        if not self.counters["forced_refills"]:
            logger.warning("%s: a pass over the %d-pair shard kept no candidate (keep "
                           "probabilities ~0); its %d most probable candidates are kept so that "
                           "training progresses (--assist-min-keep > 0 prevents this)", self.name,
                           len(self.stream.shard), len(ids))
        self.counters["forced_refills"] += 1
        self.counters["kept_tokens"] += int(self.ntokens[ids].sum())
        self.batcher.add(ids)

    def _learn_one(self):
        try:
            ids, losses = self.resumed_losses.popleft()
        except IndexError:
            try:
                ids, losses = self.assist_q.get_nowait()
            except queue.Empty:
                return False
        self.selector.observe(ids, losses)
        self.counters["learned_batches"] += 1
        return True

    def _run(self):
        try:
            while not self.stop_event.is_set():
                did = False
                if self.pending() <= self.queue_size // 2:
                    with self.lock:  # one chunk per hold: snapshots and epoch plans interleave
                        for b in self._refill_step():
                            self.boss_q.put((b, self.collate(b)))
                    did = True
                else:
                    with self.lock:
                        did = self._learn_one()
                if not did:
                    self.wake.wait(0.05)
                    self.wake.clear()
        except BaseException as e:  # surfaced in the training loop
            self.error = (e, traceback.format_exc())
            logger.error("%s worker failed:\n%s", self.name, self.error[1])

    # -- training-loop side -----------------------------------------------------------------
    def start(self):
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name=f"{self.name}-worker", daemon=True)
            self.thread.start()

    def check(self):
        if self.error is not None:
            e, tb = self.error
            raise AssistWorkerError(f"{self.name} worker failed, training stopped: "
                                    f"{type(e).__name__}: {e}\n{tb}") from e

    def next_batch(self):
        """The next Boss batch (indices, sample); raises if the worker failed, stopped or
        produced nothing for ``batch_timeout`` seconds."""
        self.check()
        self.start()
        if self.resumed:
            item = self.resumed.popleft()
            self.wake.set()
            return item
        t0 = time.perf_counter()
        while True:
            try:
                item = self.boss_q.get(timeout=0.1)
                break
            except queue.Empty:
                self.check()
                if not self.thread.is_alive():
                    raise AssistWorkerError(f"{self.name} worker stopped unexpectedly")
                if time.perf_counter() - t0 > self.batch_timeout:
                    c = self.counters
                    raise AssistWorkerError(
                        f"{self.name} worker produced no batch in {self.batch_timeout:g} s "
                        f"({c['candidate_sentences']} candidates examined, {c['kept_tokens']} "
                        f"tokens kept so far); training stopped") from None
        self.wait_s += time.perf_counter() - t0
        self.wake.set()
        return item

    def put_losses(self, ids, losses):
        self.check()
        try:
            self.assist_q.put_nowait((ids, losses))
            self.wake.set()
        except queue.Full:
            self.counters["dropped_loss_batches"] += 1

    def snapshot(self):
        """Consistent state: policy, stream, pool, pending batches and losses."""
        with self.lock:
            with self.boss_q.mutex:
                pending = [b for b, _ in self.resumed] + [b for b, _ in list(self.boss_q.queue)]
            with self.assist_q.mutex:
                losses = list(self.resumed_losses) + list(self.assist_q.queue)
            return {
                "selector": self.selector.state_dict(),
                "stream": self.stream.state_dict(),
                # lists, not arrays: torch's weights-only unpickler refuses empty numpy arrays
                "pool": np.asarray(self.batcher.pool, dtype=np.int64).tolist(),
                "rng": self.rng.bit_generator.state,
                "pending": [np.asarray(b) for b in pending],
                "losses": [(np.asarray(i), np.asarray(l)) for i, l in losses],
                "counters": dict(self.counters),
                "recent_keep_rate": self.recent_keep_rate,
                "refill": {"examined": self.examined, "best_ids": self.best_ids.tolist(),
                           "best_p": self.best_p.tolist()},
            }

    def restore(self, st):
        """Load a snapshot (before the thread starts, or with it paused by the lock)."""
        with self.lock:
            self.selector.load_state_dict(st["selector"])
            self.batcher.pool = np.asarray(st["pool"], dtype=np.int64)
            self.rng.bit_generator.state = st["rng"]
            self.stream.load_state_dict(st["stream"])  # after: the stream may share the RNG
            with self.boss_q.mutex:
                self.boss_q.queue.clear()
            with self.assist_q.mutex:
                self.assist_q.queue.clear()
            self.resumed = collections.deque((b, self.collate(b)) for b in st["pending"])
            self.resumed_losses = collections.deque(st["losses"])
            self.counters.update(st["counters"])
            self.recent_keep_rate = st["recent_keep_rate"]
            self._reset_refill()
            if "refill" in st:  # (not in states of earlier versions)
                r = st["refill"]
                self.examined = int(r["examined"])
                self.best_ids = np.asarray(r["best_ids"], dtype=np.int64)
                self.best_p = np.asarray(r["best_p"], dtype=np.float64)

    def close(self):
        self.stop_event.set()
        self.wake.set()
        if self.thread is not None:
            self.thread.join(timeout=5)
