"""fairseq-train with hybrid_lstm on 2 CPU ranks: same numbers as one process, saves, resumes."""
import os
import re
import subprocess
import sys

from fairseq_efficiency.cli.userdir import userdir
from tests.helpers import TINY_LSTM, cli_env, run_cli, train_args

HYBRID = [
    "--task", "translation_efficiency", "--criterion", "hybrid_cross_entropy",
    "--arch", "hybrid_lstm", "--encoder-embed-dim", "16", "--decoder-embed-dim", "16",
    "--hidden-size", "16", "--layers", "2", "--dropout", "0",
]
PIPE = ["--pipeline-encoder-balance", "[1,1]", "--pipeline-decoder-balance", "[1,1]",
        "--pipeline-chunks", "3"]


def _args(data_bin, save_dir, *extra):
    """``train_args`` with hybrid_lstm instead of the helper's baseline LSTM."""
    return train_args(data_bin, str(save_dir))[:-len(TINY_LSTM)] + HYBRID + list(extra)


def _train_inner(text):
    """(update, loss, words per batch, sentences per batch, gradient norm) of every update."""
    return re.findall(r"\| epoch 001:\s+(\d+) / \d+ loss=([\d.]+), .*?wpb=([\d.]+), "
                      r"bsz=([\d.]+), .*?gnorm=([\d.]+)", text)


def _assert_same_updates(rows, ref):
    """Same updates and batch sizes; loss and gradient norm equal up to the log's rounding
    (another process layout sums in another order, so a last logged digit may differ)."""
    assert len(rows) == len(ref), (rows, ref)
    for (u, loss, wpb, bsz, gnorm), (ru, rloss, rwpb, rbsz, rgnorm) in zip(rows, ref):
        assert (u, wpb, bsz) == (ru, rwpb, rbsz), (rows, ref)
        assert abs(float(loss) - float(rloss)) <= 2e-3 and \
            abs(float(gnorm) - float(rgnorm)) <= 2e-3, (rows, ref)


def _valid(text):
    return re.findall(r"\| valid \| .*? loss ([\d.]+) .*?num_updates (\d+)", text)


def _launch(args, tmp_path, name):
    env = cli_env()
    cmd = [sys.executable, "-m", "fairseq_efficiency.cli.launch", "--nproc", "2",
           "--log-dir", str(tmp_path / f"{name}-ranks"), "--", "fairseq-train", *map(str, args)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    text = res.stdout + res.stderr
    assert res.returncode == 0, text[-3000:] + open(tmp_path / f"{name}-ranks" / "rank1.log").read()[-3000:]
    return text


def test_two_ranks_train_validate_save_resume(tiny_data_bin, tmp_path):
    single = run_cli("fairseq_cli.train",
                     _args(tiny_data_bin, tmp_path / "single", "--max-update", "8"))
    single_text = single.stdout + single.stderr
    ref_inner = _train_inner(single_text)
    assert len(ref_inner) == 8

    save = tmp_path / "hybrid"
    text = _launch(_args(tiny_data_bin, save, "--max-update", "4", *PIPE), tmp_path, "first")
    assert "efficiency features: hybrid_parallel" in text
    # the same batches (both ranks read the same shard) and the exact full-batch loss
    _assert_same_updates(_train_inner(text), ref_inner[:4])
    assert [u for _, u in _valid(text)] == ["4"]
    assert re.search(r"\| train \| .*pipe_wait_ms [\d.]+", text)  # time blocked on the other rank
    assert os.path.isfile(save / "checkpoint_last.pt")

    text = _launch(_args(tiny_data_bin, save, "--max-update", "8", *PIPE),
                 tmp_path, "resume")  # rank 0 loads, fairseq broadcasts to rank 1
    assert re.search(r"Loaded checkpoint .*checkpoint_last\.pt \(epoch 1 @ 4 updates\)", text)
    _assert_same_updates(_train_inner(text), ref_inner[4:])
    (loss, updates), (ref_loss, ref_updates) = _valid(text)[-1], _valid(single_text)[-1]
    assert updates == ref_updates and abs(float(loss) - float(ref_loss)) <= 2e-3

    # rank 0's checkpoint is the complete model: generation in one process
    gen = run_cli("fairseq_cli.generate", [
        tiny_data_bin, "--user-dir", userdir(), "--task",
        "translation_efficiency", "--path", save / "checkpoint_last.pt", "--cpu",
        "--beam", "2", "--max-len-b", "5", "--batch-size", "32"])
    assert re.search(r"BLEU4 = [\d.]+", gen.stdout + gen.stderr)
