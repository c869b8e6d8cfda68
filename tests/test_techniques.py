"""The technique table is the single source of the task config and of the hook order."""
import dataclasses

import pytest
from fairseq import options
from fairseq.tasks.translation import TranslationConfig

from fairseq_efficiency import techniques
from fairseq_efficiency.cli.userdir import userdir
from fairseq_efficiency.task import TranslationEfficiencyConfig

PARALLEL = ["--pipeline-encoder-balance", "[1,1]", "--distributed-world-size", "2"]
MESIMP = ["--mesimp-interval", "4"]
ASSIST = ["--instance-selection", "autoassist"]
PRUNING = ["--prune-ratio", "0.5"]


def parse(*extra):
    parser = options.get_training_parser()
    return options.parse_args_and_arch(parser, ["unused-data", "--user-dir", userdir(), "--task",
                                                "translation_efficiency", "--arch", "lstm", *extra])


def test_table_order():
    assert [t.name for t in techniques.TECHNIQUES] == [
        "hybrid_parallel", "mesimp", "instance_selection", "pruning"]
    assert techniques.restorable_hooks() == {"pruning"}


def test_task_config_is_composed_from_the_table():
    assert TranslationEfficiencyConfig.__bases__ == (TranslationConfig,) + techniques.config_classes()
    task_fields = {f.name for f in dataclasses.fields(TranslationEfficiencyConfig)}
    for t in techniques.TECHNIQUES:
        assert {f.name for f in dataclasses.fields(t.config)} <= task_fields, t.name


@pytest.mark.parametrize("flags", [PARALLEL + MESIMP + ASSIST, PRUNING + ASSIST + PARALLEL,
                                   ASSIST + MESIMP, PRUNING])
def test_hooks_are_built_in_table_order(flags):
    hooks = techniques.build_hooks(parse(*flags))
    names = [h.name for h in hooks]
    assert names == [t.name for t in techniques.TECHNIQUES if t.name in names]
    assert len(names) == sum(f in flags for f in ("--pipeline-encoder-balance", "--mesimp-interval",
                                                  "--instance-selection", "--prune-ratio"))


def test_the_table_alone_decides_the_order(monkeypatch):
    monkeypatch.setattr(techniques, "TECHNIQUES", techniques.TECHNIQUES[::-1])
    hooks = techniques.build_hooks(parse(*PARALLEL, *MESIMP, *ASSIST))
    assert [h.name for h in hooks] == ["instance_selection", "mesimp", "hybrid_parallel"]


def test_restoring_hooks_only_for_restorable_state():
    hooks = techniques.build_restoring_hooks(parse(), ["pruning", "mesimp"])
    assert [h.name for h in hooks] == ["pruning"]
    assert techniques.build_hooks(parse()) == []
