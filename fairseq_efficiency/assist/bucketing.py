"""Candidates and batches in fairseq's own length buckets, so selection is the only change.

Each pass over the shard is batched exactly as fairseq's iterator batches an epoch:
a fresh random permutation sorted by source length, ties by target length
(``LanguagePairDataset.ordered_indices``), cut by ``data_utils.batch_by_size``
under the run's ``--max-tokens``/``--batch-size``. These *base batches* are the
candidates, visited in random order (fairseq shuffles its batches each epoch).

The selection policy drops instances inside a base batch. A base batch kept
whole is emitted as it is; otherwise its kept instances join those of its
group (``group_batches`` neighbouring base batches in length order), which are
cut by ``batch_by_size`` again in length order: every batch of that cut is
emitted except the last (possibly under-full) one -- together with the tail
shorter than ``--required-batch-size-multiple`` that fairseq's cut leaves out --
which waits for the group's next base batch; once the group is done it moves on
to the nearest group that still has unvisited base batches, and is emitted at
the end of the pass. With every instance kept the Boss therefore trains on
fairseq's batches of the pass, in random order
(``tests/assist/test_neutral_iterator.py``).

:class:`LengthBucketStream` and :class:`BucketBatcher` share one pass and fit
the :class:`~fairseq_efficiency.assist.worker.AssistWorker` interface of the
candidate stream and the batcher.
"""
import numpy as np


class _Cutter:
    def __init__(self, src, tgt, num_tokens, max_tokens, max_sentences, mult):
        if max_tokens is None and max_sentences is None:
            raise ValueError("set --max-tokens or --batch-size")
        self.src, self.tgt = np.asarray(src, np.int64), np.asarray(tgt, np.int64)
        self.num_tokens = np.asarray(num_tokens, dtype=np.int64)
        self.max_tokens, self.max_sentences, self.mult = max_tokens, max_sentences, mult

    def sort(self, idx):
        """fairseq's order: stable sort by target length, then by source length (the
        source length is the primary key)."""
        idx = idx[np.argsort(self.tgt[idx], kind="mergesort")]
        return idx[np.argsort(self.src[idx], kind="mergesort")]

    def _batch_by_size(self, ordered, mult):
        from fairseq.data import data_utils

        return [np.asarray(b, dtype=np.int64) for b in data_utils.batch_by_size(
            ordered, num_tokens_fn=lambda i: int(self.num_tokens[i]),
            num_tokens_vec=self.num_tokens[ordered], max_tokens=self.max_tokens,
            max_sentences=self.max_sentences, required_batch_size_multiple=mult)]

    def cut(self, ordered):
        """fairseq's ``batch_by_size`` of ``ordered``, every instance in some batch."""
        if len(ordered) == 0:
            return []
        batches, tail = self._cut_mult(ordered)
        return batches + ([tail] if len(tail) else [])

    def _cut_mult(self, ordered):
        """``batch_by_size`` with the batch size multiple, and the tail it leaves out
        (shorter than the multiple), cut in one batch (it fits: at most the last batch's
        sentences)."""
        batches = self._batch_by_size(ordered, self.mult)
        covered = sum(len(b) for b in batches)
        tail = ordered[covered:]
        if len(tail) > 1:
            more = self._batch_by_size(tail, 1)
            batches, tail = batches + more[:-1], more[-1]
        return batches, np.asarray(tail, dtype=np.int64)

    def cut_open(self, ordered):
        """``(batches, rest)``: the batches of :meth:`cut` that are complete, and the
        instances of its last batch and of the tail shorter than the batch size multiple,
        which may still grow."""
        if len(ordered) == 0:
            return [], np.zeros(0, dtype=np.int64)
        batches, tail = self._cut_mult(ordered)
        if not batches:
            return [], tail
        return batches[:-1], np.concatenate([batches[-1], tail])


