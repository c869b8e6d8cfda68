"""The asynchronous worker over the bucketed candidate stream and batcher (assist/worker.py)."""
import io
import logging
import threading
import time

import numpy as np
import pytest

from fairseq_efficiency.assist.bucketing import BucketBatcher, LengthBucketStream
from fairseq_efficiency.assist.selection import Selector
from fairseq_efficiency.assist.worker import AssistWorker, AssistWorkerError
from tests.helpers import wait_for


class Keep(Selector):
    """Keeps even ids with probability 1, odd ids with ``p_odd``; records observations."""

    def __init__(self, p_odd=0.0, fail_on_observe=False):
        self.p_odd, self.fail, self.seen = p_odd, fail_on_observe, []

    def keep_prob(self, idx):
        return np.where(idx % 2 == 0, 1.0, self.p_odd)

    def observe(self, ids, losses):
        if self.fail:
            raise FloatingPointError("assistant diverged")
        self.seen.append(np.asarray(ids))

    def state_dict(self):
        return {"n_seen": len(self.seen)}

    def load_state_dict(self, st):
        self.seen = [None] * st["n_seen"]


def data(n=2000):
    rng = np.random.default_rng(1234)
    src = rng.integers(3, 30, n)
    tgt = rng.integers(3, 30, n)
    return src, tgt, np.maximum(src, tgt)


def make_worker(n=2000, max_tokens=200, max_sentences=None, selector=None, seed=0, queue_size=8,
                group_batches=4):
    """The worker as the hook builds it; ``seed`` seeds the stream's and the worker's RNGs."""
    src, tgt, num_tokens = data(n)
    stream = LengthBucketStream(np.arange(n), n, src, tgt, num_tokens, max_tokens, max_sentences,
                                np.random.default_rng(seed), group_batches=group_batches)
    w = AssistWorker(selector or Keep(), stream, BucketBatcher(stream),
                     collate=lambda b: {"id": b}, ntokens=src + tgt,
                     rng=np.random.default_rng(seed + 1), queue_size=queue_size, chunk=64)
    return w, num_tokens


@pytest.mark.parametrize("max_tokens,max_sentences", [(200, None), (None, 16), (300, 12)])
def test_refilled_batches_respect_limits_and_are_full(max_tokens, max_sentences):
    w, num_tokens = make_worker(max_tokens=max_tokens, max_sentences=max_sentences)
    try:
        sizes = []
        for _ in range(60):
            b, sample = w.next_batch()
            assert sample["id"] is b
            assert np.all(b % 2 == 0)  # only kept candidates reach the Boss
            padded = len(b) * num_tokens[b].max()
            if max_tokens:
                assert padded <= max_tokens
            if max_sentences:
                assert len(b) <= max_sentences
            sizes.append(padded if max_tokens else len(b))
        limit = max_tokens or max_sentences
        # refilled: not the shrunken, half-empty batches of filtering a fixed batch
        assert np.mean(sizes) > 0.8 * limit
    finally:
        w.close()


def test_candidates_cover_the_shard_once_per_pass():
    src, tgt, num_tokens = data(300)
    shard = np.arange(100, 300)
    stream = LengthBucketStream(shard, 300, src, tgt, num_tokens, 200, None,
                                np.random.default_rng(0))
    first = stream.take(10 ** 6)                 # up to the end of the pass
    assert sorted(first) == list(shard) and stream.passes == 0
    second = stream.take(10 ** 6)
    assert sorted(second) == list(shard) and stream.passes == 1
    assert not np.array_equal(first, second)     # a fresh random visit order
    some = stream.take(1)                        # whole base batches
    assert len(some) >= 1 and any(np.array_equal(np.sort(some), np.sort(b))
                                  for b in stream.batches)
    with pytest.raises(ValueError, match="empty"):
        LengthBucketStream(np.array([], dtype=np.int64), 300, src, tgt, num_tokens, 200, None,
                           np.random.default_rng(0))


