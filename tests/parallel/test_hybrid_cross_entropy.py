"""hybrid_cross_entropy: label_smoothed_cross_entropy on this rank's share of the batch."""
import torch
from fairseq import tasks
from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterion

from fairseq_efficiency.parallel.hybrid_cross_entropy import share_of_sample
from fairseq_efficiency.parallel.hybrid_lstm import HYBRID_SHARE, HYBRID_WAIT
from tests.parallel.test_hybrid_lstm import _cfg, _sample


def test_one_process_equals_label_smoothed(tiny_data_bin):
    cfg = _cfg(tiny_data_bin, "--label-smoothing", "0.1")
    task = tasks.setup_task(cfg.task)
    torch.manual_seed(0)
    model = task.build_model(cfg.model)
    crit = task.build_criterion(cfg.criterion)
    sample = _sample(task)
    ref = LabelSmoothedCrossEntropyCriterion(task, False, 0.1)
    loss, size, log = crit(model, sample)
    ref_loss, ref_size, _ = ref(model, sample)
    assert torch.equal(loss, ref_loss) and size == ref_size == sample["ntokens"]


def test_hybrid_share_of_sample(tiny_data_bin):
    task = tasks.setup_task(_cfg(tiny_data_bin).task)
    sample = _sample(task)
    parts = [share_of_sample(sample, a, b, task.target_dictionary.pad())
             for a, b in ((0, 3), (3, 6))]
    assert sum(p["ntokens"] for p in parts) == sample["ntokens"]
    assert sum(p["nsentences"] for p in parts) == sample["nsentences"]
    assert torch.equal(torch.cat([p["target"] for p in parts]), sample["target"])


class Rank:
    """The model as one rank of a pipeline group runs it: the output rows of its share."""

    def __init__(self, model, lo, hi, share=True):
        self.model, self.lo, self.hi, self.share = model, lo, hi, share

    def __call__(self, **net_input):
        logits, extra = self.model(**net_input)
        extra = dict(extra)
        if self.share:
            extra.update({HYBRID_SHARE: (self.lo, self.hi), HYBRID_WAIT: 0.25})
        return logits[self.lo:self.hi], extra

    def __getattr__(self, name):
        return getattr(self.model, name)


def test_a_rank_scores_its_share_with_fairseqs_loss(tiny_data_bin):
    cfg = _cfg(tiny_data_bin, "--label-smoothing", "0.1")
    task = tasks.setup_task(cfg.task)
    torch.manual_seed(0)
    model = task.build_model(cfg.model)
    model.eval()
    crit = task.build_criterion(cfg.criterion)
    sample = _sample(task)
    pad = task.target_dictionary.pad()
    ref = LabelSmoothedCrossEntropyCriterion(task, False, 0.1)
    ref_loss, ref_size, ref_log = ref(Rank(model, 2, 5, share=False),
                                      share_of_sample(sample, 2, 5, pad))
    loss, size, log = crit(Rank(model, 2, 5), sample)
    assert torch.equal(loss, ref_loss) and size == ref_size == log["ntokens"]
    assert log["nsentences"] == 3 and log["ntokens"] == int(sample["target"][2:5].ne(pad).sum())
    assert log["nll_loss"] == ref_log["nll_loss"]
    assert log["hybrid_wait_ms"] == 250.0 and log["hybrid_ranks"] == 1
