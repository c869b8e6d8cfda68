"""With every candidate kept, the selection iterator batches like fairseq's own iterator."""
import numpy as np
import pytest
import torch
from fairseq import options, tasks
from fairseq.data import LanguagePairDataset, ListDataset
from fairseq.dataclass.utils import convert_namespace_to_omegaconf

from fairseq_efficiency.assist.hook import InstanceSelectionHook
from tests.helpers import train_args


def language_pairs(task, n=4000, seed=0):
    """``n`` pairs with source lengths 3..50 and target lengths close to them."""
    rng = np.random.default_rng(seed)
    src_len = rng.integers(3, 51, n)
    tgt_len = np.clip(src_len + rng.integers(-3, 4, n), 2, None)
    sd, td = task.src_dict, task.tgt_dict

    def sents(lengths, d):
        return [torch.cat([torch.from_numpy(rng.integers(d.nspecial, len(d), k - 1)),
                           torch.tensor([d.eos()])]).long() for k in lengths]

    return LanguagePairDataset(ListDataset(sents(src_len, sd), src_len), src_len, sd,
                               ListDataset(sents(tgt_len, td), tgt_len), tgt_len, td)


def composition(samples, pad):
    """Batches, mean sentences per batch, mean padding share per batch (source + target)."""
    sents, padding = [], []
    for s in samples:
        src, tgt = s["net_input"]["src_tokens"], s["target"]
        sents.append(src.size(0))
        padding.append(float(((src == pad).sum() + (tgt == pad).sum()) / (src.numel() + tgt.numel())))
    return len(sents), float(np.mean(sents)), float(np.mean(padding))


@pytest.mark.parametrize("max_tokens", [300, 1000])
def test_nothing_kept_out_means_fairseq_batches(tiny_data_bin, tmp_path, max_tokens):
    args = options.parse_args_and_arch(options.get_training_parser(), train_args(
        tiny_data_bin, tmp_path, "--task", "translation_efficiency", "--max-tokens", max_tokens))
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    ds = language_pairs(task)
    kw = dict(max_tokens=max_tokens, max_sentences=None, max_positions=(1024, 1024),
              ignore_invalid_inputs=True, required_batch_size_multiple=1, seed=1,
              num_shards=1, shard_id=0, epoch=1)
    fairseq_batches = list(task.get_batch_iterator(ds, **kw).next_epoch_itr(shuffle=True))
    # dynamic sampling keeps every instance with sample rate 1 and review share 1
    cfg.task.ds_sample_rate, cfg.task.ds_review_share = 1.0, 1.0
    hook = InstanceSelectionHook(cfg.task, "dynamic-sampling")
    try:
        selected = list(hook.train_batch_iterator(task, ds, **kw).next_epoch_itr(shuffle=True))
    finally:
        hook.close()
    pad = task.src_dict.pad()
    n_f, sents_f, pad_f = composition(fairseq_batches, pad)
    n_s, sents_s, pad_s = composition(selected, pad)
    assert n_s == pytest.approx(n_f, rel=0.02)
    assert sents_s == pytest.approx(sents_f, rel=0.02)
    assert pad_s == pytest.approx(pad_f, rel=0.1, abs=0.002)
    # in random order, as fairseq's: lengths of consecutive batches are uncorrelated
    for batches in (fairseq_batches, selected):
        lengths = np.array([s["net_input"]["src_lengths"].float().mean().item() for s in batches])
        assert abs(np.corrcoef(lengths[:-1], lengths[1:])[0, 1]) < 0.25
    # one epoch is one pass: every pair once
    ids = np.sort(np.concatenate([s["id"].numpy() for s in selected]))
    np.testing.assert_array_equal(ids, np.arange(len(ds)))