def test_losses_reach_the_assistant_without_blocking():
    sel = Keep()
    w, _ = make_worker(selector=sel, queue_size=4)
    try:
        t0 = time.perf_counter()
        for _ in range(200):  # far more than the queue holds: never blocks, drops are counted
            w.put_losses(np.arange(4), np.ones(4))
        assert time.perf_counter() - t0 < 1.0
        for _ in range(20):
            w.next_batch()
        deadline = time.time() + 5
        while not sel.seen and time.time() < deadline:
            time.sleep(0.01)
        assert sel.seen
        c = w.counters
        assert c["dropped_loss_batches"] + c["learned_batches"] + w.assist_q.qsize() <= 200
        assert c["dropped_loss_batches"] > 0
    finally:
        w.close()


def test_worker_exception_stops_training_with_clear_error():
    w, _ = make_worker(selector=Keep(fail_on_observe=True))
    try:
        w.next_batch()
        w.put_losses(np.arange(3), np.ones(3))
        with pytest.raises(AssistWorkerError, match="assistant diverged"):
            for _ in range(1000):
                w.next_batch()
                w.put_losses(np.arange(3), np.ones(3))
                time.sleep(0.001)
    finally:
        w.close()


def test_snapshot_restore_continues_identically():
    w, _ = make_worker(selector=Keep(p_odd=0.5), seed=4)
    try:
        for _ in range(5):
            w.next_batch()
        assert wait_for(lambda: w.pending() > 0, 5)
        st = w.snapshot()
        pending = [b for b in st["pending"]]
        assert pending, "the worker prefetches batches"
    finally:
        w.close()
    # a fresh worker restored from the snapshot first serves the pending batches ...
    w2, _ = make_worker(selector=Keep(p_odd=0.5), seed=99)
    w3, _ = make_worker(selector=Keep(p_odd=0.5), seed=123)
    try:
        w2.restore(st)
        w3.restore(st)
        for b in pending:
            np.testing.assert_array_equal(w2.next_batch()[0], b)
            np.testing.assert_array_equal(w3.next_batch()[0], b)
        # ... then generates the same candidate decisions (same stream, pool, RNG)
        for _ in range(5):
            np.testing.assert_array_equal(w2.next_batch()[0], w3.next_batch()[0])
        assert w2.counters["candidate_sentences"] >= st["counters"]["candidate_sentences"]
    finally:
        w2.close()
        w3.close()


def test_restored_pending_batches_count_toward_the_queue():
    """A resumed worker does not refill while the restored batches keep its queue over half
    full, so it continues with the policy and accounting of the run it resumes."""
    w, _ = make_worker(selector=Keep(p_odd=0.5), seed=4, queue_size=8)
    try:
        w.next_batch()
        deadline = time.time() + 5
        while w.boss_q.qsize() <= w.queue_size // 2 and time.time() < deadline:
            time.sleep(0.01)
        st = w.snapshot()
    finally:
        w.close()
    half = w.queue_size // 2
    assert len(st["pending"]) > half
    w2, _ = make_worker(selector=Keep(p_odd=0.5), seed=99, queue_size=8)
    try:
        w2.restore(st)
        w2.start()
        time.sleep(0.3)  # the worker runs, but has nothing to refill
        assert w2.counters == st["counters"]
        served = [w2.next_batch()[0] for _ in range(len(st["pending"]) - half)]
        for b, ref in zip(served, st["pending"]):
            np.testing.assert_array_equal(b, ref)
        deadline = time.time() + 5  # at half full it refills again
        while w2.counters["candidate_sentences"] == st["counters"]["candidate_sentences"]:
            assert time.time() < deadline, "the resumed worker never refilled its queue"
            time.sleep(0.01)
    finally:
        w2.close()


class KeepNothing(Selector):
    def keep_prob(self, idx):
        return np.zeros(len(idx))


