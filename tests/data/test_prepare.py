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


SMALL = ["--train-size", "60", "--valid-size", "10", "--test-size", "10",
         "--nouns", "20", "--verbs", "10", "--adjectives", "10", "--adverbs", "10"]


def _snapshot(root):
    """{relative path: bytes} of every file under ``root``."""
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            out[os.path.relpath(p, root)] = open(p, "rb").read()
    return out


def test_foreign_output_is_refused_and_force_replaces_only_own_files(tmp_path, capsys):
    import pytest

    out = tmp_path / "mine"
    (out / "data-bin").mkdir(parents=True)
    (out / "text").mkdir()
    (out / "data-bin" / "NOTES.txt").write_text("my notes")
    (out / "data-bin" / "dict.src.txt").write_text("my dictionary 1\n")
    (out / "text" / "train.src").write_text("my corpus\n")
    (out / "results.csv").write_text("1,2\n")
    before = _snapshot(out)
    with pytest.raises(SystemExit) as e:
        main([str(out)] + SMALL)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not written by fairseq-efficiency-prepare" in err[0], err
    assert _snapshot(out) == before  # nothing touched

    assert main([str(out), "--force"] + SMALL) == 0
    after = _snapshot(out)
    # files of other names survive, in place; the tool's own names were written
    assert after["data-bin/NOTES.txt"] == b"my notes" and after["results.csv"] == b"1,2\n"
    assert after["data-bin/dict.src.txt"] != b"my dictionary 1\n"
    assert after["text/train.src"].count(b"\n") == 60
    assert os.path.isfile(out / "data-bin" / "fairseq_efficiency_corpus.json")
    assert not [n for n in os.listdir(out) if n.startswith(".data-bin")]
    # now stamped: no --force needed to rebuild with other settings, the notes still survive
    assert main([str(out), "--seed", "5"] + SMALL) == 0
    assert open(out / "data-bin" / "NOTES.txt").read() == "my notes"
    assert open(out / "results.csv").read() == "1,2\n"
    assert (os.stat(out / "data-bin").st_mode & 0o777) == (os.stat(out / "text").st_mode & 0o777)


def test_output_that_is_a_file_is_one_line_error(tmp_path, capsys):
    import pytest

    f = tmp_path / "f"
    f.write_text("x")
    with pytest.raises(SystemExit) as e:
        main([str(f)] + SMALL)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "not a directory" in err[0]
    assert f.read_text() == "x"
    # a data-bin that links elsewhere is not renamed away (nor its target's files moved)
    out, target = tmp_path / "o", tmp_path / "elsewhere"
    target.mkdir()
    (target / "NOTES.txt").write_text("n")
    out.mkdir()
    (out / "data-bin").symlink_to(target)
    with pytest.raises(SystemExit):
        main([str(out), "--force"] + SMALL)
    assert "is not a directory" in capsys.readouterr().err
    assert os.listdir(target) == ["NOTES.txt"] and sorted(os.listdir(out)) == ["data-bin"]
