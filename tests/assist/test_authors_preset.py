"""The authors' Assistant (``--assist-preset authors``): per-pass threshold, floor on b,
bootstrap mini-steps, TF and length features, label-smoothed sentence losses, resume."""
import os

import numpy as np
import pytest
import torch

from fairseq_efficiency.assist import features as F
from fairseq_efficiency.assist.assistant import Assistant
from fairseq_efficiency.assist.selection import AutoAssistSelector
from fairseq_efficiency.criterions.sentence_cross_entropy import sentence_nll
from tests.helpers import run_cli, train_args


def ones(n):
    return np.ones((n, 1))


def proba(g):
    return np.column_stack([1 - g, g])


# -- threshold -------------------------------------------------------------------------------
def test_pass_mean_threshold_on_a_hand_made_loss_stream():
    a = Assistant(1, threshold="pass-mean", threshold_decay=0.99)
    a.partial_fit(ones(2), [2.0, 4.0])
    assert a.threshold_ == pytest.approx(0.03)            # 0.01 * 3, no bias correction
    a.partial_fit(ones(2), [1.0, 1.0])
    assert a.threshold_ == pytest.approx(0.0397)          # 0.99 * 0.03 + 0.01 * 1
    a.start_pass()
    assert a.threshold_ == pytest.approx(2.0)             # (2 + 4 + 1 + 1) / 4
    a.partial_fit(ones(1), [10.0])
    a.partial_fit(ones(2), [0.5, 1.5])
    assert a.threshold_ == pytest.approx(2.0)             # held fixed for the pass
    a.start_pass()
    assert a.threshold_ == pytest.approx(4.0)             # (10 + 0.5 + 1.5) / 3
    a.start_pass()                                       # a pass without losses keeps T
    assert a.threshold_ == pytest.approx(4.0) and a.passes_ == 3
    b = Assistant(1, threshold_decay=0.99)               # the paper's: bias-corrected
    b.partial_fit(ones(2), [2.0, 4.0])
    assert b.threshold_ == pytest.approx(3.0)


def test_selector_follows_the_candidate_streams_passes():
    a = Assistant(1, threshold="pass-mean")
    sel = AutoAssistSelector(ones(4), a)
    sel.observe(np.array([0, 1]), [1.0, 3.0])
    sel.start_pass(0)
    assert a.passes_ == 0
    sel.start_pass(1)
    sel.start_pass(1)                                    # idempotent
    assert a.passes_ == 1 and a.threshold_ == pytest.approx(2.0)


# -- acceptance ----------------------------------------------------------------------------
@pytest.mark.parametrize("rho,g,floor_keep,floor_b", [
    (0.9, 0.2, 0.5, 0.6),    # keep: max(0.1 + 0.18, 0.5); b: 0.5 + 0.5 * 0.2
    (0.9, 0.8, 0.82, 0.9),   # keep: 0.1 + 0.72;          b: 0.5 + 0.5 * 0.8
    (0.3, 0.2, 0.76, 0.76),  # 1 - rho >= 0.5: b = 0.7, both 0.7 + 0.3 * 0.2
])
def test_floor_on_b_versus_floor_on_keep(rho, g, floor_keep, floor_b):
    out = {}
    for floor in ("keep", "b"):
        a = Assistant(1, min_keep=0.5, floor_on=floor)
        a.rho_ = rho
        a.predict_proba = lambda x, g=g: proba(np.full(x.shape[0], g))
        out[floor] = a.keep_prob(ones(1))[0]
    assert out["keep"] == pytest.approx(floor_keep)
    assert out["b"] == pytest.approx(floor_b)


def test_floor_on_b_without_floor_is_algorithm_1():
    a, b = Assistant(1, floor_on="b"), Assistant(1)
    for asst in (a, b):
        asst.rho_ = 0.7
        asst.predict_proba = lambda x: proba(np.array([0.1, 0.9]))
    np.testing.assert_allclose(a.keep_prob(ones(2)), b.keep_prob(ones(2)))


# -- bootstrap mini-steps ------------------------------------------------------------------
@pytest.mark.parametrize("n,sizes", [(3, [3]), (10, [4, 4, 2]), (16, [4, 4, 4, 4]),
                                     (100, [25, 25, 25, 25])])
