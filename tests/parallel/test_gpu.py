"""HybridNMT on one CUDA device: the model and the single-process device pipeline equal the
CPU reference; fairseq-train runs them (skipped without CUDA)."""
import os
import re

import pytest
import torch

from fairseq_efficiency.parallel.pipeline import DevicePipeline
from tests.helpers import gpu_train_args, run_cli
from tests.parallel import workers as W
from tests.parallel.test_hybrid_lstm import TINY

pytestmark = pytest.mark.gpu

RTOL, ATOL = 1e-4, 1e-5


def _check(loss, model, ref_loss, ref_grads):
    torch.testing.assert_close(loss.detach().cpu(), ref_loss, rtol=RTOL, atol=ATOL)
    for n, p in model.named_parameters():
        assert p.grad.device.type == "cuda", n
        torch.testing.assert_close(p.grad.cpu(), ref_grads[n], rtol=RTOL, atol=ATOL, msg=n)


@pytest.mark.parametrize("chunks", [1, 3])
def test_model_on_cuda_equals_cpu(cuda_exact, chunks):
    src, prev, tgt = W.ragged_batch(5, 7, 6)
    ref_loss, ref_grads = W.reference(2, (5, 7, 6))
    model = W.tiny_model(2).to(cuda_exact)
    logits, _ = model(src.to(cuda_exact), prev.to(cuda_exact), chunks=chunks)
    loss = W.loss_of(logits, tgt.to(cuda_exact))
    loss.backward()
    _check(loss, model, ref_loss, ref_grads)


@pytest.mark.parametrize("chunks", [1, 3])
def test_device_pipeline_on_one_gpu_equals_cpu(cuda_exact, chunks):
    """Every stage on cuda:0 (the single-process schedule; inputs on the CPU as fairseq's
    trainer leaves them with --pipeline-model-parallel)."""
    src, prev, tgt = W.ragged_batch(5, 7, 6)
    ref_loss, ref_grads = W.reference(3, (5, 7, 6))
    model = W.tiny_model(3)
    pipe = DevicePipeline(model.encoder, model.decoder, [1, 2], ["cuda:0", "cuda:0"],
                          chunks=chunks).place()
    assert all(p.device.type == "cuda" for p in model.parameters())
    logits, attn = pipe(src, prev)
    assert logits.device == torch.device("cuda", 0) and attn.device == logits.device
    loss = W.loss_of(logits, tgt.to(logits.device))
    loss.backward()
    _check(loss, model, ref_loss, ref_grads)


@pytest.mark.parametrize("extra", [
    [],
    ["--fp16"],
    ["--pipeline-model-parallel", "--pipeline-encoder-balance", "[1,1]",
     "--pipeline-decoder-balance", "[1,1]", "--pipeline-encoder-devices", "[0,0]",
     "--pipeline-decoder-devices", "[0,0]", "--pipeline-devices", "[0]",
     "--pipeline-chunks", "2"],
])
def test_hybrid_lstm_trains_on_one_gpu(tiny_data_bin, tmp_path, extra):
    args = gpu_train_args(tiny_data_bin, tmp_path, "--task", "translation_efficiency",
                          "--criterion", "hybrid_cross_entropy", "--max-update", "6", *extra)
    i = args.index("--arch")
    args = args[:i] + args[i + 16:] + TINY  # train_args' lstm flags -> hybrid_lstm
    res = run_cli("fairseq_cli.train", args)
    log = res.stdout + res.stderr
    losses = re.findall(r"\| train \| epoch \d+ \| loss ([\d.]+)", log)
    assert losses and float(losses[-1]) < 100, log[-2000:]
    state = torch.load(os.path.join(tmp_path, "checkpoint_last.pt"), map_location="cpu",
                       weights_only=False)
    assert state["optimizer_history"][-1]["num_updates"] == 6
