"""An ``EpochBatchIterating`` whose batches come from the asynchronous Assistant worker.

Epoch definition: epoch ``e`` is ``N_e`` Boss batches, where ``N_e`` is fixed
when the epoch starts as the number of batches that one pass of candidates
over the worker's shard is expected to fill at the current keep probabilities
(``N_pass * sum_i p_i t_i / sum_i t_i``; ``t_i`` the instance's tokens, ``N_pass``
fairseq's batches of the shard, :mod:`.bucketing`; a curriculum keeps ``N_pass``) and then maximised
over data-parallel workers, so every worker yields the same number of batches
(no DDP hang). The candidate stream itself continues across epoch boundaries,
so every instance is offered equally often over training and ``--max-epoch``,
LR schedules and validation keep their meaning: with nothing shrunk an epoch
is one pass over the data, in fairseq's batches.
"""
from fairseq.data import iterators


class ShrinkingEpochBatchIterator(iterators.EpochBatchIterating):
    def __init__(self, source, epoch, plan_epoch, first_batch):
        """``source.next_batch() -> (indices, sample)``; ``plan_epoch(epoch) -> N_e``."""
        self.source = source
        self.epoch = max(epoch, 1)
        self._plan_epoch = plan_epoch
        self._first_batch = first_batch
        self._num_batches = {}
        self._cur = None
        self._resume_offset = None
        self.shuffle = True

    def num_batches(self, epoch):
        if epoch not in self._num_batches:
            self._num_batches[epoch] = int(self._plan_epoch(epoch))
        return self._num_batches[epoch]

    def set_num_batches(self, epoch, n):
        """Used on resume: the checkpointed ``N_e`` of a partly trained epoch wins."""
        self._num_batches[epoch] = int(n)

    def __len__(self):
        return self.num_batches(self.epoch)

    @property
    def next_epoch_idx(self):
        if self._resume_offset is not None:
            return self.epoch
        if self._cur is not None and self.end_of_epoch():
            return self.epoch + 1
        return self.epoch

    @property
    def first_batch(self):
        return self._first_batch

    def _generate(self, n):
        for _ in range(n):
            _, sample = self.source.next_batch()
            yield sample

    def next_epoch_itr(self, shuffle=True, fix_batches_to_gpus=False, set_dataset_epoch=True):
        self.epoch = self.next_epoch_idx
        offset = self._resume_offset or 0
        self._resume_offset = None
        total = self.num_batches(self.epoch)
        self._cur = iterators.CountingIterator(self._generate(max(0, total - offset)),
                                               start=offset, total=total)
        self.shuffle = shuffle
        return self._cur

    def end_of_epoch(self) -> bool:
        return self._cur is not None and not self._cur.has_next()

    @property
    def iterations_in_epoch(self):
        if self._cur is not None:
            return self._cur.n
        return self._resume_offset or 0

    def state_dict(self):
        if self.end_of_epoch():
            return {"epoch": self.epoch + 1, "iterations_in_epoch": 0, "shuffle": self.shuffle,
                    "version": 2}
        return {"epoch": self.epoch, "iterations_in_epoch": self.iterations_in_epoch,
                "shuffle": self.shuffle, "version": 2}

    def load_state_dict(self, state_dict):
        self.epoch = state_dict["epoch"]
        offset = state_dict.get("iterations_in_epoch", 0)
        self._resume_offset = offset if offset > 0 else None
        self._cur = None
        self.shuffle = state_dict.get("shuffle", True)
