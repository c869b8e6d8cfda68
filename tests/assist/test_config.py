"""Options of instance selection (assist/config.py): one-line errors for invalid values."""
import pytest

from fairseq_efficiency.assist import config
from fairseq_efficiency.assist.presets import _defaults
from fairseq_efficiency.errors import PluginConfigError


class Cfg:
    def __init__(self, **kw):
        self.__dict__.update(_defaults())
        self.__dict__.update(kw)


def test_defaults_are_valid_and_uniform():
    assert config.validate(Cfg()) == "uniform"
    for sel in ("autoassist", "self-paced", "dynamic-sampling", "competence"):
        assert config.validate(Cfg(instance_selection=sel)) == sel


@pytest.mark.parametrize("name,value,message", [
    ("instance_selection", "bogus", "--instance-selection must be one of"),
    ("assist_lr", 0.0, "--assist-lr must be > 0, got 0.0"),
    ("assist_min_keep", 1.5, "--assist-min-keep must be in [0, 1], got 1.5"),
    ("assist_pool_batches", 1, "--assist-pool-batches must be >= 2, got 1"),
    ("competence_c0", 0.0, "--competence-c0 must be in (0, 1], got 0.0"),
    ("assist_unlearnable_visits", 1, "--assist-unlearnable-visits must be >= 2, got 1"),
    ("assist_unlearnable_alpha", -0.1, "--assist-unlearnable-alpha must be in [0, 1]"),
    ("assist_unlearnable_keep", 2.0, "--assist-unlearnable-keep must be in [0, 1], got 2.0"),
    ("assist_unlearnable_min_fall", -1.0, "--assist-unlearnable-min-fall must be >= 0"),
])
def test_invalid_values_are_one_line_errors(name, value, message):
    with pytest.raises(PluginConfigError) as e:
        config.validate(Cfg(**{name: value}))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_unlearnable_filter_needs_a_loss_based_policy():
    for sel in ("uniform", "autoassist", "self-paced", "dynamic-sampling"):
        assert config.validate(Cfg(instance_selection=sel, assist_unlearnable=True)) == sel
    with pytest.raises(PluginConfigError, match="not competence"):
        config.validate(Cfg(instance_selection="competence", assist_unlearnable=True))
