"""sentence_cross_entropy: fairseq's loss, plus exact per-sentence token-mean NLL."""
import pytest
import torch
from fairseq import options, tasks
from fairseq.dataclass.utils import convert_namespace_to_omegaconf

from tests.helpers import train_args


def setup(data_bin, tmp_path, criterion, *extra):
    args = options.parse_args_and_arch(options.get_training_parser(), train_args(
        data_bin, tmp_path, "--task", "translation_efficiency", "--criterion", criterion,
        "--dropout", "0", *extra))
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    task.load_dataset("train", combine=True)
    torch.manual_seed(0)
    model = task.build_model(cfg.model)
    crit = task.build_criterion(cfg.criterion)
    itr = task.get_batch_iterator(task.dataset("train"), max_tokens=500, seed=1)
    sample = next(itr.next_epoch_itr(shuffle=False))
    return task, model, crit, sample


def test_per_sentence_loss_matches_manual_and_total_is_fairseqs(tiny_data_bin, tmp_path):
    task, model, crit, sample = setup(tiny_data_bin, tmp_path, "sentence_cross_entropy",
                                      "--label-smoothing", "0.1")
    _, _, ref = setup(tiny_data_bin, tmp_path, "label_smoothed_cross_entropy",
                      "--label-smoothing", "0.1")[:3]
    loss_ref, size_ref, log_ref = ref(model, sample)
    crit.report_sentence_loss = True
    loss, size, log = crit(model, sample)
    assert torch.equal(loss, loss_ref) and size == size_ref  # same tensors summed
    assert log["nll_loss"] == log_ref["nll_loss"]

    with torch.no_grad():
        lprobs = model.get_normalized_probs(model(**sample["net_input"]), log_probs=True)
    pad = task.target_dictionary.pad()
    manual = []
    for b in range(sample["target"].size(0)):
        toks = [t for t in range(sample["target"].size(1)) if sample["target"][b, t] != pad]
        manual.append(-sum(lprobs[b, t, sample["target"][b, t]] for t in toks) / len(toks))
    assert torch.allclose(log["_sentence_loss"], torch.stack(manual), atol=1e-5)
    # the (label-smoothed) training loss is not the per-sentence label: NLL only
    assert not torch.allclose(log["_sentence_loss"].sum(), loss / sample["ntokens"])


@pytest.mark.parametrize("extra", [("--label-smoothing", "0.1", "--report-accuracy"),
                                   ("--label-smoothing", "0", "--sentence-avg"),
                                   ("--label-smoothing", "0.2", "--ignore-prefix-size", "1")])
def test_everything_fairseq_reports_is_fairseqs(tiny_data_bin, tmp_path, extra):
    """The criterion only extends fairseq's: loss, gradient, sample size and every logged
    value are those of label_smoothed_cross_entropy; the sentence losses add up to its NLL."""
    task, model, crit, sample = setup(tiny_data_bin, tmp_path, "sentence_cross_entropy", *extra)
    ref = setup(tiny_data_bin, tmp_path, "label_smoothed_cross_entropy", *extra)[2]
    crit.report_sentence_loss = True
    loss_ref, size_ref, log_ref = ref(model, sample)
    grads_ref = torch.autograd.grad(loss_ref, list(model.parameters()))
    loss, size, log = crit(model, sample)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    assert torch.equal(loss, loss_ref) and size == size_ref
    assert all(torch.equal(a, b) for a, b in zip(grads, grads_ref))
    sentence_loss = log.pop("_sentence_loss")
    assert log.keys() == log_ref.keys() and all(
        torch.equal(torch.as_tensor(log[k]), torch.as_tensor(log_ref[k])) for k in log)
    prefix = int(extra[extra.index("--ignore-prefix-size") + 1]) if "--ignore-prefix-size" \
        in extra else 0
    ntok = sample["target"][:, prefix:].ne(task.target_dictionary.pad()).sum(1)
    assert torch.allclose((sentence_loss * ntok).sum(), log_ref["nll_loss"], rtol=1e-5)


def test_off_by_default(tiny_data_bin, tmp_path):
    _, model, crit, sample = setup(tiny_data_bin, tmp_path, "sentence_cross_entropy")
    _, _, log = crit(model, sample)
    assert "_sentence_loss" not in log
