"""The unlearnable-instance filter (assist/unlearnable.py): its rule on hand-made loss streams,
noise kept less often than not-yet-learned pairs, exact resume, fairseq-train end to end."""
import io
import math
import os
import re

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from fairseq_efficiency.assist.assistant import Assistant
from fairseq_efficiency.assist.selection import AutoAssistSelector
from fairseq_efficiency.assist.unlearnable import (KIND_NAMES, LEVEL_DECAY, KeepAll,
                                                   UnlearnableFilter, read_kinds)
from tests.helpers import run_cli, train_args

SEL = ["--task", "translation_efficiency", "--criterion", "sentence_cross_entropy"]


# -- the rule on hand-made streams ---------------------------------------------------------
def test_rule_on_a_hand_made_window():
    """Three instances, one batch each visit with a fixed background: the level and both
    falls computed by hand."""
    f = UnlearnableFilter(KeepAll(), 4, np.arange(4), visits=2, alpha=0.25, keep=0.1)
    # visit 1: instance 0 (flat), 1 (falls), 2 (flat but below the level); 3 is background
    f.observe([0, 1, 2, 3], [4.0, 4.0, 0.5, 3.5])
    m1 = np.mean([4.0, 4.0, 0.5, 3.5])
    assert f.level == pytest.approx(m1)                  # bias-corrected EMA of one batch
    assert not f.flag.any()                              # one visit: nothing judged yet
    f.observe([0, 1, 2, 3], [4.0, 2.0, 0.5, 1.5])
    ema = LEVEL_DECAY * (1 - LEVEL_DECAY) * m1 + (1 - LEVEL_DECAY) * np.mean([4.0, 2.0, 0.5, 1.5])
    m2 = ema / (1 - LEVEL_DECAY ** 2)
    assert f.level == pytest.approx(m2)
    f_c = math.log(m1 / m2)
    assert f_c > 0.05
    # two visits: the slope is log(l_1 / l_2) / F_c. 0: 0 < 0.25 and 4 > m2: unlearnable;
    # 1: log 2 / F_c > 0.25: learning; 2: below the level: learned; 3: log(3.5/1.5) / F_c
    assert f.flag.tolist() == [True, False, False, False]
    np.testing.assert_allclose(f.keep_prob(np.arange(4)), [0.1, 1, 1, 1])


def test_slope_over_a_longer_window_is_least_squares():
    f = UnlearnableFilter(KeepAll(), 3, np.arange(3), visits=4, alpha=0.25)
    m = np.array([3.0, 2.5, 2.0, 1.5], dtype=np.float32)
    losses = np.array([[4.0, 4.2, 3.9, 4.1],     # flat: slope ~0
                       [4.0, 4.4, 3.2, 3.0],     # falls, not monotonically
                       [5.0, 5.0, 4.8, 4.9]])    # a little: slope 0.04
    f.loss_hist[:] = losses
    f.level_hist[:] = m
    f.visits[:] = 4
    f._judge(np.arange(3))
    slopes = [np.polyfit(np.log(m), np.log(row), 1)[0] for row in losses]
    assert slopes[0] < 0.25 < slopes[1] and slopes[2] < 0.25
    np.testing.assert_array_equal(f.flag, np.array(slopes) < 0.25)
    f.visits[:] = 5                              # the oldest visit is now in slot 1
    f.flag[:] = False
    f._judge(np.arange(3))                       # log(2.5 / 3.0): the corpus rose, no judgment
    assert not f.flag.any()


def test_a_window_without_corpus_progress_keeps_the_flags():
    f = UnlearnableFilter(KeepAll(), 2, np.arange(2), visits=2, min_fall=0.05)
    f.flag[0] = True
    for _ in range(4):  # the corpus level is flat: no window is judged
        f.observe([0, 1], [3.0, 3.0])
    assert f.flag.tolist() == [True, False]


def test_flagged_losses_do_not_move_the_corpus_level():
    f = UnlearnableFilter(KeepAll(), 3, np.arange(3))
    f.flag[2] = True
    f.observe([0, 1, 2], [1.0, 3.0, 100.0])
    assert f.level == pytest.approx(2.0)


def test_level_weights_losses_by_inverse_keep_probability():
    class Half(KeepAll):
        def keep_prob(self, idx):
            return np.where(np.asarray(idx) == 0, 0.25, 1.0)

    f = UnlearnableFilter(Half(), 2, np.arange(2))
    f.observe([0, 1], [1.0, 3.0])                        # weights 4 and 1
    assert f.level == pytest.approx((4 * 1.0 + 3.0) / 5)


