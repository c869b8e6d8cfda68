"""Runs found on disk: their logs, BLEU of their generate outputs, their checkpoints."""
import os

import pytest

from fairseq_efficiency.report import build_report
from fairseq_efficiency.report.logs import LogError
from tests.report.fake_logs import write_log


def test_directory_of_several_runs_logs_finds_each_runs_own_bleu(tmp_path):
    d = tmp_path / "work"
    write_log(str(d / "base.train.log"), [5.0, 4.0])
    write_log(str(d / "fast.log"), [4.5, 3.5])
    (d / "base.generate.log").write_text("H-0\tx\nGenerate test with beam=4: BLEU4 = 15.94, 50/20\n")
    (d / "fast.gen").write_text("Generate valid with beam=5: BLEU = 1.00 1/1\n"
                                "Generate test with beam=5: BLEU = 21.50 60.0/30.0\n")
    doc = build_report([str(d)], str(tmp_path / "rep"), plots=False)
    assert list(doc["methods"]) == ["base", "fast"]  # the generate log is no run
    assert doc["runs"]["base"]["bleu"] == 15.94 and doc["runs"]["fast"]["bleu"] == 21.5
    assert doc["methods"]["fast"]["bleu_delta"] == pytest.approx(21.5 - 15.94)


@pytest.mark.parametrize("zipfile", [True, False])
def test_parameters_and_non_zeros_of_a_checkpoint(tmp_path, zipfile):
    import torch

    from fairseq_efficiency.report.runs import count_parameters

    path = str(tmp_path / "checkpoint_best.pt")
    torch.save({"model": {"w": torch.tensor([[0.0, 1.0], [2.0, 0.0]]), "b": torch.ones(3),
                          "steps": torch.tensor([5])}, "cfg": {"x": 1}}, path,
               _use_new_zipfile_serialization=zipfile)
    assert count_parameters(path) == (7, 5)  # integer buffers are not parameters


def test_checkpoint_that_runs_code_is_refused(tmp_path):
    import pickle

    from fairseq_efficiency.report.runs import count_parameters

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo owned",))

    path = tmp_path / "checkpoint_best.pt"
    path.write_bytes(pickle.dumps({"model": Evil()}))
    with pytest.raises(LogError, match="cannot read checkpoint"):
        count_parameters(str(path))

