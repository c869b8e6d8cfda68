"""transformer_meprop: top-k feed-forward layers that meSimp shrinks inside fairseq-train."""
import re

from tests.helpers import run_cli, train_args

TINY_TRANSFORMER = [
    "--arch", "transformer_meprop", "--encoder-embed-dim", "16", "--decoder-embed-dim", "16",
    "--encoder-ffn-embed-dim", "32", "--decoder-ffn-embed-dim", "32", "--encoder-layers", "1",
    "--decoder-layers", "1", "--encoder-attention-heads", "2", "--decoder-attention-heads", "2",
    "--meprop-k", "0.25"]


def tiny_transformer(args):
    """:func:`~tests.helpers.train_args` with a tiny ``transformer_meprop`` instead of the LSTM."""
    i = args.index("--arch")
    return args[:i] + args[i + 16:] + TINY_TRANSFORMER


def test_transformer_meprop_trains(tiny_data_bin, tmp_path):
    args = train_args(tiny_data_bin, str(tmp_path / "tr"), "--task", "translation_efficiency",
                      "--criterion", "cross_entropy", "--max-update", "4",
                      "--mesimp-interval", "2", "--mesimp-prune-rate", "0.4")
    args = tiny_transformer(args)
    log = run_cli("fairseq_cli.train", args).stdout
    m = re.findall(r"layer sizes encoder\.0\.ffn=(\d+) decoder\.0\.ffn=(\d+)", log)
    assert m and all(int(v) <= 32 for v in m[-1])
