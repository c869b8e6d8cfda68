"""Pruning events: one-shot at an update, or gradual with Zhu & Gupta's cubic targets."""
import pytest

from fairseq_efficiency.errors import PluginConfigError
from fairseq_efficiency.pruning.schedule import pruning_schedule


def test_one_shot_and_gradual_events():
    assert pruning_schedule(0.8, 100) == [(100, 0.8)]
    events = pruning_schedule(0.8, 10, steps=4, end_update=40)
    assert [u for u, _ in events] == [10, 20, 30, 40]
    # absolute targets 0.8 * (1 - (1 - j/4)^3): fast at first, the full ratio at the end
    assert [t for _, t in events] == pytest.approx(
        [0.8 * (1 - 0.75 ** 3), 0.8 * (1 - 0.5 ** 3), 0.8 * (1 - 0.25 ** 3), 0.8])
    assert [u for u, _ in pruning_schedule(0.5, 0, steps=3, end_update=5)] == [0, 2, 5]


@pytest.mark.parametrize("args,msg", [
    ((0.5, -1), "--prune-at-update must be >= 0"),
    ((0.5, 0, 0), "--prune-steps must be >= 1"),
    ((0.5, 10, 3, 10), "--prune-steps 3 needs --prune-end-update > --prune-at-update"),
    ((1.5, 0), "ratio"),
])
def test_bad_schedules_are_refused(args, msg):
    with pytest.raises(PluginConfigError, match=msg):
        pruning_schedule(*args)
