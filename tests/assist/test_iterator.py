"""The selection iterator's epochs and resume logic (assist/iterator.py), without fairseq's
trainer."""
import numpy as np

from fairseq_efficiency.assist.iterator import ShrinkingEpochBatchIterator


class Source:
    """Numbered batches, as the worker serves them."""

    def __init__(self):
        self.served = 0

    def next_batch(self):
        self.served += 1
        return np.array([self.served]), {"n": self.served}


class Plan:
    """``N_e`` per epoch; records which epochs were planned."""

    def __init__(self, sizes):
        self.sizes, self.calls = dict(sizes), []

    def __call__(self, epoch):
        self.calls.append(epoch)
        return self.sizes[epoch]


def make(sizes, epoch=1):
    src, plan = Source(), Plan(sizes)
    return ShrinkingEpochBatchIterator(src, epoch, plan, {"first": True}), src, plan


def test_an_epoch_is_its_planned_number_of_batches():
    it, src, plan = make({1: 3, 2: 5})
    assert it.next_epoch_idx == 1 and it.first_batch == {"first": True}
    itr = it.next_epoch_itr(shuffle=True)
    assert len(itr) == 3 and len(it) == 3
    assert [s["n"] for s in itr] == [1, 2, 3]
    assert it.end_of_epoch() and it.next_epoch_idx == 2
    assert it.state_dict() == {"epoch": 2, "iterations_in_epoch": 0, "shuffle": True,
                               "version": 2}
    itr = it.next_epoch_itr(shuffle=False)
    assert it.epoch == 2 and [s["n"] for s in itr] == [4, 5, 6, 7, 8]
    assert plan.calls == [1, 2] and src.served == 8   # each epoch planned once, served lazily


def test_mid_epoch_state_resumes_where_it_stopped_with_the_checkpointed_length():
    it, src, _ = make({1: 6})
    itr = it.next_epoch_itr()
    for _ in range(4):
        next(itr)
    st = it.state_dict()
    assert st["epoch"] == 1 and st["iterations_in_epoch"] == 4 and not it.end_of_epoch()
    # resumed: the plan would now say 2 batches, but the checkpointed N_1 = 6 wins
    resumed, src2, plan2 = make({1: 2, 2: 3}, epoch=st["epoch"])
    resumed.load_state_dict(st)
    resumed.set_num_batches(1, 6)
    assert resumed.next_epoch_idx == 1 and resumed.iterations_in_epoch == 4
    itr = resumed.next_epoch_itr()
    assert itr.n == 4 and len(itr) == 6
    assert len(list(itr)) == 2 and src2.served == 2   # only the remaining batches
    assert resumed.end_of_epoch() and plan2.calls == []
    assert len(list(resumed.next_epoch_itr())) == 3 and plan2.calls == [2]


def test_state_at_an_epoch_boundary_starts_the_next_epoch_from_its_beginning():
    it, _, _ = make({1: 2, 2: 2, 3: 4})
    list(it.next_epoch_itr())
    resumed, src, plan = make({1: 2, 2: 2, 3: 4})
    resumed.load_state_dict(it.state_dict())
    assert resumed.next_epoch_idx == 2 and resumed.iterations_in_epoch == 0
    itr = resumed.next_epoch_itr()
    assert resumed.epoch == 2 and itr.n == 0 and len(list(itr)) == 2
    assert plan.calls == [2]


def test_state_before_the_first_batch_and_shuffle_flag():
    it, _, _ = make({3: 2}, epoch=3)
    st = it.state_dict()
    assert st["epoch"] == 3 and st["iterations_in_epoch"] == 0
    resumed, _, _ = make({3: 2})
    resumed.load_state_dict({"epoch": 3, "iterations_in_epoch": 0, "shuffle": False})
    assert resumed.shuffle is False and resumed.next_epoch_idx == 3
    assert len(list(resumed.next_epoch_itr(shuffle=True))) == 2 and resumed.shuffle is True
