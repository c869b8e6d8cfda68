"""The instance-selection hook: which policies it builds and what they need, presets and
option checks, restored state that waits for the worker and iterator it restores, and only
training batches accounted in the logged metrics."""
import pytest
from fairseq.logging import metrics

from fairseq_efficiency.assist import hook
from fairseq_efficiency.errors import PluginConfigError
from tests.assist.test_config import Cfg
from tests.test_task import build, run_updates

SELF_PACED = ("--instance-selection", "self-paced")


def test_restored_state_waits_for_the_iterator_and_resumes_the_accounting(tiny_data_bin,
                                                                           tmp_path):
    _, task, trainer = build(tiny_data_bin, tmp_path / "a", "translation_efficiency",
                             extra=SELF_PACED)
    hook = task.hooks.hooks[0]
    try:
        epoch_itr, _, _ = run_updates(trainer, 3)
        assert hook.boss_tokens > 0
        saved = hook.state_dict()
    finally:
        hook.close()
    _, task2, trainer2 = build(tiny_data_bin, tmp_path / "b", "translation_efficiency",
                               extra=SELF_PACED)
    hook2 = task2.hooks.hooks[0]
    try:
        task2.hooks.load_state_dict({"instance_selection": saved})
        assert hook2.worker is None and hook2.boss_tokens == 0  # kept until the iterator exists
        itr = trainer2.get_train_iterator(epoch=1)
        assert hook2.boss_tokens == saved["ranks"][0]["boss_tokens"]
        assert itr.num_batches(1) == saved["ranks"][0]["num_batches"][1]
        assert hook2.restored_from == "-"  # a selector without an Assistant
    finally:
        hook2.close()


def test_only_training_batches_are_reported(tiny_data_bin, tmp_path):
    _, task, trainer = build(tiny_data_bin, tmp_path, "translation_efficiency", extra=SELF_PACED)
    hook = task.hooks.hooks[0]
    try:
        run_updates(trainer, 1)
        with metrics.aggregate(new_root=True) as valid:
            hook.reduce_metrics([], train=False)
        with metrics.aggregate(new_root=True) as train:
            hook.reduce_metrics([], train=True)
        assert "keep_rate" not in valid.get_smoothed_values()
        logged = train.get_smoothed_values()
        assert logged["boss_tok"] == hook.boss_tokens > 0 and 0 <= logged["keep_rate"] <= 1
    finally:
        hook.close()


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


def test_state_is_taken_only_once_the_iterator_exists():
    h = hook.build(Cfg(instance_selection="self-paced"))
    assert h.state_dict() == {} and not h.ready_for_state()   # the host keeps it until then
    h.itr = object()
    assert h.ready_for_state()


def test_a_checkpoint_of_another_policy_is_refused():
    h = hook.build(Cfg(instance_selection="self-paced"))
    h.worker = object()                                  # built: the state is checked now
    with pytest.raises(PluginConfigError, match="--instance-selection autoassist, not self-paced"):
        h.load_state_dict({"selection": "autoassist", "world_size": 1, "ranks": [{}]})
    with pytest.raises(PluginConfigError, match="states of 2 workers, this run has 1"):
        h.load_state_dict({"selection": "self-paced", "world_size": 2, "ranks": [{}, {}]})
