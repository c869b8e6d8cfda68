"""fairseq CLI: lstm_meprop + meSimp train, shrink, resume and generate; errors at start-up."""
import os
import re

import torch

from tests.helpers import assert_one_line_error, run_cli, train_args

LSTM_MEPROP = ["--task", "translation_efficiency", "--criterion", "cross_entropy",
               "--meprop-k", "4", "--meprop-alternate"]


def _args(data_bin, save_dir, *extra):
    args = train_args(data_bin, save_dir, *LSTM_MEPROP, *extra)
    args[args.index("--arch") + 1] = "lstm_meprop"
    return args


def test_lstm_meprop_mesimp_train_resume_generate(tiny_data_bin, tmp_path):
    save = str(tmp_path / "ck")
    simp = ["--mesimp-interval", "5", "--mesimp-prune-rate", "0.3"]
    res = run_cli("fairseq_cli.train", _args(tiny_data_bin, save, "--max-epoch", "2", *simp))
    log = res.stdout + res.stderr
    assert "meProp epoch 1: top-k in the encoder" in log
    assert "meProp epoch 2: top-k in the decoder" in log
    sizes = re.findall(r"meSimp: layer sizes encoder\.0=(\d+) decoder\.0=(\d+)", log)
    assert sizes, log[-2000:]
    enc, dec = map(int, sizes[-1])
    assert enc < 16 or dec < 16
    state = torch.load(os.path.join(save, "checkpoint_last.pt"), map_location="cpu",
                       weights_only=False)
    w = state["model"]["encoder.lstm.cells.0.weight_hh"]
    assert tuple(w.shape) == (4 * enc, enc)
    assert tuple(state["model"]["decoder.layers.0.weight_hh"].shape) == (4 * dec, dec)

    # resume: the model is built at full size and adopts the shrunken shapes
    res2 = run_cli("fairseq_cli.train", _args(tiny_data_bin, save, "--max-epoch", "3", *simp))
    log2 = res2.stdout + res2.stderr
    assert "adopted" in log2 and "Loaded checkpoint" in log2
    assert "epoch 003" in log2

    gen = run_cli("fairseq_cli.generate", [
        tiny_data_bin, "--user-dir", _args(tiny_data_bin, save)[2], "--path",
        os.path.join(save, "checkpoint_last.pt"), "--cpu",  # fairseq's default task: translation
        "--beam", "2", "--max-tokens", "2000", "--gen-subset", "valid"])
    assert "Generate valid with beam=2: BLEU4" in gen.stdout + gen.stderr


def test_errors_at_start_up(tiny_data_bin, tmp_path):
    """Each kind of start-up error reaches the user as one line: found while the model is built,
    and found at the first training step. The other values and messages are unit-tested
    (test_topk.py: --meprop-k, --meprop-mode; test_hook.py: meSimp without meProp layers)."""
    cases = [
        (["--meprop-k", "2.5"], "must be an integer"),
        # found at the first training step (no epoch signal from the task): still one line
        (["--task", "translation"], "--meprop-alternate needs --task translation_efficiency"),
    ]
    for extra, msg in cases:
        res = run_cli("fairseq_cli.train",
                      _args(tiny_data_bin, str(tmp_path / "e"), "--max-epoch", "1", *extra),
                      check=False)
        assert_one_line_error(res, msg)
