"""The fairseq adapter (assist/hook.py) without a training run: which runs get the hook, and
what it refuses on resume (fairseq-train end to end: test_cli.py)."""
import pytest

from fairseq_efficiency.assist import hook
from fairseq_efficiency.errors import PluginConfigError
from tests.assist.test_config import Cfg


def test_uniform_is_fairseqs_own_iterator_unless_the_filter_is_on():
    assert hook.build(Cfg()) is None
    h = hook.build(Cfg(assist_unlearnable=True))
    assert h.selection == "uniform" and h.needs_sentence_losses
    assert hook.build(object()) is None                 # a task without these options


@pytest.mark.parametrize("sel,losses", [("autoassist", True), ("self-paced", True),
                                        ("dynamic-sampling", True), ("competence", False)])
def test_which_policies_need_sentence_losses(sel, losses):
    h = hook.build(Cfg(instance_selection=sel))
    assert h.selection == sel and h.needs_sentence_losses == losses


def test_preset_is_applied_and_the_options_validated():
    h = hook.build(Cfg(instance_selection="autoassist", assist_preset="authors"))
    assert h.cfg.assist_threshold == "pass-mean" and h.sentence_loss_smoothing == 0.1
    with pytest.raises(PluginConfigError, match="--assist-lr must be > 0"):
        hook.build(Cfg(instance_selection="autoassist", assist_lr=-1.0))


def test_state_before_the_iterator_exists_is_kept_until_it_does():
    h = hook.build(Cfg(instance_selection="self-paced"))
    assert h.state_dict() == {}
    st = {"selection": "autoassist", "world_size": 1, "ranks": [{}]}
    h.load_state_dict(st)
    assert h._pending_state is st                        # applied when the iterator is built
    h.load_state_dict({})                                # nothing to restore
    assert h._pending_state is st


def test_a_checkpoint_of_another_policy_is_refused():
    h = hook.build(Cfg(instance_selection="self-paced"))
    h.worker = object()                                  # built: the state is checked now
    with pytest.raises(PluginConfigError, match="--instance-selection autoassist, not self-paced"):
        h.load_state_dict({"selection": "autoassist", "world_size": 1, "ranks": [{}]})
    with pytest.raises(PluginConfigError, match="states of 2 workers, this run has 1"):
        h.load_state_dict({"selection": "self-paced", "world_size": 2, "ranks": [{}, {}]})
