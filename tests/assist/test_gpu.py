"""AutoAssist with the Boss on CUDA: per-sentence losses come from the device (skipped without CUDA)."""
import os
import re

import pytest
import torch

from fairseq_efficiency.criterions.sentence_cross_entropy import sentence_nll
from tests.assist.test_cli import SEL, epoch_sizes, stored_state
from tests.helpers import gpu_train_args, run_cli

pytestmark = pytest.mark.gpu


def test_sentence_losses_on_cuda_equal_cpu():
    torch.manual_seed(0)
    lprobs = torch.randn(4 * 7, 11).log_softmax(-1)
    target = torch.randint(2, 11, (4 * 7,))
    target[5:7] = 1  # padding
    ref, ref_n = sentence_nll(lprobs, target, 1, 4)
    got, got_n = sentence_nll(lprobs.cuda().half(), target.cuda(), 1, 4)
    assert got.device.type == "cuda" and got.dtype == torch.float32
    torch.testing.assert_close(got.cpu(), ref, rtol=1e-2, atol=1e-2)
    assert torch.equal(got_n.cpu(), ref_n)


@pytest.mark.parametrize("precision", [[], ["--fp16"]])
def test_autoassist_trains_on_cuda(tiny_data_bin, tmp_path, precision):
    """The Boss trains on the GPU (fp32 and fp16); the Assistant learns from its losses and
    shrinks the epochs, exactly as on the CPU."""
    save = str(tmp_path / "ck")
    res = run_cli("fairseq_cli.train", gpu_train_args(
        tiny_data_bin, save, *SEL, "--instance-selection", "autoassist", "--max-epoch", "4",
        "--assist-confidence-decay", "0.8", *precision))
    log = res.stdout + res.stderr
    sizes = epoch_sizes(log)
    assert sorted(sizes) == [1, 2, 3, 4], log[-2000:]
    last = [ln for ln in log.splitlines() if "| train | epoch 004" in ln][-1]
    stats = dict(re.findall(r"(\w+) ([\d.]+)", last.split("| train |")[1]))
    assert int(stats["num_updates"]) == sum(sizes.values())
    assert float(stats["loss"]) < 100 and int(float(stats["boss_tok"])) > 0
    assert int(float(stats["skip_tok"])) > 0  # losses reached the Assistant, which dropped some
    _, st = stored_state(os.path.join(save, "checkpoint_last.pt"))
    assert st["ranks"][0]["worker"]["selector"]["assistant"]["fitted"]