def corpus_stream(passes=6, seed=0):
    """Per pass: 'easy' pairs 0-99 (low, falling), 'hard' 100-179 (high, falling: not yet
    learned), 'noisy' 180-199 (high, flat); features say only which group a pair is in."""
    rng = np.random.default_rng(seed)
    n = 200
    group = np.repeat([0, 1, 2], [100, 80, 20])
    x = sp.csr_matrix((np.ones(n), (np.arange(n), group)), shape=(n, 3))
    for p in range(passes):
        base = np.array([2.0 * 0.6 ** p, 8.0 * 0.8 ** p, 5.0])[group]
        loss = base * np.exp(rng.normal(0, 0.05, n))
        order = rng.permutation(n)
        yield x, group, [(order[s:s + 20], loss[order[s:s + 20]]) for s in range(0, n, 20)]


def train(selector, passes=6):
    for x, group, batches in corpus_stream(passes):
        selector.start_epoch(2)
        for ids, loss in batches:
            selector.observe(ids, loss)
    return group


def test_noise_is_kept_less_often_than_not_yet_learned_pairs():
    x = next(corpus_stream(1))[0]

    def autoassist():
        return AutoAssistSelector(x, Assistant(3, lr=0.5, confidence_decay=0.5,
                                                     min_keep=0.5, seed=1))

    plain = autoassist()
    group = train(plain)
    p = plain.keep_prob(np.arange(200))
    # the plain Assistant: noise (always above T) kept at least as often as hard pairs
    assert p[group == 2].mean() >= p[group == 1].mean() - 1e-6
    filt = UnlearnableFilter(autoassist(), 200, np.arange(200), visits=4, keep=0.1)
    train(filt)
    q = filt.keep_prob(np.arange(200))
    assert filt.flag[group == 2].all() and not filt.flag[group != 2].any()
    assert q[group == 2].mean() < 0.2 * q[group == 1].mean()
    np.testing.assert_allclose(q[group != 2], filt.inner.keep_prob(np.arange(200))[group != 2])
    # the Assistant inside learned exactly what it learns without the filter
    assert filt.inner.assistant.fingerprint() == plain.assistant.fingerprint()


# -- state ---------------------------------------------------------------------------------
def make_filter(kinds=None):
    x = next(corpus_stream(1))[0]
    return UnlearnableFilter(AutoAssistSelector(x, Assistant(3, lr=0.5, seed=1)), 200,
                             np.arange(200), visits=4, kinds=kinds)


def test_resume_is_exact_and_survives_weights_only_loading():
    import fairseq_efficiency  # noqa: F401  (allow-lists numpy arrays for checkpoints)

    stream = list(corpus_stream(6))
    a = make_filter()
    for _, _, batches in stream[:3]:
        for ids, loss in batches:
            a.observe(ids, loss)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = make_filter()
    b.load_state_dict(torch.load(buf, weights_only=True))
    for _, _, batches in stream[3:]:
        for ids, loss in batches:
            a.observe(ids, loss)
            b.observe(ids, loss)
    assert a.flag.any()
    for key in ("visits", "loss_hist", "level_hist", "flag"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key))
    assert a.level == b.level
    np.testing.assert_array_equal(a.keep_prob(np.arange(200)), b.keep_prob(np.arange(200)))
    assert a.inner.assistant.fingerprint() == b.inner.assistant.fingerprint()


def test_states_with_and_without_the_filter_load_both_ways():
    a = make_filter()
    for ids, loss in next(corpus_stream(1))[2]:
        a.observe(ids, loss)
    plain = AutoAssistSelector(a.inner.features, Assistant(3, lr=0.5, seed=1))
    plain.load_state_dict(a.state_dict())               # a run without the flag
    assert plain.assistant.fingerprint() == a.inner.assistant.fingerprint()
    b = make_filter()
    b.load_state_dict(a.inner.state_dict())             # a checkpoint made without it
    assert b.inner.assistant.fingerprint() == a.inner.assistant.fingerprint()
    assert not b.visits.any() and math.isnan(b.level)


