"""LAMP scores, the per-class cap and the layer-collapse warning (pure torch + the hook)."""
import logging

import pytest
import torch

from fairseq_efficiency.pruning.hook import PruningConfig, PruningHook
from fairseq_efficiency.pruning.report import collapse_warnings, format_class_table
from fairseq_efficiency.pruning.schemes import compute_masks, lamp_scores
from tests.pruning.test_hook import FakeOptimizer, run
from tests.pruning.test_masks import Toy
from tests.pruning.test_schemes import kept_abs, n_pruned, pruned_abs, toy_classes


def frac(masks, ts):
    return n_pruned(masks, ts) / sum(t.numel() for t in ts.values())


def test_lamp_scores_hand_computed():
    # squares 9, 1, 4, 0.25; ascending 0.25, 1, 4, 9; suffix sums 14.25, 14, 13, 9
    w = torch.tensor([[3.0, -1.0], [2.0, 0.5]])
    expected = torch.tensor([[9 / 9, 1 / 14], [4 / 13, 0.25 / 14.25]])
    assert torch.allclose(lamp_scores(w), expected)
    assert torch.equal(lamp_scores(torch.zeros(3)), torch.zeros(3))


def test_lamp_keeps_the_small_layer_class_blind_empties():
    classes = {"a": {"a.w": torch.tensor([3.0, -1.0, 2.0, 0.5])},
               "b": {"b.w": torch.tensor([0.1, 0.2])}}
    # class-blind at 50% removes 0.1, 0.2, 0.5: class b is emptied
    blind = compute_masks(classes, "class-blind", 0.5).masks
    assert not blind["b.w"].any()
    # LAMP scores: a = [1, 1/14, 4/13, 1/57], b = [0.2, 1]: the 3 lowest are 1/57, 1/14, 0.2
    lamp = compute_masks(classes, "lamp", 0.5)
    assert lamp.masks["a.w"].tolist() == [True, False, True, False]
    assert lamp.masks["b.w"].tolist() == [False, True]
    assert lamp.thresholds == {"a": 1.0, "b": pytest.approx(0.1)}  # largest pruned |w|
    # next: 4/13 goes; the two scores of 1 never do
    assert compute_masks(classes, "lamp", 4 / 6).masks["a.w"].tolist() == [True, False, False,
                                                                              False]
    high = compute_masks(classes, "lamp", 0.95).masks  # the threshold reaches 1
    assert high["a.w"].tolist() == [True, False, False, False]
    assert high["b.w"].tolist() == [False, True]


@pytest.mark.parametrize("ratio", [0.5, 0.9, 0.99])
def test_lamp_never_empties_a_tensor_and_is_monotone(ratio):
    classes = toy_classes()
    res = compute_masks(classes, "lamp", ratio)
    total = sum(m.numel() for m in res.masks.values())
    assert all(m.any() for m in res.masks.values())
    assert abs(n_pruned(res.masks) - round(ratio * total)) <= len(res.masks)
    for ts in classes.values():  # within a tensor, LAMP keeps the largest magnitudes
        for n, t in ts.items():
            sub = {"c": {n: t}}
            if (~res.masks[n]).any():
                assert pruned_abs(sub, res.masks).max() <= kept_abs(sub, res.masks).min()
    zeroed = {c: {n: t * res.masks[n] for n, t in ts.items()} for c, ts in classes.items()}
    later = compute_masks(zeroed, "lamp", min(ratio + 0.005, 0.995), prev=res.masks).masks
    assert all(not (later[n] & ~res.masks[n]).any() for n in later)


@pytest.mark.parametrize("scheme", ["class-blind", "class-distribution", "lamp"])
def test_class_cap_holds_and_the_total_is_still_met(scheme):
    classes = toy_classes()
    total = sum(t.numel() for ts in classes.values() for t in ts.values())
    uncapped = compute_masks(classes, scheme, 0.8).masks
    worst = max(frac(uncapped, ts) for ts in classes.values())
    assert worst > 0.81  # a global threshold over-prunes some class of this toy
    cap = (0.8 + worst) / 2
    res = compute_masks(classes, scheme, 0.8, max_class_ratio=cap)
    assert res.capped
    if scheme == "class-blind":
        assert worst == 1.0  # the collapse the cap prevents
    for c, ts in classes.items():
        n_c = sum(t.numel() for t in ts.values())
        assert frac(res.masks, ts) <= cap + 1e-9, c
        if c in res.capped:  # exactly at the cap, the lowest scores of the class
            assert n_pruned(res.masks, ts) == int(cap * n_c)
            if scheme != "lamp":
                sub = {c: ts}
                assert pruned_abs(sub, res.masks).max() <= kept_abs(sub, res.masks).min()
    # the rest of the budget went to the other classes
    assert n_pruned(res.masks) == pytest.approx(round(0.8 * total), abs=len(res.masks))
    if scheme == "class-blind":  # the classes left free share one magnitude threshold
        free = {c: ts for c, ts in classes.items() if c not in res.capped}
        assert pruned_abs(free, res.masks).max() < kept_abs(free, res.masks).min()


def test_class_cap_below_ratio_is_rejected():
    with pytest.raises(ValueError, match="below the pruning ratio"):
        compute_masks(toy_classes(), "class-blind", 0.8, max_class_ratio=0.7)
    with pytest.raises(ValueError, match=r"must be in \(0, 1\]"):
        compute_masks(toy_classes(), "lamp", 0.5, max_class_ratio=0.0)


def test_collapse_warning_in_table_and_log(caplog):
    classes = toy_classes()
    names = {c: list(ts) for c, ts in classes.items()}
    masks = compute_masks(classes, "class-blind", 0.8).masks
    lines = collapse_warnings(names, masks)
    assert len(lines) == 2 and lines[0].startswith("class small lost 100.0%")
    table = format_class_table(names, masks)
    assert [r.split()[0] for r in table.splitlines() if r.endswith("!")] == ["small", "uniform"]

    # the training hook logs the warning at its pruning event, and not when capped
    for cap, warned in ((1.0, True), (0.9, False)):
        torch.manual_seed(0)
        model = Toy()
        with torch.no_grad():
            model.encoder.embed_tokens.weight.mul_(0.001)  # a class of tiny weights
        hook = PruningHook(PruningConfig(prune_ratio=0.7, prune_scheme="class-blind", prune_at_update=1,
                                         prune_max_class_ratio=cap))
        hook.on_model_built(model)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="fairseq_efficiency.pruning.hook"):
            run(hook, model, FakeOptimizer(model.parameters(), lr=0.1), 2)
        msgs = [r.getMessage() for r in caplog.records if "layer collapse" in r.getMessage()]
        assert bool(msgs) == warned, (cap, msgs)
