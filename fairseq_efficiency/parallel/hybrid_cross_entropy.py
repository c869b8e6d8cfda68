"""Criterion ``hybrid_cross_entropy``: label-smoothed cross-entropy of this rank's batch share.

Each rank of a pipeline group computes attention/softmax for a share of the
batch (:mod:`.hybrid_lstm`); the criterion restricts the sample to that share
(target, ``ntokens``, ``nsentences``), so every rank reports the sample size of
its share. fairseq's ``legacy_ddp`` all-reduce sums the gradients and the
trainer divides by the summed sample size: the exact full-batch gradient, and
every rank applies the same update (HybridNMT, Ono et al., section 3.2).
"""
from fairseq.criterions import register_criterion
from fairseq.logging import metrics

from fairseq_efficiency.criterions.sentence_cross_entropy import (
    SentenceCrossEntropyConfig, SentenceCrossEntropyCriterion,
)
from fairseq_efficiency.parallel.hybrid_lstm import HYBRID_SHARE, HYBRID_WAIT


def share_of_sample(sample, lo: int, hi: int, padding_idx: int):
    """The sample restricted to batch rows ``[lo, hi)`` (``net_input`` kept whole)."""
    target = sample["target"][lo:hi]
    out = dict(sample)
    out["target"] = target
    out["id"] = sample["id"][lo:hi]
    out["nsentences"] = hi - lo
    out["ntokens"] = int(target.ne(padding_idx).sum())
    return out


class _Ran:
    """A model whose forward already ran on the sample: calling it returns that output,
    everything else is the model's (fairseq's criterion ``forward`` calls the model itself;
    this criterion must see the output first, to know this rank's share)."""

    def __init__(self, model, net_output):
        self._model, self._net_output = model, net_output

    def __call__(self, *args, **kwargs):
        return self._net_output

    def __getattr__(self, name):
        return getattr(self._model, name)


@register_criterion("hybrid_cross_entropy", dataclass=SentenceCrossEntropyConfig)
class HybridCrossEntropyCriterion(SentenceCrossEntropyCriterion):
    """``sentence_cross_entropy`` on this rank's batch share when the model runs hybrid.

    With a model that returns no share (one process) this is exactly
    ``sentence_cross_entropy`` (= ``label_smoothed_cross_entropy``).
    """

    def forward(self, model, sample, reduce=True):
        net_output = model(**sample["net_input"])
        extra = net_output[1] if isinstance(net_output[1], dict) else {}
        share = extra.get(HYBRID_SHARE)
        if share is not None:  # PipelineGroupShards refuses hooks that need sentence losses
            sample = share_of_sample(sample, share[0], share[1], self.padding_idx)
        loss, sample_size, logging_output = super().forward(_Ran(model, net_output), sample,
                                                            reduce=reduce)
        if share is not None:
            # this rank's time blocked on the other ranks (the previous update's backward
            # and this forward): pipeline bubbles + transfers, logged as pipe_wait_ms
            logging_output["hybrid_wait_ms"] = 1000.0 * extra.get(HYBRID_WAIT, 0.0)
            logging_output["hybrid_ranks"] = 1
        return loss, sample_size, logging_output

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        super().reduce_metrics(logging_outputs)
        ranks = sum(log.get("hybrid_ranks", 0) for log in logging_outputs)
        if ranks:
            wait = sum(log.get("hybrid_wait_ms", 0.0) for log in logging_outputs)
            metrics.log_scalar("pipe_wait_ms", wait / ranks, ranks, round=1)
