"""--analyze: LSTM weight maps and per-gate survival (Figure 8), the class table (Figure 4)."""
import os

import pytest
import torch
from torch import nn

from fairseq_efficiency.pruning.analysis import (GATES, format_breakdown, lstm_matrices,
                                                 survival_maps, write_analysis)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(30, 6)
        self.lstm = nn.LSTM(6, 5, num_layers=2, bidirectional=True)
        self.cell = nn.LSTMCell(10, 5)
        self.out = nn.Linear(5, 30)


def test_lstm_matrices_name_every_layer_and_direction():
    labels = [label for label, _, _ in lstm_matrices(Tiny())]
    assert labels == ["lstm.l0", "lstm.l0_reverse", "lstm.l1", "lstm.l1_reverse", "cell"]


def test_survival_maps_are_the_class_blind_masks_per_gate_and_input():
    torch.manual_seed(0)
    model = Tiny()
    maps, gate_rows = survival_maps(model, 0.6)
    T, n_ff = maps["lstm.l1"]
    assert T.shape == (20, 10 + 5) and n_ff == 10  # [W_ih | W_hh], 4 gates of 5 units
    w = torch.cat([model.lstm.weight_ih_l1, model.lstm.weight_hh_l1], dim=1).abs()
    assert w[T].min() >= w[~T].max()  # one magnitude threshold: kept weights are the largest
    emb, none = maps["embed"]
    assert emb.shape == (6, 30) and none is None  # one column per word
    rows = [r for r in gate_rows if r["matrix"] == "lstm.l1"]
    assert [(r["gate"], r["input"]) for r in rows] == [
        (g, p) for g in GATES for p in ("feed-forward", "recurrent")]
    kept_ff = sum(r["kept"] for r in rows if r["input"] == "feed-forward") / 4
    assert kept_ff == pytest.approx(float(T[:, :10].float().mean()))


def test_figures_and_tables_are_written(tmp_path):
    torch.manual_seed(0)
    maps, gate_rows = survival_maps(Tiny(), 0.5)
    breakdown = [{"class": "embed", "weights": 180, "base_ppl": 10.0, "class-blind pruned": 0.5,
                  "class-blind dppl": 1.25},
                 {"class": "out", "weights": 150, "base_ppl": 10.0, "class-blind pruned": 0.25,
                  "class-blind dppl": -0.5}]
    written = write_analysis(str(tmp_path / "an"), breakdown, maps, gate_rows, 0.5, 0.5)
    names = sorted(os.path.basename(p) for p in written)
    assert names[:2] == ["fig4_class_breakdown.csv", "fig4_class_breakdown.png"]
    assert "fig8_lstm_l0_reverse.png" in names and "fig8_gates.csv" in names
    assert all(os.path.getsize(p) > 0 for p in written)
    table = format_breakdown(breakdown).splitlines()
    assert table[0] == "base perplexity 10.000"
    assert table[2].split() == ["embed", "180", "50.0%", "+1.250"]
    assert table[3].split() == ["out", "150", "25.0%", "-0.500"]
