"""The per-class sparsity table logged at every pruning event."""
import torch

from fairseq_efficiency.pruning.masks import MaskSet
from fairseq_efficiency.pruning.report import class_stats, collapse_warnings, format_class_table


def masks():
    keep = {"enc.w": torch.tensor([[True, False], [False, False]]),
            "enc.b": torch.ones(4, dtype=torch.bool),
            "dec.w": torch.zeros(10, 10, dtype=torch.bool)}
    keep["dec.w"][0, 0] = True
    return MaskSet(keep)


CLASSES = {"encoder": ["enc.w", "enc.b", "absent"], "decoder": ["dec.w"]}


def test_class_stats_count_pruned_weights_per_class():
    assert class_stats(CLASSES, masks()) == [("encoder", 3, 8), ("decoder", 99, 100)]
    assert class_stats(CLASSES, masks().masks) == class_stats(CLASSES, masks())


def test_table_rows_totals_thresholds_and_collapse_marks():
    lines = format_class_table(CLASSES, masks(), {"decoder": 0.25}).splitlines()
    assert lines[0].split() == ["class", "weights", "pruned", "sparsity", "|w|", "thr"]
    assert lines[1].split() == ["encoder", "8", "3", "0.3750", "-"]
    assert lines[2].split() == ["decoder", "100", "99", "0.9900", "0.25", "!"]
    assert lines[3].split() == ["total", "108", "102", "0.9444"]
    warnings = collapse_warnings(CLASSES, masks())
    assert len(warnings) == 1 and warnings[0].startswith("class decoder lost 99.0% of its 100")
    assert collapse_warnings(CLASSES, masks(), limit=0.995) == []
