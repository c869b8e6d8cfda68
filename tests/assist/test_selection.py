"""Selection policies (assist/selection.py): AutoAssist over feature rows, self-paced learning,
dynamic sentence sampling."""
import numpy as np
import pytest

from fairseq_efficiency.assist.assistant import Assistant
from fairseq_efficiency.assist.selection import (AutoAssistSelector, DynamicSamplingSelector,
                                                 SelfPacedSelector)
from tests.assist.test_assistant import toy


def test_autoassist_selector_uses_feature_rows():
    x, loss, hard = toy(800)
    sel = AutoAssistSelector(x, Assistant(x.shape[1], lr=0.2))
    ids = np.arange(800)
    for s in range(0, 800, 40):
        sel.observe(ids[s:s + 40], loss[s:s + 40])
    p = sel.keep_prob(ids)
    assert p[hard].mean() > p[~hard].mean() + 0.3
    assert set(sel.stats()) == {"rho", "T", "assistant_acc"}


def test_autoassist_warmup_keeps_everything_while_the_assistant_learns():
    x, loss, hard = toy(800)
    sel = AutoAssistSelector(x, Assistant(x.shape[1], lr=0.2), warmup_epochs=1)
    ids = np.arange(800)
    sel.start_epoch(1)
    for s in range(0, 800, 40):
        sel.observe(ids[s:s + 40], loss[s:s + 40])
    assert sel.assistant.rho_ > 0.5 and (sel.keep_prob(ids) == 1).all()
    sel.start_epoch(2)
    p = sel.keep_prob(ids)
    assert p[hard].mean() > p[~hard].mean() + 0.3
    resumed = AutoAssistSelector(x, Assistant(x.shape[1], lr=0.2), warmup_epochs=1)
    resumed.load_state_dict(sel.state_dict())  # resumed mid-epoch 2: no warm-up again
    assert np.allclose(resumed.keep_prob(ids), p)


def test_self_paced_pace_grows():
    n = 100
    sel = SelfPacedSelector(n, np.arange(n), start_quantile=0.5, growth=1.5)
    sel.start_epoch(1)
    assert sel.keep_prob(np.arange(n)).min() == 1.0  # no losses yet: everything kept
    sel.observe(np.arange(n), np.arange(n, dtype=np.float32))
    sel.start_epoch(2)
    assert sel.keep_prob(np.arange(n)).sum() == pytest.approx(50, abs=1)
    sel.start_epoch(3)
    assert sel.keep_prob(np.arange(n)).sum() == pytest.approx(75, abs=1)
    sel.start_epoch(4)
    assert sel.keep_prob(np.arange(n)).sum() == n


def test_dynamic_sampling_prefers_declining_losses():
    n = 1000
    sel = DynamicSamplingSelector(n, np.arange(n), sample_rate=0.8, review_share=0.2)
    ids = np.arange(n)
    sel.observe(ids, np.full(n, 4.0))
    # first half: loss still falling fast; second half: converged
    sel.observe(ids, np.where(ids < 500, 2.0, 3.99).astype(np.float32))
    sel.start_epoch(2)
    p = sel.keep_prob(ids)
    assert p[:500].min() == 1.0  # capped
    assert p[500:].max() == pytest.approx(0.8 * 0.2, abs=1e-3)  # review share only
    # unseen instances are always kept
    sel2 = DynamicSamplingSelector(n, ids)
    sel2.start_epoch(2)
    assert sel2.keep_prob(ids).min() == 1.0