def test_mini_step_count(n, sizes):
    a = Assistant(1, mini_steps=4)
    assert [len(s) for s in a.mini_step_slices(n)] == sizes   # min(4, ceil(n / 4)) steps


def test_bootstrap_resampling_is_seeded():
    def rows(seed):
        return np.concatenate(Assistant(1, mini_steps=4, seed=seed).mini_step_slices(100))

    r = rows(3)
    assert np.array_equal(r, rows(3)) and not np.array_equal(r, rows(4))
    assert r.min() >= 0 and r.max() < 100
    assert len(np.unique(r)) < 100                       # drawn with replacement


def test_mini_step_sgd_hand_computed():
    a = Assistant(1, lr=0.5, l2=0.1, mini_steps=4, threshold="pass-mean")
    a.partial_fit(ones(2), [5.0, 5.0])     # T = 0.05: z = [1, 1]; one step of both rows
    # p = 0.5, grad = -0.5 per row, eta = 0.5 / 2: w = b = 0 - 0.25 * (-1.0 + 0.1 * 0)
    assert a.clf_.coef_[0, 0] == pytest.approx(0.25)
    assert a.clf_.intercept_[0] == pytest.approx(0.25)
    a.partial_fit(ones(2), [0.01, 0.01])   # T = 0.0496: z = [0, 0]; p = sigmoid(0.5)
    p = 1 / (1 + np.exp(-0.5))
    expected = 0.25 - 0.25 * (2 * p + 0.1 * 0.25)
    assert a.clf_.coef_[0, 0] == pytest.approx(expected)
    assert a.clf_.intercept_[0] == pytest.approx(expected)
    assert a.last_accuracy_ == 0.0     # measured before the step: g = 0.62 > 0.5 on z = 0


def test_mini_steps_learn_a_separable_labelling():
    rng = np.random.default_rng(0)
    a = Assistant(2, lr=0.5, l2=0.1, mini_steps=4, threshold="pass-mean")
    for _ in range(300):
        hard = rng.random(32) < 0.5
        x = np.stack([hard.astype(float), 1.0 - hard], axis=1)
        a.partial_fit(x, np.where(hard, 3.0, 1.0) + 0.1 * rng.random(32))
    x = np.array([[1.0, 0.0], [0.0, 1.0]])
    g = a.predict_proba(x)[:, 1]
    assert g[0] > 0.7 and g[1] < 0.3 and a.last_accuracy_ == 1.0


# -- resume --------------------------------------------------------------------------------
def test_state_round_trip_keeps_passes_threshold_and_bootstrap_rng():
    def make():
        return Assistant(3, lr=0.5, l2=0.1, threshold="pass-mean", floor_on="b",
                         mini_steps=4, min_keep=0.5, seed=7)

    rng = np.random.default_rng(1)
    batches = [(rng.random((12, 3)), rng.random(12) * 4) for _ in range(6)]
    a = make()
    for i, (x, l) in enumerate(batches[:4]):
        a.partial_fit(x, l)
        if i == 1:
            a.start_pass()
    st = a.state_dict()
    b = make()
    b.load_state_dict(st)
    first_pass = np.concatenate([batches[0][1], batches[1][1]])
    assert b.passes_ == 1 and b.threshold_ == a.threshold_ == pytest.approx(first_pass.mean())
    assert b.fingerprint() == a.fingerprint()
    for x, l in batches[4:]:
        a.partial_fit(x, l)
        b.partial_fit(x, l)
    a.start_pass()
    b.start_pass()
    assert b.threshold_ == a.threshold_ and b.passes_ == a.passes_ == 2
    np.testing.assert_array_equal(b.clf_.coef_, a.clf_.coef_)
    np.testing.assert_array_equal(b.keep_prob(batches[0][0]), a.keep_prob(batches[0][0]))


def test_states_without_pass_statistics_still_load():
    a = Assistant(2)
    a.partial_fit(np.eye(2), [1.0, 2.0])
    st = {k: v for k, v in a.state_dict().items()
          if k not in ("passes", "pass_sum", "pass_count", "pass_threshold", "rng")}
    b = Assistant(2, threshold="pass-mean")
    b.load_state_dict(st)
    assert b.passes_ == b.pass_count_ == 0 and b.steps_ == a.steps_
    np.testing.assert_array_equal(b.clf_.coef_, a.clf_.coef_)
    assert b.threshold_ == a.loss_ema_                     # first pass: the uncorrected EMA


