"""Imports point down: no module below ``cli/`` imports ``fairseq_efficiency.cli``."""
import ast
import os

import fairseq_efficiency

PACKAGE = os.path.dirname(fairseq_efficiency.__file__)


def _imported(path, module):
    """Absolute names of every module ``path`` imports (function-level imports included)."""
    tree = ast.parse(open(path, encoding="utf-8").read(), filename=path)
    package = module.rsplit(".", 1)[0] if not path.endswith("__init__.py") else module
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            yield base
            yield from (f"{base}.{a.name}" for a in node.names)


def _modules():
    for root, dirs, files in os.walk(PACKAGE):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(root, f)
                rel = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3]
                yield path, rel.replace(os.sep, ".").removesuffix(".__init__")


def test_import_walk_sees_upward_imports(tmp_path):
    bad = tmp_path / "x.py"
    bad.write_text("def f():\n    from fairseq_efficiency.cli.demo import main\n"
                   "from fairseq_efficiency import cli\nfrom ..cli import launch\n")
    names = set(_imported(str(bad), "fairseq_efficiency.pruning.x"))
    assert {"fairseq_efficiency.cli.demo", "fairseq_efficiency.cli",
            "fairseq_efficiency.cli.launch"} <= names


def test_nothing_below_cli_imports_cli():
    modules = list(_modules())
    assert len(modules) > 40  # the walk found the package
    upward = [(mod, name) for path, mod in modules if not mod.startswith("fairseq_efficiency.cli")
              for name in _imported(path, mod)
              if name == "fairseq_efficiency.cli" or name.startswith("fairseq_efficiency.cli.")]
    assert upward == []
