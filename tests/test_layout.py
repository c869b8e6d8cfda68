"""tests/ mirrors the package: fairseq_efficiency/<pkg>/<module>.py is tested in
tests/<pkg>/test_<module>.py."""
import os

import fairseq_efficiency

PACKAGE = os.path.dirname(fairseq_efficiency.__file__)
TESTS = os.path.dirname(os.path.abspath(__file__))
# modules whose behaviour is still tested only through other test modules
# (tests/assist/test_worker.py, test_cli.py, test_authors_preset.py, test_feature_cache.py)
UNMIRRORED = {"assist/config.py", "assist/features.py", "assist/iterator.py",
              "assist/presets.py", "assist/selection.py"}


def test_every_module_has_its_test_module():
    missing, test_dirs = set(), set()
    for root, dirs, files in os.walk(PACKAGE):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        rel = os.path.relpath(root, PACKAGE)
        for f in files:
            if not f.endswith(".py") or f == "__init__.py":
                continue
            test_dir = TESTS if rel == "." else os.path.join(TESTS, rel)
            test_dirs.add(test_dir)
            if not os.path.isfile(os.path.join(test_dir, "test_" + f)):
                missing.add(os.path.normpath(os.path.join(rel, f)))
    assert missing <= UNMIRRORED, sorted(missing - UNMIRRORED)
    for d in test_dirs - {TESTS}:  # test packages, as their siblings
        assert os.path.isfile(os.path.join(d, "__init__.py")), d
