"""Pure-torch tests of the pruning schemes (no fairseq)."""
import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from fairseq_efficiency.pruning.schemes import (LAMP, SCHEMES, ClassBlind, ClassDistribution,
                                                ClassUniform, compute_masks, make_scheme)


def toy_classes(seed=0):
    """Three classes with very different magnitudes and shapes of distribution."""
    g = torch.Generator().manual_seed(seed)
    return {
        "small": {"a.weight": torch.randn(30, 20, generator=g) * 0.01},
        "big": {"b.weight": torch.randn(40, 10, generator=g) * 1.0,
                "b2.weight": torch.randn(10, 10, generator=g) * 1.0},
        "uniform": {"c.weight": (torch.rand(25, 8, generator=g) - 0.5) * 0.2},
    }


def pruned_abs(classes, masks):
    return torch.cat([t.abs()[~masks[n]] for ts in classes.values() for n, t in ts.items()])


def kept_abs(classes, masks):
    return torch.cat([t.abs()[masks[n]] for ts in classes.values() for n, t in ts.items()])


def n_pruned(masks, names=None):
    return sum(int((~m).sum()) for n, m in masks.items() if names is None or n in names)


@pytest.mark.parametrize("ratio", [0.0, 0.4, 0.8, 0.9])
def test_class_blind_one_global_threshold(ratio):
    classes = toy_classes()
    total = sum(t.numel() for ts in classes.values() for t in ts.values())
    res = compute_masks(classes, "class-blind", ratio)
    assert n_pruned(res.masks) == round(ratio * total)
    if ratio > 0:
        # every pruned weight is smaller than every kept one, whatever its class
        assert pruned_abs(classes, res.masks).max() < kept_abs(classes, res.masks).min()
        assert len(set(res.thresholds.values())) == 1
        # class-blind prunes the small-magnitude class hardest
        frac = {c: n_pruned(res.masks, ts) / sum(t.numel() for t in ts.values())
                for c, ts in classes.items()}
        assert frac["small"] > frac["big"]


@pytest.mark.parametrize("ratio", [0.4, 0.8])
def test_class_uniform_same_fraction_per_class(ratio):
    classes = toy_classes()
    res = compute_masks(classes, "class-uniform", ratio)
    for c, ts in classes.items():
        n_c = sum(t.numel() for t in ts.values())
        assert n_pruned(res.masks, ts) == round(ratio * n_c)
        sub = {c: ts}
        assert pruned_abs(sub, res.masks).max() < kept_abs(sub, res.masks).min()


@pytest.mark.parametrize("ratio", [0.3, 0.8])
def test_class_distribution_lambda_sigma_rule(ratio):
    classes = toy_classes()
    total = sum(t.numel() for ts in classes.values() for t in ts.values())
    res = compute_masks(classes, "class-distribution", ratio)
    assert n_pruned(res.masks) == round(ratio * total)
    sigmas = {c: torch.cat([t.reshape(-1) for t in ts.values()]).std(correction=0).item()
              for c, ts in classes.items()}
    first = next(iter(classes))
    lam = res.thresholds[first] / sigmas[first]
    for c, ts in classes.items():
        sigma = sigmas[c]
        for n, t in ts.items():
            pruned = ~res.masks[n]
            # pruned <=> |w| <= λ σ_c  (one universal λ)
            assert torch.equal(pruned, t.abs() <= lam * sigma * (1 + 1e-6)) or \
                torch.equal(pruned, t.abs() <= lam * sigma)
        assert res.thresholds[c] == pytest.approx(lam * sigma)
    # uniform-distributed class vs gaussian classes: fractions differ from class-uniform's
    frac_u = n_pruned(res.masks, classes["uniform"]) / 200
    assert abs(frac_u - ratio) > 0.02


def test_masks_are_monotone_across_events():
    classes = toy_classes()
    first = compute_masks(classes, "class-blind", 0.5).masks
    zeroed = {c: {n: t * first[n] for n, t in ts.items()} for c, ts in classes.items()}
    second = compute_masks(zeroed, "class-blind", 0.8, prev=first).masks
    for n in first:
        assert not (second[n] & ~first[n]).any()  # nothing revived
    assert n_pruned(second) == round(0.8 * sum(m.numel() for m in first.values()))


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5])
def test_ratio_outside_unit_interval_rejected(bad):
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        compute_masks(toy_classes(), "class-blind", bad)


def test_unknown_scheme_rejected():
    with pytest.raises(ValueError, match="unknown pruning scheme 'random'"):
        compute_masks(toy_classes(), "random", 0.5)


# -- compute_mask(t, default_mask) of each scheme object: one tensor as a class of its own --

