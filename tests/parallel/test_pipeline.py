"""Wavefront pipeline over gloo ranks == the unchunked model in one process (dropout 0)."""
import pytest
import torch

from fairseq_efficiency.parallel.spawn import run_ranks
from tests.parallel import workers as W

RTOL, ATOL = 1e-5, 1e-6

# (layers, balance, chunks, (batch, src_len, tgt_len)); ragged lengths inside every batch
CASES_2 = [
    (2, [1, 1], 1, (5, 7, 6)),
    (2, [1, 1], 2, (5, 7, 6)),
    (2, [1, 1], 3, (4, 5, 9)),   # chunks do not divide the lengths
    (3, [2, 1], 4, (3, 6, 3)),   # uneven balance, more chunks than target steps / 2
    (2, [1, 1], 2, (1, 4, 5)),   # one sentence: rank 1's head share is empty
]
CASES_4 = [
    (4, [1, 1, 1, 1], 1, (6, 5, 4)),
    (4, [1, 1, 1, 1], 3, (3, 7, 5)),  # 3 sentences on 4 ranks
]


def _check(cases, world):
    results = run_ranks(W.pipeline_cases, world, cases, timeout=120, start_method="fork")
    for k, (layers, balance, chunks, shape) in enumerate(cases):
        ref_loss, ref_grads = W.reference(layers, shape)
        ref_S, ref_H = W.reference_states(layers, shape)
        ranks = [r[k] for r in results]
        # the shares cover the batch exactly once
        shares = [r["share"] for r in ranks]
        assert shares[0][0] == 0 and shares[-1][1] == shape[0]
        assert all(a[1] == b[0] for a, b in zip(shares, shares[1:]))
        for r in ranks:
            torch.testing.assert_close(r["loss"], ref_loss, rtol=RTOL, atol=ATOL)
            for name, g in ref_grads.items():
                torch.testing.assert_close(r["grads"][name], g, rtol=RTOL, atol=ATOL,
                                           msg=lambda m: f"{name} {balance} C={chunks}: {m}")
            lo, hi = r["share"]
            # even with one chunk: the ranks are other processes, whose thread counts and
            # CPU kernel choices may differ from this one's, so close, not bitwise equal
            torch.testing.assert_close(r["S_share"], ref_S[:, lo:hi], rtol=RTOL, atol=ATOL)
            torch.testing.assert_close(r["H_share"], ref_H[:, lo:hi], rtol=RTOL, atol=ATOL)
        # a rank's LSTM gradients come only from the layers it owns: other layers get theirs
        # from the owner's contribution to the all-reduce
        for r in ranks:
            for name, g in r["local"].items():
                if ".layers." in name and name not in r["owned"]:
                    assert g is None or not g.any(), name
        # the evaluation path (no autograd boundary) gives the same share losses
        torch.testing.assert_close(sum(r["eval_loss"] for r in ranks), ref_loss,
                                   rtol=RTOL, atol=ATOL)


def test_two_ranks_match_single_process():
    _check(CASES_2, 2)


def test_four_ranks_match_single_process():
    _check(CASES_4, 4)


def test_rejects_bad_configuration():
    from fairseq_efficiency.parallel.pipeline import WavefrontPipeline
    model = W.tiny_model(2)
    with pytest.raises(ValueError, match="summing to the 2 layers"):
        WavefrontPipeline(model.encoder, model.decoder, [1, 2], 2, rank=0, world_size=2)
    with pytest.raises(ValueError, match="not a multiple"):
        WavefrontPipeline(model.encoder, model.decoder, [1, 1], 2, rank=0, world_size=3)
    with pytest.raises(ValueError, match="chunks must be >= 1"):
        WavefrontPipeline(model.encoder, model.decoder, [1, 1], 0, rank=0, world_size=2)
    from fairseq_efficiency.parallel.seq2seq import HybridSeq2Seq
    feed = HybridSeq2Seq(W.VOCAB, W.VOCAB, W.PAD, 6, 8, 2, input_feeding=True)
    with pytest.raises(ValueError, match="cannot be wavefront-pipelined"):
        WavefrontPipeline(feed.encoder, feed.decoder, [1, 1], 2, rank=0, world_size=2)


def test_two_pipeline_groups_are_data_parallel_replicas():
    """World 4 with 2 stages: ranks {0,1} and {2,3} are two pipelines; the all-reduce sums both."""
    case = (2, [1, 1], 2, (5, 7, 6))
    results = run_ranks(W.pipeline_cases, 4, [case], timeout=120, start_method="fork")
    ref_loss, ref_grads = W.reference(*case[:1], case[3])
    assert [r[0]["share"] for r in results] == [(0, 3), (3, 5), (0, 3), (3, 5)]
    for r in results:
        torch.testing.assert_close(r[0]["loss"], 2 * ref_loss, rtol=RTOL, atol=ATOL)
        for name, g in ref_grads.items():
            torch.testing.assert_close(r[0]["grads"][name], 2 * g, rtol=RTOL, atol=ATOL)