# -- features ------------------------------------------------------------------------------
def _write_bin(prefix, lang, sentences, vocab):
    from fairseq.data import indexed_dataset

    b = indexed_dataset.make_builder(f"{prefix}{lang}.bin", impl="mmap", vocab_size=vocab)
    for s in sentences:
        b.add_item(torch.tensor(s, dtype=torch.int32))
    b.finalize(f"{prefix}{lang}.idx")


def test_tf_and_length_features_of_a_hand_made_pair(tmp_path):
    # nspecial = 4 (</s> = 2); source "a b a </s>" = [4, 5, 4, 2], target "c </s>" = [6, 2]
    prefix = str(tmp_path / "train.src-tgt.")
    _write_bin(prefix, "src", [[4, 5, 4, 2], [5, 2]], 8)
    _write_bin(prefix, "tgt", [[6, 2], [6, 7, 6, 7, 2]], 8)
    x_idf = F.build_features(prefix, "src", "tgt", 8, 8, nspecial=4).toarray()
    x = F.build_features(prefix, "src", "tgt", 8, 8, nspecial=4, kind="tfidf-tf-len").toarray()
    assert x.shape == (2, F.n_columns("tfidf-tf-len", 8, 8)) == (2, 34)
    np.testing.assert_allclose(x[:, :16], x_idf)        # TF-IDF columns unchanged
    tf, lengths = x[:, 16:32], x[:, 32:]
    expected = np.zeros((2, 16))
    expected[0, [4, 5, 8 + 6]] = [2 / 3, 1 / 3, 1.0]     # a: 2/3, b: 1/3; c: 1/1
    expected[1, [5, 8 + 6, 8 + 7]] = [1.0, 0.5, 0.5]
    np.testing.assert_allclose(tf, expected, rtol=1e-6)
    np.testing.assert_allclose(lengths, [[0.3, 0.1], [0.1, 0.4]], rtol=1e-6)  # tokens / 10


def test_feature_kinds_have_their_own_verified_caches(tiny_data_bin, tmp_path):
    import shutil

    d = str(tmp_path / "bin")
    shutil.copytree(tiny_data_bin, d)
    sv, nspec = F._dict_size(d, "src")
    tv, _ = F._dict_size(d, "tgt")
    x1, p1 = F.load_or_build(d, "train", "src", "tgt", sv, tv, nspec)
    x2, p2 = F.load_or_build(d, "train", "src", "tgt", sv, tv, nspec, kind="tfidf-tf-len")
    assert p1 != p2 and os.path.isfile(p1) and os.path.isfile(F.sidecar_path(p2))
    assert x2.shape == (x1.shape[0], 2 * x1.shape[1] + 2)
    x3, _ = F.load_or_build(d, "train", "src", "tgt", sv, tv, nspec, kind="tfidf-tf-len")
    assert (x3 != x2).nnz == 0                          # read back through the sidecar check
    with open(p2, "r+b") as f:                          # damaged: rebuilt, tfidf cache kept
        f.truncate(100)
    x4, _ = F.load_or_build(d, "train", "src", "tgt", sv, tv, nspec, kind="tfidf-tf-len")
    assert (x4 != x2).nnz == 0 and os.path.isfile(p1)


# -- label-smoothed sentence losses --------------------------------------------------------
def test_label_smoothed_sentence_loss_is_token_mean_of_fairseqs_loss():
    from fairseq.criterions.label_smoothed_cross_entropy import label_smoothed_nll_loss

    torch.manual_seed(0)
    lprobs = torch.log_softmax(torch.randn(2 * 3, 5), -1)
    target = torch.tensor([4, 2, 1, 3, 3, 2])            # pad = 1: sentence 0 has 2 tokens
    got, ntok = sentence_nll(lprobs, target, 1, 2, epsilon=0.1)
    per_tok, _ = label_smoothed_nll_loss(lprobs, target, 0.1, ignore_index=1, reduce=False)
    per_tok = per_tok.view(2, 3)
    assert ntok.tolist() == [2, 3]
    torch.testing.assert_close(got, per_tok.sum(1) / torch.tensor([2.0, 3.0]))
    nll, _ = sentence_nll(lprobs, target, 1, 2)
    assert (got - nll).abs().min() > 1e-3               # not the NLL


