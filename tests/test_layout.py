"""tests/ mirrors the package: fairseq_efficiency/<pkg>/<module>.py is tested in
tests/<pkg>/test_<module>.py."""
import os

import fairseq_efficiency

PACKAGE = os.path.dirname(fairseq_efficiency.__file__)
TESTS = os.path.dirname(os.path.abspath(__file__))


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
    assert not missing, sorted(missing)
    for d in test_dirs - {TESTS}:  # test packages, as their siblings
        assert os.path.isfile(os.path.join(d, "__init__.py")), d
