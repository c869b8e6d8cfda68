"""The scheme objects reproduce, mask for mask, the masks existing pruned checkpoints hold."""
import itertools

import pytest
import torch
from torch import nn

from fairseq_efficiency.pruning.classes import find_weight_classes
from fairseq_efficiency.pruning.schemes import SCHEMES, compute_masks
from tests.pruning import reference_schemes


class Seq2Seq(nn.Module):
    """A small LSTM encoder-decoder with the weight classes of the paper's Figure 2."""

    def __init__(self, vocab=60, embed=16, hidden=24):
        super().__init__()
        self.encoder, self.decoder = nn.Module(), nn.Module()
        self.encoder.embed_tokens = nn.Embedding(vocab, embed)
        self.encoder.lstm = nn.LSTM(embed, hidden, num_layers=2)
        self.decoder.embed_tokens = nn.Embedding(vocab, embed)
        self.decoder.layers = nn.ModuleList([nn.LSTMCell(embed + hidden, hidden)])
        self.decoder.attention = nn.Module()
        self.decoder.attention.input_proj = nn.Linear(hidden, hidden, bias=False)
        self.decoder.additional_fc = nn.Linear(hidden, 8)
        self.decoder.fc_out = nn.Linear(8, vocab)


def seeded_classes(seed):
    torch.manual_seed(seed)
    model = Seq2Seq()
    with torch.no_grad():
        model.decoder.additional_fc.weight.mul_(0.05)  # a small class a global threshold empties
    params = dict(model.named_parameters())
    return {c: {n: params[n].data for n in ns} for c, ns in find_weight_classes(model).items()}


CASES = [(r, cap) for r in (0.0, 0.3, 0.5, 0.8, 0.9) for cap in (1.0, 0.93)] + [(0.8, 0.82)]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_masks_equal_the_reference_for_every_scheme_and_ratio(scheme):
    checked = 0
    for seed, (ratio, cap), second in itertools.product((0, 1), CASES, (False, True)):
        classes, prev = seeded_classes(seed), None
        if second:  # a later event of a gradual schedule: zeroed weights, earlier masks
            prev, _, _ = reference_schemes.compute_masks(classes, scheme, ratio / 2)
            classes = {c: {n: t * prev[n] for n, t in ts.items()} for c, ts in classes.items()}
        want, thr, capped = reference_schemes.compute_masks(classes, scheme, ratio, prev, cap)
        got = compute_masks(classes, scheme, ratio, prev, cap)
        assert list(got.masks) == list(want)
        for n, m in want.items():
            assert got.masks[n].dtype == torch.bool and got.masks[n].shape == m.shape
            assert torch.equal(got.masks[n], m), (seed, ratio, cap, second, n)
        assert got.thresholds == thr and got.capped == capped
        checked += 1
    assert checked == 2 * len(CASES) * 2
