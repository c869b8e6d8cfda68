"""``--analyze``: per-class damage (Figure 4) and survival maps (Figure 8), without fairseq."""
import pytest
import torch

from fairseq_efficiency.pruning import analysis
from fairseq_efficiency.pruning.classes import class_tensors
from fairseq_efficiency.pruning.schemes import compute_masks
from tests.pruning.test_masks import Toy


def test_class_breakdown_prunes_one_class_at_a_time_and_restores_it(monkeypatch):
    torch.manual_seed(0)
    model = Toy()
    dense = {n: p.detach().clone() for n, p in model.named_parameters()}
    seen = []

    def fake_perplexity(task, m, split):  # stands for the validation perplexity
        zeros = {n: int((p == 0).sum()) for n, p in m.named_parameters()}
        seen.append(zeros)
        return 1.0 + sum(zeros.values())

    monkeypatch.setattr(analysis, "perplexity", fake_perplexity)
    rows = analysis.class_breakdown(None, model, 0.8, schemes=("class-blind", "lamp"))
    tensors = class_tensors(model)
    assert [r["class"] for r in rows] == list(tensors)
    for scheme in ("class-blind", "lamp"):
        masks = compute_masks(tensors, scheme, 0.8).masks
        for r in rows:
            names = tensors[r["class"]]
            pruned = sum(int((~masks[n]).sum()) for n in names)
            assert r["weights"] == sum(t.numel() for t in names.values())
            assert r[f"{scheme} pruned"] == pytest.approx(pruned / r["weights"])
            assert r[f"{scheme} dppl"] == pruned  # only this class was pruned
    assert len(seen) == 1 + 2 * len(rows)
    for n, p in model.named_parameters():  # every class restored
        assert torch.equal(p.detach(), dense[n])
    text = analysis.format_breakdown(rows)
    assert text.splitlines()[0] == "base perplexity 1.000" and "lamp %/Δppl" in text


def test_survival_maps_of_lstm_gates_and_embeddings():
    torch.manual_seed(0)
    model = Toy()
    masks = compute_masks(class_tensors(model), "class-blind", 0.8).masks
    maps, gates = analysis.survival_maps(model, 0.8)
    assert list(maps) == ["encoder.lstm.l0", "encoder.lstm.l1", "encoder.embed_tokens"]
    T, n_ff = maps["encoder.lstm.l0"]
    assert n_ff == 8 and torch.equal(T, torch.cat([masks["encoder.lstm.weight_ih_l0"],
                                                   masks["encoder.lstm.weight_hh_l0"]], 1))
    assert torch.equal(maps["encoder.embed_tokens"][0], masks["encoder.embed_tokens.weight"].t())
    assert len(gates) == 2 * 4 * 2  # layers x gates x (feed-forward, recurrent)
    forget_rec = [g for g in gates if g["matrix"] == "encoder.lstm.l1" and g["gate"] == "f"
                  and g["input"] == "recurrent"][0]
    assert forget_rec["kept"] == pytest.approx(
        float(masks["encoder.lstm.weight_hh_l1"][8:16].float().mean()))
