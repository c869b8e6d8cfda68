"""The training hook in-process: events, LR scaling, state round trip."""
import torch

from fairseq_efficiency.hooks import StepOutput
from fairseq_efficiency.pruning.hook import PruningConfig, PruningHook
from tests.helpers import fairseq_best_state
from tests.pruning.test_masks import Toy, loss_of


class FakeOptimizer:
    """A fairseq-like optimizer wrapper around torch SGD that records the LR of each step."""

    def __init__(self, params, lr):
        self.optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9)
        self.seen = []

    def get_lr(self):
        return self.optimizer.param_groups[0]["lr"]

    def set_lr(self, lr):
        for g in self.optimizer.param_groups:
            g["lr"] = lr

    def step(self):
        self.seen.append(self.get_lr())
        self.optimizer.step()


def run(hook, model, opt, updates, start=0):
    hook.on_epoch_start(1, model)  # fairseq starts every (resumed) epoch with it
    for u in range(start, start + updates):
        hook.before_train_step(None, model, u)
        opt.optimizer.zero_grad()
        loss = loss_of(model, u)
        loss.backward()
        hook.after_train_step(StepOutput(sample=None, ids=None, sentence_loss=None, model=model,
                                         loss=loss, sample_size=1, update_num=u,
                                         ignore_grad=False))
        hook.before_optimizer_step(model, opt, u)
        opt.step()
        hook.after_optimizer_step(model, opt, u)


def test_gradual_events_lr_scale_and_state_roundtrip():
    torch.manual_seed(0)
    model = Toy()
    cfg = PruningConfig(prune_ratio=0.75, prune_steps=3, prune_at_update=2, prune_end_update=6,
                        prune_lr_scale=0.5)
    hook = PruningHook(cfg)
    hook.on_model_built(model)
    opt = FakeOptimizer(model.parameters(), lr=0.1)
    run(hook, model, opt, 3)
    assert hook.events_done == 1
    first = hook.masks.sparsity()
    assert abs(first - 0.75 * (1 - (2 / 3) ** 3)) < 1e-3
    assert opt.seen == [0.1, 0.1, 0.05]  # scaled from the first event on, base LR restored
    assert opt.get_lr() == 0.1
    run(hook, model, opt, 5, start=3)
    assert hook.events_done == 3 and abs(hook.masks.sparsity() - 0.75) < 1e-3
    params = dict(model.named_parameters())
    for n, m in hook.masks.masks.items():
        assert torch.count_nonzero(params[n][~m]) == 0
    # resume in a fresh hook: masks and event counter come back, no event is repeated
    hook2 = PruningHook(cfg)
    hook2.load_state_dict(hook.state_dict())
    assert hook2.events_done == 3
    assert all(torch.equal(hook.masks.masks[n], hook2.masks.masks[n]) for n in hook.masks.masks)
    run(hook2, model, opt, 2, start=8)
    assert hook2.events_done == 3 and abs(hook2.masks.sparsity() - 0.75) < 1e-3


def test_resume_past_several_events_jumps_to_latest_target():
    torch.manual_seed(0)
    model = Toy()
    hook = PruningHook(PruningConfig(prune_ratio=0.6, prune_steps=4, prune_at_update=0,
                                     prune_end_update=30))
    hook.on_model_built(model)
    opt = FakeOptimizer(model.parameters(), lr=0.1)
    run(hook, model, opt, 1, start=25)  # events at 0, 10, 20 are due: one event, 3rd target
    assert hook.events_done == 3
    assert abs(hook.masks.sparsity() - 0.6 * (1 - (1 / 4) ** 3)) < 1e-3


def test_idle_without_flags_or_masks():
    model = Toy()
    hook = PruningHook(PruningConfig())
    hook.on_model_built(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = FakeOptimizer(model.parameters(), lr=0.0)
    run(hook, model, opt, 2)
    assert hook.masks is None and hook.state_dict() == {}
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


def test_event_restarts_best_checkpoint_and_patience(monkeypatch):
    """After an event, fairseq's best loss (checkpoint_best.pt, --patience) is forgotten."""
    from types import SimpleNamespace

    with fairseq_best_state() as (save, stop):
        _check_restart(monkeypatch, SimpleNamespace(save_checkpoint=save), stop)


def _check_restart(monkeypatch, checkpoint_utils, stop):
    import sys
    import types

    checkpoint_utils.save_checkpoint.best = 0.5
    stop.best, stop.num_runs = 0.5, 3
    # under ``python -m fairseq_cli.train`` the running copy is ``__main__``'s
    main = types.ModuleType("__main__")
    main_stop = types.FunctionType(stop.__code__, {})
    main_stop.best, main_stop.num_runs = 0.5, 3
    main.should_stop_early = main_stop
    monkeypatch.setitem(sys.modules, "__main__", main)
    torch.manual_seed(0)
    model = Toy()
    hook = PruningHook(PruningConfig(prune_ratio=0.5, prune_at_update=1))
    hook.on_model_built(model)
    opt = FakeOptimizer(model.parameters(), lr=0.1)
    run(hook, model, opt, 1)  # no event yet: nothing forgotten
    assert checkpoint_utils.save_checkpoint.best == 0.5 and stop.num_runs == 3
    run(hook, model, opt, 1, start=1)
    assert hook.events_done == 1
    assert not hasattr(checkpoint_utils.save_checkpoint, "best")
    for fn in (stop, main_stop):
        assert not hasattr(fn, "best") and not hasattr(fn, "num_runs")