def _in_thread(fn, timeout):
    """Run ``fn`` in a daemon thread: ``(finished, result or exception)``."""
    out = {}

    def target():
        try:
            out["result"] = fn()
        except BaseException as e:  # reported to the test
            out["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    return not t.is_alive(), out


def test_refill_is_bounded_when_nothing_is_kept(caplog):
    """Keep probability 0 everywhere (--assist-min-keep 0): a refill examines at most one
    pass, then keeps the pass's most probable candidates, so training still progresses and
    snapshots are not blocked."""
    w, num_tokens = make_worker(selector=KeepNothing(), max_tokens=200)
    try:
        with caplog.at_level(logging.WARNING):
            done, out = _in_thread(lambda: [w.next_batch()[0] for _ in range(5)], timeout=20)
            assert done, "next_batch hangs when no candidate is kept"
            batches = out["result"]
            assert all(len(b) and len(b) * num_tokens[b].max() <= 200 for b in batches)
            done, snap = _in_thread(w.snapshot, timeout=5)
            assert done and "result" in snap
        assert w.counters["forced_refills"] >= 1
        assert w.counters["kept_tokens"] > 0
        assert "kept no candidate" in caplog.text and "--assist-min-keep" in caplog.text
    finally:
        w.close()


def test_refill_batches_what_one_pass_kept_when_no_batch_is_ready():
    """A group that one pass cannot close (here: one group over the whole shard, so its last
    batch waits for the pass to end) is batched as it is after a pass, under-full batches
    included, instead of drawing candidates forever."""
    w, num_tokens = make_worker(selector=Keep(p_odd=0.0), max_tokens=200, group_batches=10 ** 6)
    try:
        done, out = _in_thread(lambda: [w.next_batch()[0] for _ in range(3)], timeout=20)
        assert done, "next_batch hangs while the group cannot close"
        assert all(np.all(b % 2 == 0) and len(b) * num_tokens[b].max() <= 200
                   for b in out["result"])
        assert w.counters["forced_refills"] == 0
    finally:
        w.close()


def test_next_batch_times_out_with_one_line_error_when_the_worker_is_stuck():
    release = threading.Event()

    class Stuck(Selector):
        def keep_prob(self, idx):
            release.wait(30)
            return np.ones(len(idx))

    w, _ = make_worker(selector=Stuck())
    w.batch_timeout = 0.5
    try:
        done, out = _in_thread(w.next_batch, timeout=10)
        assert done, "next_batch waits forever for a stuck worker"
        err = out.get("error")
        assert isinstance(err, AssistWorkerError)
        assert "produced no batch in 0.5 s" in str(err)
        assert "\n" not in str(err)
    finally:
        release.set()
        w.close()


def test_snapshot_with_an_empty_pool_loads_under_weights_only():
    """A checkpointed worker state must pass torch's weights-only unpickler even when the
    pool is empty (numpy pickles an empty array through ``bytes``, which it refuses)."""
    import torch

    import fairseq_efficiency  # noqa: F401  (allow-lists numpy arrays for checkpoints)

    w, _ = make_worker()
    try:
        w.next_batch()
        with w.lock:
            w.batcher.pool = np.zeros(0, dtype=np.int64)
            st = w.snapshot()
        buf = io.BytesIO()
        torch.save(st, buf)
        buf.seek(0)
        loaded = torch.load(buf, weights_only=True)
        w2, _ = make_worker()
        w2.restore(loaded)
        assert len(w2.batcher.pool) == 0 and len(w2.resumed) == len(st["pending"])
        w2.close()
    finally:
        w.close()


def test_batches_per_pass_is_fairseqs_batch_count_and_leaves_the_pool_alone():
    from fairseq.data import data_utils

    w, num_tokens = make_worker(n=3000, max_tokens=200)
    src, tgt, _ = data(3000)
    try:
        w.batcher.pool = np.array([7, 8])
        idx = np.lexsort((tgt, src))             # fairseq's order: by source, then target length
        expected = len(data_utils.batch_by_size(
            idx, num_tokens_fn=lambda i: int(num_tokens[i]), num_tokens_vec=num_tokens[idx],
            max_tokens=200))
        assert w.batcher.batches_per_pass() == expected
        assert list(w.batcher.pool) == [7, 8]    # the live pool is left as it was
    finally:
        w.close()
