"""The retraining recipe (See et al. 2016, sec. 3.4): schedule update by update, hook wiring."""
import math
from types import SimpleNamespace

import pytest
import torch

from fairseq_efficiency.pruning.hook import PruningConfig, PruningHook
from fairseq_efficiency.pruning.retrain import RetrainSchedule, Retraining
from tests.pruning.test_hook import FakeOptimizer, run
from tests.pruning.test_masks import Toy


def paper_lr(epoch):
    """The paper's words: 0.5, 4 epochs, halved every half epoch after 2 epochs."""
    lr = 0.5
    for boundary in (2.0, 2.5, 3.0, 3.5):
        if epoch >= boundary:
            lr /= 2
    return lr


def test_schedule_matches_the_paper_update_by_update():
    per_epoch = 20  # 4 epochs of 20 updates: budget 80, original lr 1.0
    sched = RetrainSchedule(budget=4 * per_epoch, lr=0.5 * 1.0)
    got = [sched.lr_at(t) for t in range(6 * per_epoch)]
    assert got == [paper_lr(min(t / per_epoch, 4.0)) for t in range(6 * per_epoch)]
    assert got[0] == 0.5 and got[39] == 0.5 and got[40] == 0.25 and got[79] == 0.5 / 16
    assert got[-1] == 0.5 / 16  # the last value holds after the budget


@pytest.mark.parametrize("budget", [1, 2, 3, 7, 10, 13, 1000, 1001])
def test_schedule_any_budget_halves_at_its_eighths(budget):
    sched = RetrainSchedule(budget=budget, lr=0.3)
    for t in range(budget + 3):
        n = sum(1 for j in range(4) if t >= budget / 2 + j * budget / 8)
        assert sched.lr_at(t) == pytest.approx(0.3 * 0.5 ** n), t
    flat = RetrainSchedule(budget=budget, lr=0.3, decay="none")
    assert {flat.lr_at(t) for t in range(budget + 3)} == {0.3}


def test_budget_and_bad_values():
    r = Retraining(fraction=1 / 3)
    r.trained_updates = 12000
    assert r.budget() == 4000
    assert Retraining(fraction=0.5, updates=7).budget() == 7
    with pytest.raises(ValueError, match="--prune-retrain-updates"):
        Retraining(fraction=0.5).budget()  # length of the original training unknown
    for kw, msg in [(dict(fraction=-1), "fraction"), (dict(lr_scale=0), "lr-scale"),
                    (dict(decay="cosine"), "decay"), (dict(updates=-2), "updates")]:
        with pytest.raises(ValueError, match=msg):
            Retraining(**kw)


class CfgOptimizer(FakeOptimizer):
    """Like fairseq's wrappers: the configured --lr under ``cfg.lr``."""

    def __init__(self, params, lr, configured):
        super().__init__(params, lr)
        self.cfg = SimpleNamespace(lr=[configured])


def test_hook_applies_the_recipe_after_the_pruning_event_and_resumes_it():
    torch.manual_seed(0)
    model = Toy()
    cfg = PruningConfig(prune_ratio=0.6, prune_at_update=24, prune_retrain_fraction=1 / 3)
    hook = PruningHook(cfg)
    hook.on_model_built(model)
    # the scheduler's current LR (0.01) differs from the configured peak --lr (0.2)
    opt = CfgOptimizer(model.parameters(), lr=0.01, configured=0.2)
    run(hook, model, opt, 30)
    budget = 8  # 1/3 of the 24 updates before pruning
    expected = [0.1 * 0.5 ** sum(1 for j in range(4) if t >= budget / 2 + j * budget / 8)
                for t in range(6)]
    assert opt.seen[:24] == [0.01] * 24  # the scheduler's LR until the pruning event
    assert opt.seen[24:] == pytest.approx(expected)  # restart at 0.5 x 0.2, then halvings
    assert opt.get_lr() == 0.01  # the LR scheduler keeps owning the base LR
    state = hook.state_dict()
    assert state["trained_updates"] == 24 and state["retrain_start"] == 24

    # resume mid-way: the schedule continues where it was
    hook2 = PruningHook(cfg)
    hook2.load_state_dict(state)
    opt2 = CfgOptimizer(model.parameters(), lr=0.01, configured=0.2)
    run(hook2, model, opt2, 4, start=30)
    assert hook2.events_done == 1
    assert opt2.seen == pytest.approx([0.1 / 8, 0.1 / 16, 0.1 / 16, 0.1 / 16])
    params = dict(model.named_parameters())
    for n, m in hook2.masks.masks.items():
        assert torch.count_nonzero(params[n][~m]) == 0


