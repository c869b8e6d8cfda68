"""fairseq-efficiency-userdir prints the directory fairseq's --user-dir imports the plugin from."""
import os

import fairseq_efficiency
from fairseq_efficiency.cli.userdir import main, userdir


def test_prints_the_package_directory(capsys):
    assert main([]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == userdir() == os.path.dirname(fairseq_efficiency.__file__)
    assert os.path.isfile(os.path.join(printed, "__init__.py"))
