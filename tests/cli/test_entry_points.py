"""Every console script declared in setup.py resolves to a callable main."""
import ast
import importlib
import os

SETUP = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                     "setup.py")


def console_scripts():
    for node in ast.walk(ast.parse(open(SETUP).read())):
        if isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values):
                if isinstance(k, ast.Constant) and k.value == "console_scripts":
                    return [ast.literal_eval(e) for e in v.elts]
    return []


def test_every_console_script_resolves():
    scripts = dict(s.replace(" ", "").split("=") for s in console_scripts())
    assert {"fairseq-efficiency-report", "fairseq-efficiency-bench"} <= set(scripts)
    for name, target in scripts.items():
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func)), name
