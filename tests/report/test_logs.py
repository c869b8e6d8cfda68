"""fairseq logs (console, bare log file, hydra) read into training and validation curves."""
import os

import numpy as np
import pytest

from fairseq_efficiency.report.logs import parse_log, read_log
from tests.report.fake_logs import _rec, write_log


def test_boss_tokens_follow_fairseq_wpb_per_interval():
    lines = [_rec("train_inner", {"epoch": 1, "loss": 9, "wpb": 100, "num_updates": 4, "wall": 1}),
             _rec("train_inner", {"epoch": 1, "loss": 9, "wpb": 300, "num_updates": 8, "wall": 2}),
             # end of epoch 1 at update 10: the epoch mean is exact (4*100 + 4*300 + 2*50) / 10
             _rec("train", {"epoch": 1, "train_loss": 9, "train_wpb": 170,
                            "train_num_updates": 10, "train_wall": 3}),
             _rec("train_inner", {"epoch": 2, "loss": 9, "wpb": 200, "num_updates": 12, "wall": 4})]
    c = parse_log("\n".join(lines))
    assert [(p.updates, p.tokens) for p in c.train] == [(4, 400), (8, 1600), (10, 1700), (12, 2100)]
    assert c.tokens_at(9) == pytest.approx(1650) and c.wall_at(11) == pytest.approx(3.5)


def test_bare_log_file_records_are_read_like_console_ones(tmp_path):
    console = write_log(str(tmp_path / "c" / "train.log"), [5.0, 4.0])
    bare = tmp_path / "bare.log"
    bare.write_text("\n".join(l.split(" | ")[-1] for l in open(console).read().splitlines()
                              if "{\"" in l) + "\n")
    hydra = tmp_path / "hydra.log"  # fairseq-hydra-train: [DATE][NAME][LEVEL] - MESSAGE
    hydra.write_text("\n".join("[2026-01-01 10:00:00,000][%s][INFO] - %s" % tuple(l.split(" | ")[2:])
                               for l in open(console).read().splitlines() if "{\"" in l) + "\n")
    a, b, h = read_log(console), read_log(str(bare)), read_log(str(hydra))
    assert [(p.updates, p.tokens, p.wall) for p in a.train] == \
           [(p.updates, p.tokens, p.wall) for p in b.train] == \
           [(p.updates, p.tokens, p.wall) for p in h.train]
    assert [p.loss for p in b.valid] == [p.loss for p in h.valid] == [5.0, 4.0]


def test_resumed_run_drops_redone_updates_and_continues_wall(tmp_path):
    path = str(tmp_path / "r" / "train.log")
    write_log(path, [5.0, 4.0, 3.5])  # ran to update 30, 60 s; checkpoint at update 20 kept
    write_log(path, [3.0], start=20, loaded=20, sec_per_update=1.0)  # resumed: updates 21..30
    c = read_log(path)
    assert c.segments == 2
    assert [p.loss for p in c.valid] == [5.0, 4.0, 3.0]
    assert c.updates == 30 and c.train[-1].tokens == pytest.approx(3000)
    assert c.train[-1].wall == pytest.approx(40.0 + 10.0)  # 40 s to update 20, then 10 s


def test_overlong_lines_are_skipped(tmp_path):
    from fairseq_efficiency.report.logs import MAX_LINE

    path = write_log(str(tmp_path / "o" / "train.log"), [5.0])
    text = open(path).read()
    with open(path, "w") as f:
        f.write('{"loss": "' + "9" * (2 * MAX_LINE) + '"}\n' + text)
    assert [p.loss for p in read_log(path).valid] == [5.0]


def test_resume_without_config_lines_is_found_from_the_checkpoint_line():
    first = [_rec("train_inner", {"epoch": 1, "loss": 9, "wpb": 10, "num_updates": u, "wall": u})
             for u in (2, 4, 6)]
    again = ["INFO - Loaded checkpoint ck.pt (epoch 1 @ 4 updates)"] + [
        _rec("train_inner", {"epoch": 1, "loss": 9, "wpb": 10, "num_updates": u, "wall": u - 4})
        for u in (6, 8)]
    c = parse_log("\n".join(first + again))
    assert c.segments == 2 and [p.updates for p in c.train] == [2, 4, 6, 8]
    assert [p.wall for p in c.train] == [2, 4, 6, 8] and c.train[-1].tokens == 80


def test_tokens_of_a_real_epoch_are_the_target_tokens_of_the_corpus(real_run, tiny_data_bin):
    from fairseq.data import data_utils

    c = read_log(str(real_run / "train.log"))
    end1 = [p for p in c.train if p.epoch_end][0]
    tgt = data_utils.load_indexed_dataset(os.path.join(tiny_data_bin, "train.src-tgt.tgt"), None)
    # ntokens counts each target sentence and its end-of-sentence symbol once per epoch
    assert end1.tokens == pytest.approx(int(np.asarray(tgt.sizes).sum()), rel=1e-3)
    assert len(c.valid) == 2 and c.train[-1].tokens == pytest.approx(2 * end1.tokens, rel=0.02)

