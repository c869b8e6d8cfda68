"""Candidate stream, refilled batching, the asynchronous worker and the feature cache."""
import io
import logging
import os
import shutil
import threading
import time

import numpy as np
import pytest
import scipy.sparse as sp

from fairseq_efficiency.assist import features as F
from fairseq_efficiency.assist.selection import Selector
from fairseq_efficiency.assist.worker import (AssistWorker, AssistWorkerError, CandidateStream,
                                              RefillBatcher)


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


def make_worker(n=2000, max_tokens=200, max_sentences=None, selector=None, seed=0, queue_size=8):
    rng = np.random.default_rng(1234)  # the data; ``seed`` only seeds the worker's RNGs
    src = rng.integers(3, 30, n)
    tgt = rng.integers(3, 30, n)
    num_tokens = np.maximum(src, tgt)
    batcher = RefillBatcher(src, tgt, num_tokens, max_tokens, max_sentences, pool_batches=4)
    w = AssistWorker(selector or Keep(), CandidateStream(np.arange(n), np.random.default_rng(seed)),
                     batcher, collate=lambda b: {"id": b}, ntokens=src + tgt,
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


def test_candidates_cover_the_shard_uniformly():
    stream = CandidateStream(np.arange(10, 20), np.random.default_rng(0))
    first = stream.take(10)
    assert sorted(first) == list(range(10, 20)) and stream.passes == 0
    two = stream.take(20)
    assert sorted(two[:10]) == sorted(two[10:]) == list(range(10, 20)) and stream.passes == 2
    with pytest.raises(ValueError, match="empty"):
        CandidateStream(np.array([], dtype=np.int64), np.random.default_rng(0))


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


def test_refill_cuts_an_unfilled_pool_after_one_pass():
    """A pool that one pass cannot fill (here: a pool far larger than the shard) is cut as it
    is after a pass, under-full batches included, instead of drawing candidates forever."""
    w, num_tokens = make_worker(selector=Keep(p_odd=0.0), max_tokens=200)
    w.batcher.pool_batches = 10 ** 6
    try:
        done, out = _in_thread(lambda: [w.next_batch()[0] for _ in range(3)], timeout=20)
        assert done, "next_batch hangs while the pool cannot fill"
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


def test_features_match_tfidf_and_are_rebuilt_when_data_changes(tiny_data_bin, tmp_path):
    from sklearn.feature_extraction.text import TfidfTransformer

    data = str(tmp_path / "bin")
    shutil.copytree(tiny_data_bin, data)
    for f in os.listdir(data):
        if ".assist-tfidf." in f:
            os.remove(os.path.join(data, f))
    sv, nspec = F._dict_size(data, "src")
    tv, _ = F._dict_size(data, "tgt")
    x, path = F.load_or_build(data, "train", "src", "tgt", sv, tv, nspec)
    assert os.path.isfile(path) and x.dtype == np.float32
    # reference: dense term counts of the same token ids through sklearn's transformer
    prefix = F.split_prefix(data, "train", "src", "tgt")
    s_tok, s_sizes = F.read_token_ids(prefix + "src")
    t_tok, t_sizes = F.read_token_ids(prefix + "tgt")
    counts = np.zeros((len(s_sizes), sv + tv))
    so, to = np.concatenate([[0], np.cumsum(s_sizes)]), np.concatenate([[0], np.cumsum(t_sizes)])
    for i in range(len(s_sizes)):
        for t in s_tok[so[i]:so[i + 1]]:
            if t >= nspec:
                counts[i, t] += 1
        for t in t_tok[to[i]:to[i + 1]]:
            if t >= nspec:
                counts[i, sv + t] += 1
    ref = TfidfTransformer().fit_transform(sp.csr_matrix(counts))
    np.testing.assert_allclose(x.toarray(), ref.toarray(), rtol=1e-5, atol=1e-6)
    # cached: the same file is reused
    mtime = os.path.getmtime(path)
    x2, path2 = F.load_or_build(data, "train", "src", "tgt", sv, tv, nspec)
    assert path2 == path and os.path.getmtime(path) == mtime
    # data changed (same size, one token id altered): new checksum, features rebuilt
    bin_path = prefix + "tgt.bin"
    raw = np.fromfile(bin_path, dtype=t_tok.dtype)
    raw[0] = nspec if raw[0] != nspec else nspec + 1
    raw.tofile(bin_path)
    x3, path3 = F.load_or_build(data, "train", "src", "tgt", sv, tv, nspec)
    assert path3 != path and not os.path.exists(path)
    assert (x3 != x).nnz > 0


def test_featurize_cli(tiny_data_bin, tmp_path, capsys):
    data = str(tmp_path / "bin")
    shutil.copytree(tiny_data_bin, data)
    assert F.main([data]) == 0
    out = capsys.readouterr().out
    assert "600 pairs" in out and ".assist-tfidf." in out
    with pytest.raises(SystemExit) as e:
        F.main([str(tmp_path / "missing")])
    assert e.value.code == 2


def test_batches_per_pass_counts_one_pass_through_the_pool():
    from fairseq.data import data_utils

    rng = np.random.default_rng(5)
    src, tgt = rng.integers(3, 30, 3000), rng.integers(3, 30, 3000)
    num_tokens = np.maximum(src, tgt).astype(np.int64)
    order = rng.permutation(3000)

    def fairseq_batches():
        idx = np.lexsort((src, tgt))
        return len(data_utils.batch_by_size(idx, num_tokens_fn=lambda i: int(num_tokens[i]),
                                            num_tokens_vec=num_tokens[idx], max_tokens=200))

    small = RefillBatcher(src, tgt, num_tokens, 200, None, pool_batches=2)
    small.add(np.array([7, 8]))
    n_small = small.batches_per_pass(order, chunk=64)
    assert list(small.pool) == [7, 8]  # the live pool is left as it was
    # feeding the pass by hand gives the same count
    manual = RefillBatcher(src, tgt, num_tokens, 200, None, pool_batches=2)
    fed = 0
    for s in range(0, 3000, 64):
        manual.add(order[s:s + 64])
        fed += len(manual.pop_batches(np.random.default_rng(0)))
    assert fed < n_small <= fed + 2
    # a pool as large as the data sorts it all at once, as fairseq does; a small one wastes more
    big = RefillBatcher(src, tgt, num_tokens, 200, None, pool_batches=10 ** 6)
    assert big.batches_per_pass(order) == fairseq_batches() < n_small