# -- fairseq-train -------------------------------------------------------------------------
def test_fairseq_train_with_the_authors_preset_and_resume(tiny_data_bin, tmp_path):
    import shutil

    d = str(tmp_path / "bin")
    shutil.copytree(tiny_data_bin, d)
    save = str(tmp_path / "ck")

    def train(*extra):
        res = run_cli("fairseq_cli.train", train_args(
            d, save, "--task", "translation_efficiency", "--criterion", "sentence_cross_entropy",
            "--instance-selection", "autoassist", "--assist-preset", "authors",
            "--assist-queue-size", "4", "--no-epoch-checkpoints", *extra))
        return res.stdout + res.stderr

    log = train("--max-epoch", "2")
    assert "--assist-preset authors" in log and "assist_mini_steps=4" in log
    assert any(".assist-tfidf-tf-len." in f for f in os.listdir(d))
    cp = torch.load(os.path.join(save, "checkpoint_last.pt"), map_location="cpu",
                    weights_only=False)
    st = cp["extra_state"]["TranslationEfficiencyTask"]["hooks"]["instance_selection"]
    a = st["ranks"][0]["worker"]["selector"]["assistant"]
    sv, _ = F._dict_size(d, "src")
    tv, _ = F._dict_size(d, "tgt")
    assert a["n_features"] == 2 * (sv + tv) + 2 and a["fitted"]
    # the second epoch began a second pass of candidates: T is the first pass's mean loss
    assert a["passes"] >= 1 and np.isfinite(a["pass_threshold"]) and a["pass_threshold"] > 0
    saved = Assistant(a["n_features"], threshold="pass-mean")
    saved.load_state_dict(a)
    log = train("--max-epoch", "3")
    assert f"restored worker 0 state, Assistant {saved.fingerprint()}" in log
    assert "| train | epoch 003" in log


@pytest.mark.parametrize("preset,eps", [("paper", 0.0), ("authors", 0.1)])
def test_the_criterion_reports_the_presets_sentence_loss(tiny_data_bin, tmp_path, preset, eps):
    from fairseq_efficiency.criterions.sentence_cross_entropy import SENTENCE_LOSS
    from tests.criterions.test_sentence_cross_entropy import setup

    task, model, crit, sample = setup(tiny_data_bin, tmp_path, "sentence_cross_entropy",
                                      "--instance-selection", "autoassist",
                                      "--assist-preset", preset)
    assert crit.report_sentence_loss and crit.sentence_loss_smoothing == eps
    _, _, log = crit(model, sample)
    with torch.no_grad():
        lprobs = model.get_normalized_probs(model(**sample["net_input"]), log_probs=True)
    want, _ = sentence_nll(lprobs.view(-1, lprobs.size(-1)), sample["target"].view(-1),
                           task.target_dictionary.pad(), sample["target"].size(0), eps)
    torch.testing.assert_close(log[SENTENCE_LOSS], want)


def test_bad_mini_steps_is_a_one_line_error(tiny_data_bin, tmp_path):
    from tests.helpers import assert_one_line_error

    res = run_cli("fairseq_cli.train", train_args(
        tiny_data_bin, str(tmp_path / "ck"), "--task", "translation_efficiency",
        "--criterion", "sentence_cross_entropy", "--instance-selection", "autoassist",
        "--assist-preset", "authors", "--assist-mini-steps", "-1"), check=False)
    assert_one_line_error(res, "--assist-mini-steps must be >= 0, got -1")


def test_featurize_cli_builds_the_authors_features(tiny_data_bin, tmp_path, capsys):
    import shutil

    d = str(tmp_path / "bin")
    shutil.copytree(tiny_data_bin, d)
    assert F.main([d, "--features", "tfidf-tf-len"]) == 0
    sv, _ = F._dict_size(d, "src")
    tv, _ = F._dict_size(d, "tgt")
    out = capsys.readouterr().out
    assert ".assist-tfidf-tf-len." in out and f"\t{2 * (sv + tv) + 2} features\t" in out
