"""The techniques ``translation_efficiency`` hosts, in call order: THE table.

Each entry names the technique's hook, its config dataclass (its fields become
fields of :class:`~fairseq_efficiency.task.TranslationEfficiencyConfig`) and its
factory ``build(cfg) -> EfficiencyHook | None``, which reads its own fields and
returns a hook only when the user switched the technique on. The task builds
the hooks in table order, which is also the order every hook method is called
in (:class:`~fairseq_efficiency.hooks.HookList`). Adding a technique is one
entry here plus its package.

A technique whose state must outlive its flags (pruning masks of a restored
checkpoint stay enforced while retraining) sets ``restores``: when a checkpoint
carries state for that hook and no such hook was built, the task calls
``build(cfg, restoring=True)`` and hands it that state. That state is restored
whatever ``--reset-*`` flags are given; the state of the other hooks follows
fairseq's data iterator (dropped with ``--reset-dataloader``).
"""
from dataclasses import dataclass
from typing import Callable, Iterable, List, Set

from fairseq_efficiency.assist import hook as assist_hook
from fairseq_efficiency.assist.config import AutoAssistConfig
from fairseq_efficiency.errors import user_errors
from fairseq_efficiency.hooks import EfficiencyHook
from fairseq_efficiency.meprop import hook as mesimp_hook
from fairseq_efficiency.parallel import hook as hybrid_parallel
from fairseq_efficiency.pruning import hook as pruning_hook


@dataclass(frozen=True)
class Technique:
    name: str  #: the hook's ``name`` (its key in checkpoints and logs)
    config: type  #: dataclass whose fields the task config gains
    build: Callable  #: ``build(cfg) -> EfficiencyHook | None``
    restores: bool = False  #: ``build(cfg, restoring=True)`` carries checkpointed state


TECHNIQUES = (
    # batch sharding over pipeline groups: decides which batches this rank reads
    Technique("hybrid_parallel", hybrid_parallel.HybridParallelConfig, hybrid_parallel.build),
    Technique("mesimp", mesimp_hook.MeSimpConfig, mesimp_hook.build),
    Technique("instance_selection", AutoAssistConfig, assist_hook.build),
    Technique("pruning", pruning_hook.PruningConfig, pruning_hook.build, restores=True),
)


def config_classes() -> tuple:
    """The config dataclass of every technique, in table order."""
    return tuple(t.config for t in TECHNIQUES)


@user_errors()
def build_hooks(cfg) -> List[EfficiencyHook]:
    """The hooks of every technique switched on in ``cfg``, in table order."""
    hooks = []
    for technique in TECHNIQUES:
        hook = technique.build(cfg)
        if hook is not None:
            hooks.append(hook)
    return hooks


@user_errors()
def build_restoring_hooks(cfg, names: Iterable[str]) -> List[EfficiencyHook]:
    """Hooks built only to carry checkpointed state for the hooks ``names``."""
    names = set(names)
    return [t.build(cfg, restoring=True) for t in TECHNIQUES if t.restores and t.name in names]


def restorable_hooks() -> Set[str]:
    """Names of the hooks whose checkpointed state outlives every ``--reset-*`` flag."""
    return {t.name for t in TECHNIQUES if t.restores}
