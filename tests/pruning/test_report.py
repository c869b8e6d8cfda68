"""Per-class sparsity tables and the layer-collapse warning."""
import torch

from fairseq_efficiency.pruning.masks import MaskSet
from fairseq_efficiency.pruning.report import class_stats, collapse_warnings, format_class_table

CLASSES = {"embed": ["e"], "layer": ["a", "b"], "out": ["o"]}


def masks():
    return {"e": torch.tensor([True, False, False, False]),  # 3 of 4 pruned
            "a": torch.zeros(10, 10, dtype=torch.bool),  # all of a and 5 of b: 105 of 110
            "b": torch.tensor([False] * 5 + [True] * 5), "o": torch.ones(3, dtype=torch.bool)}


def test_class_stats_from_masks_or_a_mask_set():
    want = [("embed", 3, 4), ("layer", 105, 110), ("out", 0, 3)]
    assert class_stats(CLASSES, masks()) == want
    assert class_stats(CLASSES, MaskSet(masks())) == want
    # a class -> {name: tensor} mapping works alike; names without masks are skipped
    assert class_stats({"out": {"o": None, "x": None}}, masks()) == [("out", 0, 3)]


def test_table_marks_collapsed_classes_and_the_warning_names_them():
    table = format_class_table(CLASSES, masks(), {"embed": 0.25})
    rows = {line.split()[0]: line for line in table.splitlines()}
    assert rows["embed"].split()[1:5] == ["4", "3", "0.7500", "0.25"]
    assert rows["layer"].split()[1:5] == ["110", "105", "0.9545", "-"]
    assert rows["total"].split()[1:4] == ["117", "108", "0.9231"]
    assert [c for c, line in rows.items() if line.endswith("!")] == ["layer"]
    lines = collapse_warnings(CLASSES, masks())
    assert len(lines) == 1 and lines[0].startswith("class layer lost 95.5% of its 110 weights")
    assert collapse_warnings(CLASSES, masks(), limit=0.7)[0].startswith("class embed lost 75.0%")