def test_hook_recipe_from_an_offline_pruned_checkpoint_state():
    torch.manual_seed(0)
    model = Toy()
    donor = PruningHook(PruningConfig(prune_ratio=0.5))
    donor.prune(model, 0.5)
    offline = {"version": 1, "masks": donor.masks.state_dict(), "events_done": 0,
               "scheme": "class-blind", "trained_updates": 40}
    hook = PruningHook(PruningConfig(prune_retrain_fraction=0.25))  # budget 10 from update 0
    hook.load_state_dict(offline)
    opt = CfgOptimizer(model.parameters(), lr=0.01, configured=0.02)
    run(hook, model, opt, 11)
    assert opt.seen == pytest.approx([0.01] * 5 + [0.005, 0.005, 0.0025, 0.00125, 0.000625,
                                                   0.000625])
    assert hook.state_dict()["retrain_start"] == 0


def test_hook_recipe_needs_masks_and_excludes_the_plain_lr_scale():
    with pytest.raises(ValueError, match="--prune-retrain-lr-scale"):
        PruningHook(PruningConfig(prune_ratio=0.5, prune_at_update=10, prune_lr_scale=0.5,
                                  prune_retrain_fraction=0.3))
    with pytest.raises(ValueError, match="--prune-at-update is 0"):
        PruningHook(PruningConfig(prune_ratio=0.5, prune_retrain_fraction=0.3))
    hook = PruningHook(PruningConfig(prune_retrain_updates=10))
    with pytest.raises(ValueError, match="no pruning masks"):
        run(hook, Toy(), FakeOptimizer(Toy().parameters(), lr=0.1), 1)
    assert math.isclose(PruningConfig().prune_retrain_lr_scale, 0.5)


def test_gradual_pruning_retrains_after_the_last_event():
    torch.manual_seed(0)
    model = Toy()
    cfg = PruningConfig(prune_ratio=0.6, prune_steps=3, prune_at_update=10, prune_end_update=20,
                        prune_retrain_fraction=0.5)
    hook = PruningHook(cfg)
    opt = CfgOptimizer(model.parameters(), lr=0.01, configured=0.04)
    run(hook, model, opt, 26)
    assert hook.events_done == 3
    # scheduler LR through the events, then budget 5 (half of the 10 updates before pruning
    # began) from the last event at update 20: halvings at 2.5, 3.125, 3.75, 4.375
    assert opt.seen[:20] == [0.01] * 20
    assert opt.seen[20:] == pytest.approx([0.02, 0.02, 0.02, 0.01, 0.0025, 0.00125])


def test_a_ratio_that_prunes_nothing_gives_the_dense_control_the_same_recipe():
    """benchmarks/specs/pruning.toml's control: ``--prune-ratio 1e-9`` prunes no weight
    (round(1e-9 * N) = 0) and retrains with the same learning rates as the pruned runs."""
    rates = {}
    for ratio in (1e-9, 0.8):
        torch.manual_seed(0)
        model = Toy()
        dense = {n: p.detach().clone() for n, p in model.named_parameters()}
        hook = PruningHook(PruningConfig(prune_ratio=ratio, prune_at_update=0,
                                         prune_retrain_updates=8))
        hook.on_model_built(model)
        opt = CfgOptimizer(model.parameters(), lr=0.2, configured=0.2)
        hook.before_train_step(None, model, 0)
        if ratio < 1e-6:
            assert hook.masks.sparsity() == 0.0
            params = dict(model.named_parameters())
            assert all(torch.equal(params[n].detach(), dense[n]) for n in dense)
        run(hook, model, opt, 10)
        rates[ratio] = opt.seen
    assert rates[1e-9] == rates[0.8] == pytest.approx([0.1] * 4 + [0.05, 0.025, 0.0125,
                                                                  0.00625, 0.00625, 0.00625])