def test_mismatched_states_are_refused():
    st = make_filter().state_dict()
    with pytest.raises(ValueError, match="window of 4 visits"):
        UnlearnableFilter(KeepAll(), 200, np.arange(200), visits=3).load_state_dict(st)
    with pytest.raises(ValueError, match="different training set"):
        UnlearnableFilter(KeepAll(), 150, np.arange(150), visits=4).load_state_dict(st)
    bad = {**st, "unlearnable": {**st["unlearnable"], "visits": -np.ones(200, np.int32)}}
    with pytest.raises(ValueError, match="negative"):
        make_filter().load_state_dict(bad)
    with pytest.raises(ValueError):
        UnlearnableFilter(KeepAll(), 2, np.arange(2), visits=1)


# -- per-class figures ---------------------------------------------------------------------
def test_read_kinds(tmp_path):
    p = tmp_path / "train.kind"
    p.write_text("easy\nnoisy\nhard\n")
    np.testing.assert_array_equal(read_kinds(str(p), 3),
                                  [KIND_NAMES.index(k) for k in ("easy", "noisy", "hard")])
    assert read_kinds(str(p), 4) is None                 # too short
    assert read_kinds(str(p), 2) is None                 # too long
    p.write_text("easy\nspam\nhard\n")
    assert read_kinds(str(p), 3) is None
    assert read_kinds(str(tmp_path / "missing"), 3) is None


def test_stats_per_kind():
    kinds = np.repeat([0, 2, 3], [100, 80, 20])         # easy, hard, noisy
    f = make_filter(kinds)
    for x, group, batches in corpus_stream(6):
        f.start_epoch(2)
        for ids, loss in batches:
            f.observe(ids, loss)
    f.start_epoch(3)
    s = f.stats()
    assert s["unl_noisy"] == 1.0 and s["unl_easy"] == s["unl_hard"] == 0.0
    assert s["unl_share"] == pytest.approx(0.1) and "unl_medium" not in s
    assert s["kp_noisy"] < s["kp_hard"] and {"rho", "T", "unl_level"} <= set(s)
    base = f.inner.keep_prob(np.arange(200))            # the Assistant alone (kp0_)
    assert s["kp0_noisy"] == pytest.approx(base[180:].mean())
    assert s["kp_noisy"] == pytest.approx(0.1 * s["kp0_noisy"])
    assert s["kp_hard"] == s["kp0_hard"]


# -- fairseq-train -------------------------------------------------------------------------
def test_fairseq_train_with_the_filter_logs_checkpoints_and_resumes(tiny_data_bin, tmp_path):
    save = str(tmp_path / "ck")
    opts = [*SEL, "--instance-selection", "autoassist", "--assist-unlearnable",
            "--assist-unlearnable-visits", "2", "--no-epoch-checkpoints"]
    res = run_cli("fairseq_cli.train", train_args(tiny_data_bin, save, *opts, "--max-epoch", "3"))
    log = res.stdout + res.stderr
    last = [ln for ln in log.splitlines() if "| train | epoch 003" in ln][-1]
    for key in ("unl_share", "unl_level", "unl_noisy", "kp_noisy", "kp_easy", "rho"):
        assert f"| {key} " in last, key
    cp = torch.load(os.path.join(save, "checkpoint_last.pt"), map_location="cpu",
                    weights_only=False)
    st = cp["extra_state"]["TranslationEfficiencyTask"]["hooks"]["instance_selection"]
    sel = st["ranks"][0]["worker"]["selector"]
    u = sel["unlearnable"]
    assert u["loss_hist"].shape == (600, 2) and u["visits"].max() >= 2
    assert "assistant" in sel                            # the Assistant's state beside it
    res = run_cli("fairseq_cli.train", train_args(tiny_data_bin, save, *opts, "--max-epoch", "4"))
    log = res.stdout + res.stderr
    assert "restored worker 0 state" in log and "| train | epoch 004" in log
    assert re.search(r"Assistant [0-9a-f]{12}", log)  # the wrapped Assistant's fingerprint


def test_uniform_with_the_filter_runs_through_the_bucketed_iterator(tiny_data_bin, tmp_path):
    """(competence with the filter is refused up front: test_config.py)"""
    res = run_cli("fairseq_cli.train", train_args(
        tiny_data_bin, str(tmp_path / "a"), *SEL, "--instance-selection", "uniform",
        "--assist-unlearnable", "--max-epoch", "1", "--no-save"))
    log = res.stdout + res.stderr
    assert "uniform: worker 0/1 shard of 600 pairs" in log and "| unl_share " in log
    assert "| kp0_noisy 1 " in log                       # uniform keeps everything
