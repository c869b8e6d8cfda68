"""Compact checkpoints: bitmask + values, rebuilt by torch's weights-only loader."""
import io

import pytest
import torch

from fairseq_efficiency import checkpoint_state
from fairseq_efficiency.pruning.export import (SparseTensor, densify, export_state, saved_size,
                                               sparsify_state)


def roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)  # densify is allow-listed by the import


def sparse_weight(shape, density, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(*shape, generator=g)
    return w * (torch.rand(*shape, generator=g) < density)


def test_sparse_tensors_load_back_exactly_and_dense_ones_stay_dense():
    model = {"sparse": sparse_weight((40, 30), 0.2), "dense": torch.randn(40, 30),
             "small": torch.zeros(7), "ids": torch.arange(100)}
    out = sparsify_state(model, max_density=0.9)
    assert isinstance(out["sparse"], SparseTensor)
    assert out["dense"] is model["dense"] and out["small"] is model["small"]  # < 64 weights
    assert out["ids"] is model["ids"]
    back = roundtrip(out)
    for k, t in model.items():
        assert torch.equal(back[k], t), k
    big = sparse_weight((200, 100), 0.2)
    ratio = saved_size(sparsify_state({"w": big})) / saved_size({"w": big})
    assert 0.2 < ratio < 0.25  # 20% of the values + a 1/32 bitmask + pickling
    assert isinstance(sparsify_state(model, max_density=0.1)["sparse"], torch.Tensor)


def test_tied_tensors_are_stored_once_and_stay_tied():
    w = sparse_weight((50, 16), 0.1)
    out = sparsify_state({"encoder.embed": w, "decoder.out": w})
    assert out["encoder.embed"] is out["decoder.out"]
    back = roundtrip(out)
    assert back["encoder.embed"].data_ptr() == back["decoder.out"].data_ptr()


@pytest.mark.parametrize("args, msg", [
    (((4, -1), torch.zeros(1, dtype=torch.uint8), torch.zeros(0)), "invalid shape"),
    (((64,), torch.zeros(7, dtype=torch.uint8), torch.zeros(0)), "bitmask of 7 bytes"),
    (((8,), torch.zeros(1, dtype=torch.int32), torch.zeros(0)), "1-D uint8"),
    (((8,), torch.tensor([3], dtype=torch.uint8), torch.zeros(1)), "2 positions set"),
    (((8,), torch.tensor([3], dtype=torch.uint8), torch.zeros(2, dtype=torch.long)), "floating"),
])
def test_densify_checks_before_allocating(args, msg):
    with pytest.raises(ValueError, match=msg):
        densify(*args)


def test_export_state_keeps_cfg_and_other_extra_state_drops_optimizer_and_masks():
    state = {"cfg": {"model": {"_name": "lstm"}}, "model": {"w": sparse_weight((20, 20), 0.1)},
             "last_optimizer_state": {"state": {0: torch.ones(3)}}, "optimizer_history": [{}],
             "extra_state": {"train_iterator": {"epoch": 3}}}
    checkpoint_state.set_hook_states(state, {"pruning": {"masks": {}}})
    out = export_state(state)
    assert out["cfg"] == state["cfg"] and out["optimizer_history"] == [{}]
    assert out["last_optimizer_state"] is None
    assert out["extra_state"] == {"train_iterator": {"epoch": 3}}
    assert checkpoint_state.hook_states(out) == {}
    assert isinstance(out["model"]["w"], SparseTensor)
    assert torch.equal(roundtrip(out)["model"]["w"], state["model"]["w"])
