"""Every pair of ranks posts its receives in the order the peer sends (what NCCL needs).

NCCL, the GPU backend, pairs ``isend``/``irecv`` by their order between two ranks and ignores
tags; gloo pairs them by tag. A receive posted out of the send order therefore passes on CPU
ranks but hands a GPU run the wrong chunk (or hangs it when the shapes differ). The calls of
one training step are recorded on every rank and compared pair by pair: both ranks must list
the same messages in the same order (NCCL also serialises the two directions of a pair).
"""
import torch.distributed as dist

from fairseq_efficiency.parallel.spawn import run_ranks
from tests.parallel import workers as W


def recorded_step(rank, world, layers, balance, chunks, shape):
    calls, isend, irecv = [], dist.isend, dist.irecv

    def send(tensor, dst, *a, tag=0, **k):
        calls.append(("send", rank, dst, tag, tuple(tensor.shape)))
        return isend(tensor, dst, *a, tag=tag, **k)

    def recv(tensor, src, *a, tag=0, **k):
        calls.append(("recv", src, rank, tag, tuple(tensor.shape)))
        return irecv(tensor, src, *a, tag=tag, **k)

    dist.isend, dist.irecv = send, recv
    try:
        W.pipeline_step(rank, world, layers, balance, chunks, shape)
    finally:
        dist.isend, dist.irecv = isend, irecv
    return calls


def _with(calls, peer):
    """One rank's messages with ``peer``, in call order, as ``(from, to, tag, shape)``."""
    return [c[1:] for c in calls if peer in c[1:3]]


def _check(world, case):
    ranks = run_ranks(recorded_step, world, *case, timeout=120, start_method="fork")
    pairs = 0
    for a in range(world):
        for b in range(a + 1, world):
            mine, theirs = _with(ranks[a], b), _with(ranks[b], a)
            # the same messages in the same order on both sides (per direction, and
            # interleaved: a receive queued before a send on one side must be on the other)
            assert mine == theirs, f"ranks {a} and {b}:\n{mine}\n{theirs}"
            pairs += bool(mine)
    assert pairs >= world - 1


def test_two_stages_receive_in_send_order():
    _check(2, (2, [1, 1], 3, (4, 5, 9)))


def test_three_stages_receive_in_send_order():
    _check(3, (3, [1, 1, 1], 2, (5, 7, 6)))
