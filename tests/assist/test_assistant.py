"""The Assistant (assist/assistant.py), without fairseq."""
import json
import os

import numpy as np
import pytest
import scipy.sparse as sp

from fairseq_efficiency.assist.assistant import Assistant
from fairseq_efficiency.criterions import sentence_nll


def toy(n=4000, d=50, seed=0):
    """Sparse rows; 'hard' instances (high loss) contain feature 0, easy ones feature 1."""
    rng = np.random.default_rng(seed)
    hard = rng.random(n) < 0.4
    rows, cols = [], []
    for i in range(n):
        f = list(rng.choice(np.arange(2, d), 4, replace=False)) + [0 if hard[i] else 1]
        rows += [i] * len(f)
        cols += f
    x = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(n, d))  # as stored
    loss = np.where(hard, 6.0, 2.0) + rng.normal(0, 0.3, n)
    return x, loss, hard


def test_assistant_learns_separable_labelling():
    x, loss, hard = toy()
    a = Assistant(x.shape[1], lr=0.1, l2=1e-5)
    for s in range(0, 3200, 64):
        a.partial_fit(x[s:s + 64], loss[s:s + 64])
    g = a.predict_proba(x[3200:])[:, 1]
    np.testing.assert_array_equal(a.predict(x[3200:]), (g > 0.5).astype(int))
    assert ((g > 0.5) == hard[3200:]).mean() > 0.97
    assert 3.0 < a.threshold_ < 5.0  # bias-corrected EMA of the mixed losses (~3.6)
    assert a.rho_ > 0.5  # confidence grew with the measured accuracy
    # hard instances are kept, easy ones shrunk (keep prob = 1 - rho + rho*g)
    kp = a.keep_prob(x[3200:])
    assert kp[hard[3200:]].min() > 0.9 and kp[~hard[3200:]].mean() < 1 - 0.8 * a.rho_


def test_rho_gating_nothing_shrunk_before_assistant_is_good():
    x, loss, _ = toy(200)
    a = Assistant(x.shape[1])
    assert a.rho_ == 0.0
    np.testing.assert_array_equal(a.keep_prob(x), np.ones(x.shape[0]))
    a.partial_fit(x[:64], loss[:64])  # first batch: learned from, but no accuracy yet measured
    assert a.rho_ == 0.0
    np.testing.assert_array_equal(a.keep_prob(x), np.ones(x.shape[0]))
    acc = a.partial_fit(x[64:128], loss[64:128]).last_accuracy_
    assert a.rho_ == pytest.approx(0.05 * acc)


def test_accuracy_is_measured_before_learning():
    x, loss, hard = toy(400)
    a = Assistant(x.shape[1], lr=0.5)
    a.partial_fit(x[:64], loss[:64])
    # labels of the next batch with the threshold it will use
    b = 0.99
    m = b * a.loss_ema_ + (1 - b) * loss[64:128].mean()
    z = loss[64:128] > m / (1 - b ** 2)
    expected = ((a.predict_proba(x[64:128])[:, 1] > 0.5) == z).mean()
    assert a.partial_fit(x[64:128], loss[64:128]).last_accuracy_ == pytest.approx(expected)


def test_min_keep_floor():
    x, loss, _ = toy(400)
    a = Assistant(x.shape[1], min_keep=0.3)
    for s in range(0, 400, 50):
        a.partial_fit(x[s:s + 50], loss[s:s + 50])
    a.rho_ = 1.0
    assert a.keep_prob(x).min() >= 0.3


