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
fairseq's ``label_smoothed_cross_entropy`` (bitwise: the same tensors are
summed); the per-sentence values are computed from detached log-probs with one
gather, and only when the task asks for them.
"""
from dataclasses import dataclass

import torch
from fairseq import utils
from fairseq.criterions import register_criterion
from fairseq.criterions.label_smoothed_cross_entropy import (
    LabelSmoothedCrossEntropyCriterion,
    LabelSmoothedCrossEntropyCriterionConfig,
    label_smoothed_nll_loss,
)

SENTENCE_LOSS = "_sentence_loss"
SENTENCE_NTOKENS = "_sentence_ntokens"


@dataclass
class SentenceCrossEntropyConfig(LabelSmoothedCrossEntropyCriterionConfig):
    pass


@register_criterion("sentence_cross_entropy", dataclass=SentenceCrossEntropyConfig)
class SentenceCrossEntropyCriterion(LabelSmoothedCrossEntropyCriterion):
    """``label_smoothed_cross_entropy`` + per-sentence token-mean NLL.

    Set ``report_sentence_loss = True`` (the ``translation_efficiency`` task
    does so when an enabled feature needs it) to get ``_sentence_loss`` and
    ``_sentence_ntokens`` tensors, aligned with ``sample["id"]``, in the
    logging output. The task removes them before fairseq aggregates metrics.
    """

    supports_sentence_loss = True

    def __init__(self, task, sentence_avg, label_smoothing, ignore_prefix_size=0,
                 report_accuracy=False):
        super().__init__(task, sentence_avg, label_smoothing, ignore_prefix_size, report_accuracy)
        self.report_sentence_loss = False
        self.sentence_loss_smoothing = 0.0  # eps of the per-sentence loss (0: NLL)

    def forward(self, model, sample, reduce=True):
        # score() is fairseq's forward on ``net_output`` (+ the per-sentence losses when asked)
        return self.score(model, model(**sample["net_input"]), sample, reduce=reduce)

    def score(self, model, net_output, sample, reduce=True):
        """Loss, sample size and logging output of ``net_output`` (fairseq's fields, plus the
        per-sentence losses when ``report_sentence_loss`` is set)."""
        lprobs, target = self.get_lprobs_and_target(model, net_output, sample)
        loss, nll_loss = label_smoothed_nll_loss(
            lprobs, target, self.eps, ignore_index=self.padding_idx, reduce=reduce
        )
        sample_size = sample["target"].size(0) if self.sentence_avg else sample["ntokens"]
        logging_output = {
            "loss": loss.data,
            "nll_loss": nll_loss.data,
            "ntokens": sample["ntokens"],
            "nsentences": sample["target"].size(0),
            "sample_size": sample_size,
        }
        if self.report_accuracy:
            n_correct, total = self.compute_accuracy(model, net_output, sample)
            logging_output["n_correct"] = utils.item(n_correct.data)
            logging_output["total"] = utils.item(total.data)
        if self.report_sentence_loss:
            sent_loss, sent_ntok = sentence_nll(lprobs.detach(), target, self.padding_idx,
                                                sample["target"].size(0),
                                                self.sentence_loss_smoothing)
            logging_output[SENTENCE_LOSS] = sent_loss
            logging_output[SENTENCE_NTOKENS] = sent_ntok
        return loss, sample_size, logging_output


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
