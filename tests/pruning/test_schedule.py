"""When to prune and how much: one-shot and the cubic gradual schedule."""
import pytest

from fairseq_efficiency.pruning.schedule import pruning_schedule


def test_cubic_schedule_reaches_target_with_absolute_fractions():
    sched = pruning_schedule(0.8, at_update=100, steps=4, end_update=400)
    assert [u for u, _ in sched] == [100, 200, 300, 400]
    fr = [r for _, r in sched]
    assert fr == pytest.approx([0.8 * (1 - (1 - j / 4) ** 3) for j in range(1, 5)])
    assert fr[-1] == pytest.approx(0.8) and all(a < b for a, b in zip(fr, fr[1:]))
    assert pruning_schedule(0.5, 7) == [(7, 0.5)]
    with pytest.raises(ValueError, match="--prune-end-update"):
        pruning_schedule(0.5, 10, steps=3, end_update=10)


@pytest.mark.parametrize("args, msg", [((0.5, -1), "--prune-at-update must be >= 0"),
                                       ((0.5, 0, 0), "--prune-steps must be >= 1"),
                                       ((1.0, 0), r"must be in \[0, 1\)")])
def test_bad_schedules_rejected(args, msg):
    with pytest.raises(ValueError, match=msg):
        pruning_schedule(*args)
