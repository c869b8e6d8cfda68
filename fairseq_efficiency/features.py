"""Registry of the techniques the ``translation_efficiency`` task can host.

Each technique registers one factory ``build(cfg) -> EfficiencyHook | None``
that reads its own fields of the task config and returns a hook only when the
user switched the technique on. Factories run in registration order, which is
also the order the hooks are called in.
"""
from typing import Callable, List

from fairseq_efficiency.hooks import EfficiencyHook

_FACTORIES: List[Callable] = []


def register_hook_factory(fn: Callable):
    """Decorator: register ``fn(cfg) -> EfficiencyHook | None``."""
    _FACTORIES.append(fn)
    return fn


def build_hooks(cfg) -> List[EfficiencyHook]:
    hooks = []
    for factory in _FACTORIES:
        hook = factory(cfg)
        if hook is not None:
            hooks.append(hook)
    return hooks
