"""Cost to a target loss: the first crossing, interpolated between validations."""
import pytest

from fairseq_efficiency.report.cost import cost_to_target, first_crossing
from fairseq_efficiency.report.logs import read_log
from tests.report.fake_logs import write_log


def test_first_crossing_interpolates_between_the_two_validations():
    assert first_crossing([10, 20, 30], [5.0, 4.0, 3.0], 3.5) == (25.0, 2)
    assert first_crossing([10, 20, 30], [5.0, 4.0, 3.0], 4.0) == (20.0, 1)  # exactly on a point


def test_first_crossing_is_the_first_one_not_the_best():
    u, k = first_crossing([10, 20, 30, 40], [5.0, 3.0, 4.0, 2.0], 3.5)
    assert (u, k) == (17.5, 1)  # 10 + (5 - 3.5) / (5 - 3) * 10


def test_first_validation_below_target_counts_at_that_validation():
    assert first_crossing([10, 20], [3.0, 2.0], 4.0) == (10.0, 0)


def test_never_reached():
    assert first_crossing([10, 20], [5.0, 4.5], 4.0) is None


def test_tokens_and_wall_at_the_crossing(tmp_path):
    # 10 updates per epoch, 100 target tokens and 2 s per update; valid 5, 4, 3
    c = read_log(write_log(str(tmp_path / "a" / "train.log"), [5.0, 4.0, 3.0]))
    x = cost_to_target(c, 3.5)
    assert x.updates == pytest.approx(25.0)
    assert x.tokens == pytest.approx(2500.0) and x.wall == pytest.approx(50.0)
    assert (x.validation_updates, x.validation_tokens, x.validation_wall) == (30.0, 3000.0, 60.0)
    assert cost_to_target(c, 2.0) is None

