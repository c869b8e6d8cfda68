"""The hook protocol: one rule for restored state, refusals of techniques that cannot run
together, fairseq's optimizer wrappers unwrapped."""
import pytest
import torch

from fairseq_efficiency import techniques
from fairseq_efficiency.errors import PluginConfigError
from fairseq_efficiency.hooks import EfficiencyHook, HookList, torch_optimizer
from tests.test_techniques import ASSIST, MESIMP, PARALLEL, PRUNING, parse


class Late(EfficiencyHook):
    """A hook whose state restores something built only at ``on_model_built``."""

    name = "late"

    def __init__(self):
        self.model, self.restored = None, []

    def on_model_built(self, model):
        self.model = model

    def ready_for_state(self):
        return self.model is not None

    def load_state_dict(self, state):
        assert self.model is not None
        self.restored.append(state)


class Early(EfficiencyHook):
    name = "early"

    def __init__(self):
        self.restored = []

    def load_state_dict(self, state):
        self.restored.append(state)


def test_restored_state_is_handed_over_once_the_hook_is_ready():
    late, early = Late(), Early()
    hooks = HookList([late, early])
    hooks.load_state_dict({"late": {"n": 1}, "early": {"n": 2}, "gone": {"n": 3}})
    assert early.restored == [{"n": 2}] and late.restored == []
    hooks.call("on_epoch_start", 1, None)  # not ready yet: kept
    assert late.restored == []
    hooks.call("on_model_built", "model")
    assert late.restored == [{"n": 1}]
    hooks.call("on_model_built", "model")  # handed over once
    assert late.restored == [{"n": 1}] and early.restored == [{"n": 2}]


def test_state_of_an_iterator_owner_follows_the_iterator():
    class Owner(Late):
        name = "owner"

        def train_batch_iterator(self, task, dataset, **kwargs):
            self.model = "iterator"
            return self.model

    owner = Owner()
    hooks = HookList([owner])
    hooks.load_state_dict({"owner": {"n": 1}})
    assert owner.restored == []
    assert hooks.train_batch_iterator(None, None) == "iterator"
    assert owner.restored == [{"n": 1}]


def test_pruning_masks_and_mesimp_are_refused_together():
    with pytest.raises(PluginConfigError, match="pruning masks need fixed matrix shapes, which "
                                                r"meSimp \(--mesimp-interval\) changes"):
        HookList(techniques.build_hooks(parse(*PRUNING, *MESIMP)))
    # a pruning hook that drops the restored masks keeps nothing fixed
    pruning = techniques.build_restoring_hooks(parse("--prune-drop-masks"), ["pruning"])
    mesimp = techniques.build_hooks(parse(*MESIMP))
    assert len(HookList(pruning + mesimp)) == 2
    # nor may a restored checkpoint's masks join meSimp later
    hooks = HookList(mesimp)
    with pytest.raises(PluginConfigError, match="pruning masks need fixed matrix shapes"):
        hooks.add(techniques.build_restoring_hooks(parse(*MESIMP), ["pruning"])[0])


def test_sentence_losses_are_refused_where_ranks_score_batch_shares():
    with pytest.raises(PluginConfigError, match="per-sentence losses are not available with "
                                                "hybrid_lstm across ranks"):
        HookList(techniques.build_hooks(parse(*PARALLEL, *ASSIST)))
    # a curriculum needs no losses: it runs beside the pipeline
    assert len(HookList(techniques.build_hooks(parse(*PARALLEL, "--instance-selection",
                                                     "competence")))) == 2


def test_torch_optimizer_unwraps_fairseq_wrappers():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)

    class Wrapper:
        def __init__(self, inner):
            self.optimizer = inner

    assert torch_optimizer(Wrapper(Wrapper(opt))) is opt
    assert torch_optimizer(Wrapper(None)) is None