def test_class_blind_compute_mask_counts_earlier_pruning_in_the_budget():
    t = torch.tensor([[0.3, -0.1], [2.0, -0.05]])
    assert ClassBlind(0.5).compute_mask(t, torch.ones_like(t)).tolist() == [[1, 0], [1, 0]]
    # 2.0 was pruned before: it counts as a zero and stays pruned; k = 2 takes it and -0.05
    before = torch.tensor([[True, True], [False, True]])
    assert ClassBlind(0.5).compute_mask(t, before).tolist() == [[True, True], [False, False]]
    assert ClassBlind(0.0).compute_mask(t, before).tolist() == before.tolist()


def test_class_uniform_compute_mask_prunes_ties_at_the_threshold():
    t = torch.tensor([0.0, 0.0, 0.0, 1.0, -2.0, 3.0])
    # k = 1, the threshold is 0: all three zeros go
    assert ClassUniform(1 / 6).compute_mask(t, torch.ones(6)).tolist() == [0, 0, 0, 1, 1, 1]
    assert ClassUniform(0.5).compute_mask(t, torch.ones(6)).tolist() == [0, 0, 0, 1, 1, 1]
    assert ClassUniform(4 / 6).compute_mask(t, torch.ones(6)).tolist() == [0, 0, 0, 0, 1, 1]


def test_class_distribution_scores_are_magnitudes_over_the_surviving_std():
    w = torch.tensor([1.0, -1.0, 3.0, -3.0])
    mags = {"w": w.abs()}
    scores, unit = ClassDistribution(0.5).importance({"w": w}, mags, False)
    assert unit == pytest.approx(5 ** 0.5)  # population std of (1, -1, 3, -3)
    assert torch.allclose(scores["w"], w.abs() / 5 ** 0.5)
    # after an earlier event, sigma is over the surviving weights only
    gone = {"w": torch.tensor([0.0, 0.0, 3.0, 3.0])}
    scores, unit = ClassDistribution(0.5).importance({"w": w * (gone["w"] > 0)}, gone, True)
    assert unit == pytest.approx(3.0) and torch.allclose(scores["w"], gone["w"] / 3)
    # within one tensor the ranking is the magnitude ranking; the report shows lambda * sigma
    t = torch.tensor([0.5, -4.0, 2.0, 1.0])
    assert ClassDistribution(0.5).compute_mask(t, torch.ones(4)).tolist() == [0, 1, 1, 0]
    res = ClassDistribution(0.5).compute_masks({"c": {"t": t}})
    assert res.thresholds["c"] == pytest.approx(1.0)  # the largest pruned |w|


def test_lamp_compute_mask_never_empties_the_tensor():
    t = torch.tensor([3.0, -1.0, 2.0, 0.5])  # LAMP scores 1, 1/14, 4/13, 1/57
    assert LAMP(0.5).compute_mask(t, torch.ones(4)).tolist() == [1, 0, 1, 0]
    # k = 4 puts the threshold at the top score 1: LAMP keeps the largest, class-blind nothing
    assert LAMP(0.9).compute_mask(t, torch.ones(4)).tolist() == [1, 0, 0, 0]
    assert ClassBlind(0.9).compute_mask(t, torch.ones(4)).tolist() == [0, 0, 0, 0]
    # an all-zero tensor stays pruned
    assert LAMP(0.9).compute_mask(torch.zeros(3), torch.ones(3)).tolist() == [0, 0, 0]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_scheme_objects_plug_into_torch_prune(scheme):
    """torch.nn.utils.prune drives the objects: ``apply`` on one tensor, ``global_unstructured``
    over several (one flat class, so one threshold for every scheme but LAMP)."""
    cls = type(make_scheme(scheme, 0.5))
    torch.manual_seed(0)
    lin = nn.Linear(6, 5)
    w = lin.weight.detach().clone()
    cls.apply(lin, "weight", amount=0.6)
    assert torch.equal(lin.weight_mask, cls(0.6).compute_mask(w, torch.ones_like(w)))
    assert int((lin.weight == 0).sum()) == 18
    prune.remove(lin, "weight")
    if scheme == "lamp":
        return
    a, b = nn.Linear(8, 4), nn.Linear(4, 3)
    w = {"a": a.weight.detach().clone(), "b": b.weight.detach().clone()}
    prune.global_unstructured([(a, "weight"), (b, "weight")], pruning_method=cls, amount=0.7)
    ours = ClassBlind(0.7).compute_masks({"all": w}).masks
    assert torch.equal(a.weight_mask.bool(), ours["a"])
    assert torch.equal(b.weight_mask.bool(), ours["b"])


def test_make_scheme_validates_like_the_flags():
    assert isinstance(make_scheme("lamp", 0.8, 0.9), LAMP)
    assert repr(make_scheme("class-blind", 0.5)) == "ClassBlind(amount=0.5, max_class_ratio=1.0)"
    with pytest.raises(ValueError, match="unknown pruning scheme"):
        make_scheme("random", 0.5)
    with pytest.raises(ValueError, match="below the pruning ratio"):
        ClassDistribution(0.8, max_class_ratio=0.5)
