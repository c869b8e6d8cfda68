"""fairseq-efficiency-prepare: data-bin creation, reuse and rebuild."""
import os

from fairseq.data import Dictionary, data_utils

from fairseq_efficiency.data.prepare import main, prepare
from tests.helpers import TINY


def test_data_bin_is_loadable_and_reused(tiny_data_bin, tmp_path):
    d = Dictionary.load(os.path.join(tiny_data_bin, "dict.tgt.txt"))
    ds = data_utils.load_indexed_dataset(os.path.join(tiny_data_bin, "train.src-tgt.tgt"), d)
    assert len(ds) == TINY.train_size
    with open(os.path.join(tiny_data_bin, "train.kind")) as f:
        assert len(f.read().split()) == TINY.train_size
    stamp = os.path.join(tiny_data_bin, "fairseq_efficiency_corpus.json")
    mtime = os.path.getmtime(stamp)
    assert prepare(os.path.dirname(tiny_data_bin), TINY) == tiny_data_bin
    assert os.path.getmtime(stamp) == mtime  # same settings: not rebuilt


def test_changed_settings_rebuild_and_joined_dictionary(tmp_path, capsys):
    out = tmp_path / "p"
    args = [str(out), "--train-size", "100", "--valid-size", "10", "--test-size", "10",
            "--nouns", "20", "--verbs", "10", "--adjectives", "10", "--adverbs", "10"]
    assert main(args) == 0
    n1 = sum(1 for _ in open(out / "data-bin" / "dict.src.txt"))
    assert main(args + ["--joined-dictionary"]) == 0
    src = open(out / "data-bin" / "dict.src.txt").read()
    assert src == open(out / "data-bin" / "dict.tgt.txt").read() and src.count("\n") > n1
    assert not os.path.exists(str(out / "data-bin") + ".tmp")


def test_bad_arguments_one_line_error(tmp_path, capsys):
    import pytest

    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "x"), "--workers", "0"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--workers must be >= 1" in err[0]
    assert not os.path.exists(tmp_path / "x")
