"""Importing the plugin (what --user-dir does) registers everything; userdir is printed."""
import subprocess
import sys

from fairseq.criterions import CRITERION_REGISTRY
from fairseq.tasks import TASK_REGISTRY

import fairseq_efficiency
from fairseq_efficiency.cli.userdir import userdir


def test_task_and_criterion_registered():
    assert TASK_REGISTRY["translation_efficiency"].__module__ == "fairseq_efficiency.task"
    assert "sentence_cross_entropy" in CRITERION_REGISTRY


def test_userdir_console_script_prints_package_dir():
    out = subprocess.run([sys.executable, "-m", "fairseq_efficiency.cli.userdir"],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == userdir() == fairseq_efficiency.__path__[0]


def test_fairseq_train_help_lists_plugin_options():
    res = subprocess.run([sys.executable, "-m", "fairseq_cli.train", "--user-dir", userdir(),
                          "--task", "translation_efficiency", "--criterion",
                          "sentence_cross_entropy", "--help"], capture_output=True, text=True)
    assert res.returncode == 0
    # the task's and the criterion's dataclass fields became command-line flags
    assert "--left-pad-source" in res.stdout and "--label-smoothing" in res.stdout