class LengthBucketStream:
    """Candidates: fairseq's base batches of successive passes, in random order."""

    def __init__(self, shard, n, src, tgt, num_tokens, max_tokens, max_sentences, rng,
                 required_batch_size_multiple=1, group_batches=4):
        self.shard = np.asarray(shard, dtype=np.int64)
        if len(self.shard) == 0:
            raise ValueError("empty data shard")
        self.cutter = _Cutter(src, tgt, num_tokens, max_tokens, max_sentences,
                              required_batch_size_multiple)
        self.rng = rng
        self.group_batches = int(group_batches)
        self.rank = np.zeros(n, dtype=np.int64)   # position in the pass's length order
        self.group = np.zeros(n, dtype=np.int64)  # group of neighbouring base batches
        self.batch_of = np.zeros(n, dtype=np.int64)  # base batch in length order
        self.passes = 0    # completed passes over the shard
        self.pass_done = False
        self._start(self.cutter.sort(self.shard[rng.permutation(len(self.shard))]),
                    visit=None, pos=0)

    def _start(self, order, visit, pos):
        self.order = np.asarray(order, dtype=np.int64)
        self.batches = self.cutter.cut(self.order)
        nb = len(self.batches)
        groups = np.arange(nb) // self.group_batches
        if visit is None:  # fairseq's order: the batches shuffled
            visit = self.rng.permutation(nb)
        self.visit = np.asarray(visit, dtype=np.int64)
        self.pos = int(pos)
        self.rank[self.order] = np.arange(len(self.order))
        self.sizes = np.array([len(b) for b in self.batches], dtype=np.int64)
        flat = np.concatenate(self.batches) if nb else np.zeros(0, dtype=np.int64)
        self.batch_of[flat] = np.repeat(np.arange(nb), self.sizes)
        self.group[flat] = self.batch_of[flat] // self.group_batches
        self.group_left = np.bincount(groups, minlength=int(groups.max(initial=0)) + 1)
        np.subtract.at(self.group_left, groups[self.visit[:self.pos]], 1)

    def batches_per_pass(self):
        return len(self.batches)

    def take(self, k):
        """Whole base batches, at least ``k`` candidates or up to the end of the pass."""
        if self.pass_done:
            self.passes += 1
            self.pass_done = False
            self._start(self.cutter.sort(self.shard[self.rng.permutation(len(self.shard))]),
                        visit=None, pos=0)
        out, got = [], 0
        while got < k and self.pos < len(self.visit):
            j = self.visit[self.pos]
            self.pos += 1
            self.group_left[j // self.group_batches] -= 1
            out.append(self.batches[j])
            got += len(self.batches[j])
        self.pass_done = self.pos >= len(self.visit)
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)

    def state_dict(self):
        return {"order": self.order.copy(), "visit": self.visit.copy(), "pos": self.pos,
                "passes": self.passes, "pass_done": self.pass_done,
                "rng": self.rng.bit_generator.state}

    def load_state_dict(self, st):
        order = np.asarray(st["order"], dtype=np.int64)
        if len(order) != len(self.shard) or not np.array_equal(np.sort(order), np.sort(self.shard)):
            raise ValueError("selection state is for a different training data shard")
        nb = len(self.cutter.cut(order))
        visit, pos = np.asarray(st["visit"], dtype=np.int64), int(st["pos"])
        if not (np.array_equal(np.sort(visit), np.arange(nb)) and 0 <= pos <= nb):
            raise ValueError("selection state: the batch visit order does not match the data")
        self._start(order, visit, pos)
        self.passes, self.pass_done = int(st["passes"]), bool(st["pass_done"])
        self.rng.bit_generator.state = st["rng"]


class BucketBatcher:
    """Kept instances merged within their group of neighbouring base batches."""

    def __init__(self, stream: LengthBucketStream):
        self.stream = stream
        self._pool = np.zeros(0, dtype=np.int64)  # kept, not yet in an emitted batch
        self._whole = []  # base batches kept whole, until the next pop_batches
        self._pool_group = None  # group of each pooled instance (set by pop_batches)

    @property
    def pool(self):
        """Kept instances not yet batched; ``[]`` when there are none (an empty numpy
        array pickles through ``bytes``, which torch's weights-only loader refuses)."""
        return self._pool if len(self._pool) else []

    @pool.setter
    def pool(self, idx):
        self._pool = np.asarray(idx, dtype=np.int64)
        self._pool_group = None  # restored: each instance back in its own group

    def add(self, idx):
        """Kept instances of whole base batches: those kept whole are ready as they are."""
        s = self.stream
        idx = np.asarray(idx, dtype=np.int64)
        bid = s.batch_of[idx]
        whole = np.bincount(bid, minlength=len(s.sizes)) == s.sizes
        for j in np.unique(bid[whole[bid]]):
            self._whole.append(s.batches[j])
        new = idx[~whole[bid]]
        if self._pool_group is not None:
            self._pool_group = np.concatenate([self._pool_group, s.group[new]])
        self._pool = np.concatenate([self._pool, new])

    def batches_per_pass(self, order=None):
        """Batches of one pass with everything kept: fairseq's batches of the shard."""
        return self.stream.batches_per_pass()

    def pop_batches(self, rng):
        """Batches ready in the pool, in random order (``[]`` while groups still fill).

        A group's last, possibly under-full batch waits while the group has unvisited base
        batches; once the group is done it moves to the nearest group (in length order)
        that still has some, and is emitted when there is none."""
        s = self.stream
        out, self._whole = self._whole, []
        if len(self._pool):
            g = s.group[self._pool]
            if self._pool_group is not None and len(self._pool_group) == len(self._pool):
                g = self._pool_group
            order = np.lexsort((s.rank[self._pool], g))
            pool, g = self._pool[order], g[order]
            bounds = np.flatnonzero(np.diff(g)) + 1
            open_groups = np.flatnonzero(s.group_left > 0)
            rest, rest_group = [], []
            for part, gp in zip(np.split(pool, bounds), np.split(g, bounds)):
                part = part[np.argsort(s.rank[part], kind="stable")]
                target = int(gp[0])
                if s.group_left[target] == 0 and len(open_groups):
                    target = int(open_groups[np.argmin(np.abs(open_groups - target))])
                if s.group_left[target] > 0:  # the last batch (and a short tail) may still grow
                    batches, last = s.cutter.cut_open(part)
                    rest.append(last)
                    rest_group.append(np.full(len(last), target))
                else:
                    batches = s.cutter.cut(part)
                out.extend(batches)
            self._pool = np.concatenate(rest) if rest else np.zeros(0, dtype=np.int64)
            self._pool_group = np.concatenate(rest_group) if rest else None
        return [out[i] for i in rng.permutation(len(out))]

    def flush(self, rng):
        """Everything kept so far, batched now whatever the groups (a refill that has
        examined a whole pass: see :class:`~fairseq_efficiency.assist.worker.AssistWorker`)."""
        s = self.stream
        out, self._whole = self._whole, []
        if len(self._pool):
            out.extend(s.cutter.cut(self._pool[np.argsort(s.rank[self._pool], kind="stable")]))
        self._pool, self._pool_group = np.zeros(0, dtype=np.int64), None
        return [out[i] for i in rng.permutation(len(out))]
