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


def test_plugin_config_fields_are_command_line_flags(tmp_path):
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    args = options.parse_args_and_arch(options.get_training_parser(), [
        str(tmp_path), "--user-dir", userdir(), "--task", "translation_efficiency",
        "--criterion", "sentence_cross_entropy", "--label-smoothing", "0.2", "--arch", "lstm"])
    cfg = convert_namespace_to_omegaconf(args)
    assert cfg.task._name == "translation_efficiency" and cfg.task.left_pad_source
    assert cfg.criterion._name == "sentence_cross_entropy" and cfg.criterion.label_smoothing == 0.2
