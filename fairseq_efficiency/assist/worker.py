"""Asynchronous batch generation and Assistant learning (AutoAssist, section 4.2, eq. 6).

A background thread owns two bounded queues:

* ``BossQueue`` -- ready, collated Boss batches (indices + sample);
* ``AssistantQueue`` -- ``(ids, per-sentence losses)`` of batches the Boss trained on.

Whenever the BossQueue (counting batches restored from a checkpoint and not yet
served) runs low the worker draws candidates uniformly from its shard (a fresh
random permutation per pass), keeps each with the policy's keep probability
(Algorithm 1), and *refills*: kept candidates gather in a pool of a few batches'
worth, which is sorted by length and cut with fairseq's
``data_utils.batch_by_size`` under the run's ``--max-tokens``/``--batch-size``;
every batch but the pool's last (possibly under-full) one is emitted, the rest
waits for more candidates. Otherwise it learns from the AssistantQueue.

A refill is bounded: it examines at most one pass of the shard, one chunk at a
time, releasing the lock between chunks. If the pool is still not full then, it
is cut as it is (under-full batches included); if the whole pass kept nothing
(keep probabilities ~0, possible with ``--assist-min-keep 0``), its ``chunk``
most probable candidates are kept, with a warning, so training always progresses.

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


class CandidateStream:
    """Uniform candidates: successive random permutations of the shard (Algorithm 1, line 5)."""

    def __init__(self, shard, rng):
        self.shard = np.asarray(shard, dtype=np.int64)
        if len(self.shard) == 0:
            raise ValueError("empty data shard")
        self.rng = rng
        self.perm = self.shard[rng.permutation(len(self.shard))]
        self.pos = 0
        self.passes = 0  # completed passes over the shard

    def take(self, k):
        out = []
        while k > 0:
            if self.pos >= len(self.perm):
                self.perm = self.shard[self.rng.permutation(len(self.shard))]
                self.pos = 0
                self.passes += 1
            chunk = self.perm[self.pos:self.pos + k]
            self.pos += len(chunk)
            k -= len(chunk)
            out.append(chunk)
        return np.concatenate(out)

    def state_dict(self):
        return {"perm": self.perm.copy(), "pos": self.pos, "passes": self.passes,
                "rng": self.rng.bit_generator.state}

    def load_state_dict(self, st):
        self.perm, self.pos, self.passes = np.asarray(st["perm"], np.int64), st["pos"], st["passes"]
        self.rng.bit_generator.state = st["rng"]


class RefillBatcher:
    """Pool of kept candidates cut into full batches with fairseq's ``batch_by_size``."""

    def __init__(self, sizes_src, sizes_tgt, num_tokens, max_tokens, max_sentences,
                 required_batch_size_multiple=1, pool_batches=8):
        self.src, self.tgt = sizes_src, sizes_tgt
        self.num_tokens = np.asarray(num_tokens, dtype=np.int64)
        self.max_tokens = max_tokens
        self.max_sentences = max_sentences
        self.mult = required_batch_size_multiple
        self.pool_batches = pool_batches
        self.pool = np.zeros(0, dtype=np.int64)
        if max_tokens is None and max_sentences is None:
            raise ValueError("set --max-tokens or --batch-size")

    def _ready(self):
        n = len(self.pool)
        if n == 0:
            return False
        if self.max_sentences is not None and n >= self.pool_batches * self.max_sentences:
            return True
        if self.max_tokens is not None:
            return self.num_tokens[self.pool].sum() >= self.pool_batches * self.max_tokens
        return False

    def add(self, idx):
        self.pool = np.concatenate([self.pool, idx])

    def _cut(self, pool):
        """``pool`` sorted by length and cut into batches by fairseq's ``batch_by_size``."""
        from fairseq.data import data_utils

        pool = pool[np.lexsort((self.src[pool], self.tgt[pool]))]
        return data_utils.batch_by_size(
            pool, num_tokens_fn=lambda i: int(self.num_tokens[i]),
            num_tokens_vec=self.num_tokens[pool], max_tokens=self.max_tokens,
            max_sentences=self.max_sentences, required_batch_size_multiple=self.mult,
        )

    def flush(self, rng):
        """The whole pool cut into batches (the last one possibly under-full), in random order."""
        if not len(self.pool):
            return []
        out = [np.asarray(b, dtype=np.int64) for b in self._cut(self.pool)]
        self.pool = np.zeros(0, dtype=np.int64)
        return [out[i] for i in rng.permutation(len(out))]

    def _pop_full(self):
        """Full batches from the pool, in length order, or ``[]`` while it is still filling."""
        if not self._ready():
            return []
        batches = self._cut(self.pool)
        if len(batches) < 2:
            return []
        keep = batches[-1]  # possibly under-full: refilled with the next candidates
        self.pool = np.asarray(keep, dtype=np.int64)
        return [np.asarray(b, dtype=np.int64) for b in batches[:-1]]

    def batches_per_pass(self, order, chunk=256):
        """Batches one pass over ``order`` (everything kept) fills when fed ``chunk``
        candidates at a time, as the worker does. A pool sorts only a few batches' worth
        of random candidates, so its batches hold fewer sentences than fairseq's (sorted
        over the whole dataset): this, not fairseq's batch count, is one pass."""
        saved, self.pool = self.pool, np.zeros(0, dtype=np.int64)
        try:
            n = 0
            for s in range(0, len(order), chunk):
                self.add(np.asarray(order[s:s + chunk], dtype=np.int64))
                n += len(self._pop_full())
            if len(self.pool):
                n += len(self._cut(self.pool))
            return n
        finally:
            self.pool = saved

    def pop_batches(self, rng):
        """Full batches from the pool in random order, or ``[]`` while it is still filling."""
        out = self._pop_full()
        if not out:
            return []
        return [out[i] for i in rng.permutation(len(out))]


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