def test_assistant_state_roundtrip_is_exact():
    x, loss, _ = toy(600)
    a = Assistant(x.shape[1], seed=3)
    for s in range(0, 300, 50):
        a.partial_fit(x[s:s + 50], loss[s:s + 50])
    b = Assistant(x.shape[1], seed=3)
    b.load_state_dict(a.state_dict())
    assert b.fingerprint() == a.fingerprint()
    for s in range(300, 600, 50):  # and they keep learning identically
        a.partial_fit(x[s:s + 50], loss[s:s + 50])
        b.partial_fit(x[s:s + 50], loss[s:s + 50])
        assert a.last_accuracy_ == b.last_accuracy_
    np.testing.assert_array_equal(a.predict_proba(x), b.predict_proba(x))
    with pytest.raises(ValueError, match="features"):
        Assistant(x.shape[1] + 1).load_state_dict(a.state_dict())


def test_scikit_learn_estimator_conventions():
    from sklearn.base import clone

    a = Assistant(10, lr=0.3, threshold="pass-mean", seed=2)
    assert vars(a) == a.get_params()                    # __init__ stores the parameters only
    assert a.keep_prob(np.ones((3, 10))).tolist() == [1.0] * 3 and np.isnan(a.threshold_)
    x, loss, _ = toy(200, d=10)
    assert a.partial_fit(x[:50], loss[:50]) is a
    learned = sorted(set(vars(a)) - set(a.get_params()))
    assert {"clf_", "rho_", "loss_ema_", "steps_"} <= set(learned)
    assert all(k.endswith("_") for k in learned)
    assert a.get_params() == dict(n_features=10, lr=0.3, l2=1e-4, threshold_decay=0.99,
                                  confidence_decay=0.95, min_keep=0.0, seed=2,
                                  threshold="pass-mean", floor_on="keep", mini_steps=0)
    c = clone(a)
    assert c.get_params() == a.get_params() and not c.fitted and c.steps_ == 0
    p = a.predict_proba(x)
    assert p.shape == (200, 2) and np.allclose(p.sum(1), 1) and ((0 <= p) & (p <= 1)).all()
    np.testing.assert_array_equal(a.predict(x), p.argmax(1))
    with pytest.raises(ValueError, match="n_features"):
        Assistant(0).partial_fit(x[:5], loss[:5])
    with pytest.raises(ValueError, match="floor_on"):
        Assistant(10, floor_on="bogus").partial_fit(x[:5], loss[:5])


def test_states_written_before_the_scikit_learn_names_still_load():
    """``data/assistant_state_v1.json``: states (JSON-converted) written by the Assistant whose
    learned attributes had no trailing underscore, with its fingerprints and predictions."""
    with open(os.path.join(os.path.dirname(__file__), "data", "assistant_state_v1.json")) as f:
        cases = json.load(f)
    assert set(cases) == {"paper", "authors"}
    for case in cases.values():
        st, x = case["state"], np.array(case["features"])
        a = Assistant(st["n_features"], **case["options"])
        a.load_state_dict(st)
        assert a.fingerprint() == case["fingerprint"]
        np.testing.assert_allclose(a.predict_proba(x)[:, 1], case["g"], rtol=1e-12)
        np.testing.assert_allclose(a.keep_prob(x), case["keep"], rtol=1e-12)
        assert a.threshold_ == pytest.approx(case["threshold"])
        assert set(a.state_dict()) == set(st)           # and it writes the same format
        assert a.state_dict()["rng"] == st["rng"]


def test_sentence_losses_equal_manual_computation():
    torch = pytest.importorskip("torch")
    g = torch.Generator().manual_seed(0)
    bsz, tlen, vocab, pad = 3, 5, 7, 1
    lprobs = torch.log_softmax(torch.randn(bsz * tlen, vocab, generator=g), -1)
    target = torch.randint(2, vocab, (bsz, tlen), generator=g)
    target[0, 3:] = pad
    target[2, 1:] = pad
    loss, ntok = sentence_nll(lprobs, target.view(-1), pad, bsz)
    lp = lprobs.view(bsz, tlen, vocab)
    for b in range(bsz):
        toks = [-lp[b, t, target[b, t]].item() for t in range(tlen) if target[b, t] != pad]
        assert ntok[b].item() == len(toks)
        assert loss[b].item() == pytest.approx(sum(toks) / len(toks), rel=1e-6)
