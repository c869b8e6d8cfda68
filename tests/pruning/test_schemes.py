"""Pure-torch tests of the pruning schemes, masks and schedule (no fairseq)."""
import math

import pytest
import torch

from fairseq_efficiency.pruning.masks import MaskSet, pack_bits, unpack_bits
from fairseq_efficiency.pruning.schedule import pruning_schedule
from fairseq_efficiency.pruning.schemes import compute_masks


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


@pytest.mark.parametrize("numel", [1, 7, 8, 9, 1000, 1001])
def test_bit_packing_roundtrip(numel):
    m = torch.rand(numel, generator=torch.Generator().manual_seed(numel)) > 0.3
    packed = pack_bits(m)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(numel / 8)
    assert torch.equal(unpack_bits(packed, numel), m)
    ms = MaskSet({"w": m.reshape(-1, 1)})
    assert torch.equal(MaskSet.from_state_dict(ms.state_dict()).masks["w"], ms.masks["w"])


def test_cubic_schedule_reaches_target_with_absolute_fractions():
    sched = pruning_schedule(0.8, at_update=100, steps=4, end_update=400)
    assert [u for u, _ in sched] == [100, 200, 300, 400]
    fr = [r for _, r in sched]
    assert fr == pytest.approx([0.8 * (1 - (1 - j / 4) ** 3) for j in range(1, 5)])
    assert fr[-1] == pytest.approx(0.8) and all(a < b for a, b in zip(fr, fr[1:]))
    assert pruning_schedule(0.5, 7) == [(7, 0.5)]
    with pytest.raises(ValueError, match="--prune-end-update"):
        pruning_schedule(0.5, 10, steps=3, end_update=10)
