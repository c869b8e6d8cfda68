"""Label-smoothed cross-entropy that also reports every sentence's loss.

Instance-selection methods (AutoAssist's Boss losses, self-paced learning,
dynamic sampling) need one loss per sentence. Recomputing it would cost a
second forward pass; this criterion derives it from the log-probabilities the
training loss already computed.

Normalisation (documented contract of ``StepOutput.sentence_loss``): the
*token-mean negative log-likelihood* of the reference, without label smoothing
and excluding padding, i.e. ``-1/|y| * sum_t log p(y_t | y_<t, x)``. Token-mean
makes losses of short and long sentences comparable, which is what a
threshold ``loss_i > T`` needs (AutoAssist, section 3.2).
With ``sentence_loss_smoothing = eps > 0`` (set by the task from
``--assist-loss-smoothing``) it is instead the token-mean *label-smoothed* loss,
fairseq's ``label_smoothed_nll_loss`` per token summed over the reference and
divided by its length -- the AutoAssist authors' per-sentence signal (eps = 0.1).

The reduced loss, sample size and logging outputs are exactly those of
fairseq's ``label_smoothed_cross_entropy``: this class only extends its
documented extension point ``get_lprobs_and_target`` (the per-sentence values
come from the same detached log-probs, with one gather, and only when the task
asks for them) and adds them to ``forward``'s logging output.
"""
from dataclasses import dataclass

import torch
from fairseq.criterions import register_criterion
from fairseq.criterions.label_smoothed_cross_entropy import (
    LabelSmoothedCrossEntropyCriterion,
    LabelSmoothedCrossEntropyCriterionConfig,
)

SENTENCE_LOSS = "_sentence_loss"


@dataclass
class SentenceCrossEntropyConfig(LabelSmoothedCrossEntropyCriterionConfig):
    pass


@register_criterion("sentence_cross_entropy", dataclass=SentenceCrossEntropyConfig)
class SentenceCrossEntropyCriterion(LabelSmoothedCrossEntropyCriterion):
    """``label_smoothed_cross_entropy`` + per-sentence token-mean NLL.

    Set ``report_sentence_loss = True`` (the ``translation_efficiency`` task
    does so when an enabled feature needs it) to get a ``_sentence_loss``
    tensor, aligned with ``sample["id"]``, in the logging output. The task
    removes it before fairseq aggregates metrics.
    """

    supports_sentence_loss = True

    def __init__(self, task, sentence_avg, label_smoothing, ignore_prefix_size=0,
                 report_accuracy=False):
        super().__init__(task, sentence_avg, label_smoothing, ignore_prefix_size, report_accuracy)
        self.report_sentence_loss = False
        self.sentence_loss_smoothing = 0.0  # eps of the per-sentence loss (0: NLL)
        self._sentence_loss = None  # of the batch being scored

    def forward(self, model, sample, reduce=True):
        """fairseq's ``forward``, plus ``_sentence_loss`` when ``report_sentence_loss``."""
        self._sentence_loss = None
        try:
            loss, sample_size, logging_output = super().forward(model, sample, reduce=reduce)
            if self._sentence_loss is not None:
                logging_output[SENTENCE_LOSS] = self._sentence_loss
        finally:
            self._sentence_loss = None
        return loss, sample_size, logging_output

    def get_lprobs_and_target(self, model, net_output, sample):
        lprobs, target = super().get_lprobs_and_target(model, net_output, sample)
        # the loss asks first; accuracy (--report-accuracy) asks again for the same batch
        if self.report_sentence_loss and self._sentence_loss is None:
            self._sentence_loss, _ = sentence_nll(lprobs.detach(), target, self.padding_idx,
                                                  sample["target"].size(0),
                                                  self.sentence_loss_smoothing)
        return lprobs, target


def sentence_nll(lprobs, target, padding_idx, bsz, epsilon=0.0):
    """Token-mean NLL per sentence from flattened ``lprobs`` [B*T, V] and ``target`` [B*T]
    (``epsilon > 0``: token-mean label-smoothed loss, as fairseq's ``label_smoothed_nll_loss``)."""
    with torch.no_grad():
        tok = -lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1).float()
        if epsilon > 0:  # label_smoothed_nll_loss's per-token loss, summed in float32
            eps_i = epsilon / (lprobs.size(-1) - 1)
            tok = (1.0 - epsilon - eps_i) * tok - eps_i * lprobs.sum(-1, dtype=torch.float32)
        mask = target.ne(padding_idx)
        tok = tok.masked_fill(~mask, 0.0).view(bsz, -1)
        ntok = mask.view(bsz, -1).sum(1)
        return tok.sum(1) / ntok.clamp(min=1), ntok
