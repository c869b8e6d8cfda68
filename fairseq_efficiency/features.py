"""Registry of the techniques the ``translation_efficiency`` task can host.

Each technique registers one factory ``build(cfg) -> EfficiencyHook | None``
that reads its own fields of the task config and returns a hook only when the
user switched the technique on. Factories run in registration order, which is
also the order the hooks are called in.

A technique whose state must outlive its flags (pruning masks of a restored
checkpoint stay enforced while retraining) registers with ``restores=NAME``:
when a checkpoint carries state for hook ``NAME`` and no such hook was built,
the task calls ``build(cfg, restoring=True)`` and hands it that state. That
state is restored whatever ``--reset-*`` flags are given; the state of other
hooks follows fairseq's data iterator (dropped with ``--reset-dataloader``).
"""
from typing import Callable, Iterable, List, Optional, Set, Tuple

from fairseq_efficiency.errors import user_errors
from fairseq_efficiency.hooks import EfficiencyHook

_FACTORIES: List[Tuple[Callable, Optional[str]]] = []


def register_hook_factory(fn: Optional[Callable] = None, *, restores: Optional[str] = None):
    """Decorator: register ``fn(cfg) -> EfficiencyHook | None`` (see the module docstring)."""
    def wrap(f):
        _FACTORIES.append((f, restores))
        return f
    return wrap(fn) if fn is not None else wrap


@user_errors()
def build_hooks(cfg) -> List[EfficiencyHook]:
    """The hooks of every technique switched on in ``cfg``, in registration order."""
    hooks = []
    for factory, _ in _FACTORIES:
        hook = factory(cfg)
        if hook is not None:
            hooks.append(hook)
    return hooks


@user_errors()
def build_restoring_hooks(cfg, names: Iterable[str]) -> List[EfficiencyHook]:
    """Hooks built only to carry checkpointed state for the hook ``names``."""
    names = set(names)
    return [factory(cfg, restoring=True) for factory, restores in _FACTORIES
            if restores is not None and restores in names]


def restorable_hooks() -> Set[str]:
    """Names of the hooks whose checkpointed state outlives every ``--reset-*`` flag."""
    return {restores for _, restores in _FACTORIES if restores is not None}
