"""fairseq-train -> fairseq-generate / fairseq-interactive through the CLIs, and hydra."""
import os

import torch

from fairseq_efficiency.cli.demo import generate_bleu, parse_generate_output, parse_train_log
from fairseq_efficiency.cli.userdir import userdir
from tests.helpers import TINY, run_cli, train_args

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def target_tokens(data_bin, split="train"):
    from fairseq.data import Dictionary, data_utils

    d = Dictionary.load(os.path.join(data_bin, "dict.tgt.txt"))
    ds = data_utils.load_indexed_dataset(os.path.join(data_bin, f"{split}.src-tgt.tgt"), d)
    return int(ds.sizes.sum())


def test_train_then_generate_and_interactive(tiny_data_bin, tmp_path):
    save = tmp_path / "ck"
    res = run_cli("fairseq_cli.train", train_args(
        tiny_data_bin, save, "--task", "translation_efficiency",
        "--criterion", "sentence_cross_entropy", "--max-epoch", "2", "--log-format", "json"))
    ckpt = save / "checkpoint_last.pt"
    assert ckpt.exists()
    tokens, valid_loss, _ = parse_train_log(res.stdout)
    assert valid_loss is not None and valid_loss > 0
    expected = 2 * target_tokens(tiny_data_bin)  # every target token, twice
    assert abs(tokens - expected) <= 0.01 * expected

    # fairseq-generate loads the checkpoint on torch >= 2.6 with no environment variable
    gen = run_cli("fairseq_cli.generate", [
        tiny_data_bin, "--user-dir", userdir(), "--path", ckpt, "--cpu", "--beam", "2",
        "--batch-size", "32", "--gen-subset", "test", "--required-batch-size-multiple", "1"])
    hyps, refs = parse_generate_output(gen.stdout)
    assert len(hyps) == len(refs) == TINY.test_size
    assert "BLEU4" in gen.stdout
    assert 0.0 <= generate_bleu(tiny_data_bin, str(ckpt), threads=1, beam=1) <= 100.0

    first_test_source = open(os.path.join(os.path.dirname(tiny_data_bin), "text", "test.src")).readline()
    (tmp_path / "in.txt").write_text(first_test_source)
    inter = run_cli("fairseq_cli.interactive", [
        tiny_data_bin, "--user-dir", userdir(), "--path", ckpt, "--cpu", "--beam", "2",
        "--source-lang", "src", "--target-lang", "tgt", "--input", tmp_path / "in.txt"])
    assert any(line.startswith("H-0\t") for line in inter.stdout.splitlines())


def test_plain_fairseq_checkpoint_loads_with_the_plugin(tiny_data_bin, tmp_path):
    save = tmp_path / "plain"
    run_cli("fairseq_cli.train", [a for a in train_args(tiny_data_bin, save, "--max-update", "2")
                                  if a not in ("--user-dir", userdir())])
    assert torch.load(save / "checkpoint_last.pt", weights_only=True)["cfg"]["task"]["_name"] == "translation"
    gen = run_cli("fairseq_cli.generate", [tiny_data_bin, "--user-dir", userdir(), "--path",
                                           save / "checkpoint_last.pt", "--cpu", "--beam", "1",
                                           "--max-len-b", "5", "--batch-size", "64"])
    assert "BLEU4" in gen.stdout


def test_hydra_example_config_trains(tiny_data_bin, tmp_path):
    save = tmp_path / "hydra"
    res = run_cli("fairseq_cli.hydra_train", [
        "--config-dir", os.path.join(REPO, "examples", "hydra"), "--config-name", "tiny_transformer",
        f"common.user_dir={userdir()}", f"task.data={tiny_data_bin}", f"checkpoint.save_dir={save}",
        "optimization.max_update=4", "optimization.max_epoch=5", "dataset.max_tokens=1000", "model.encoder.layers=1",
        "model.decoder.layers=1", f"hydra.run.dir={tmp_path / 'hydra_run'}"])
    assert "TranslationEfficiencyTask" in res.stdout + res.stderr
    state = torch.load(save / "checkpoint_last.pt", weights_only=True)
    assert state["cfg"]["task"]["_name"] == "translation_efficiency"
    assert state["cfg"]["criterion"]["_name"] == "sentence_cross_entropy"
    assert state["optimizer_history"][-1]["num_updates"] == 4
