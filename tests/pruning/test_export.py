"""Sparse exports: bitmask + values that torch's weights-only loader rebuilds, bounded by
what the file holds; tied tensors stay tied; inference exports carry no training state."""
import io

import pytest
import torch

from fairseq_efficiency import checkpoint_state
from fairseq_efficiency.pruning.export import (SparseTensor, densify, export_state, saved_size,
                                               sparsify_state)
from fairseq_efficiency.pruning.masks import pack_bits


def roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def sparse_weight(shape=(16, 12), density=0.25, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g)
    return w * (torch.rand(shape, generator=g) < density)


def test_sparse_tensor_loads_back_dense_under_weights_only():
    w = sparse_weight((200, 100))
    back = roundtrip({"w": SparseTensor(w)})["w"]
    assert torch.equal(back, w) and back.dtype == w.dtype
    # 25% of the values + 1 bit per weight
    assert saved_size({"w": SparseTensor(w)}) < (0.25 + 1 / 32 + 0.02) * saved_size({"w": w})


def test_densify_checks_what_the_file_holds_before_allocating():
    keep = torch.tensor([True, False, True, True, False, False, False, False, True])
    bits, values = pack_bits(keep), torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert torch.equal(densify((3, 3), bits, values),
                       torch.tensor([[1.0, 0, 2], [3, 0, 0], [0, 0, 4]]))
    bad = [((10 ** 6, 10 ** 6), bits, values, "bitmask of 2 bytes"),
           ((3, 3), bits, values[:3], "4 positions set in the bitmask but 3 values"),
           ((3, -3), bits, values, "invalid shape"),
           ((3, True), bits, values, "invalid shape"),
           ((3, 3), bits.long(), values, "1-D uint8"),
           ((3, 3), bits, values.long(), "floating-point"),
           ((1,) * 17, bits, values, "invalid shape")]
    for shape, b, v, msg in bad:
        with pytest.raises(ValueError, match=msg):
            densify(shape, b, v)


def test_sparsify_state_keeps_dense_small_and_tied_tensors_as_such():
    sparse, dense = sparse_weight(), torch.randn(16, 12)
    small, ints = torch.zeros(4, 4), torch.zeros(100, dtype=torch.long)
    state = {"emb": sparse, "out": sparse, "dense": dense, "small": small, "ints": ints}
    out = sparsify_state(state)
    assert isinstance(out["emb"], SparseTensor) and out["out"] is out["emb"]
    assert out["dense"] is dense and out["small"] is small and out["ints"] is ints
    back = roundtrip(out)
    assert back["emb"] is back["out"]  # one tensor, stored once
    for k, t in state.items():
        assert torch.equal(back[k], t), k


def test_export_state_drops_training_state_only():
    masks = {"emb": {"shape": [16, 12]}}
    state = {"cfg": {"model": {"_name": "lstm"}}, "model": {"emb": sparse_weight()},
             "last_optimizer_state": {"exp_avg": torch.ones(3)},
             "extra_state": {"epoch": 3, "train_iterator": {"epoch": 3}},
             "optimizer_history": [{"num_updates": 7}]}
    checkpoint_state.set_hook_states(state, {"pruning": {"masks": masks}})
    out = export_state(state)
    assert out["last_optimizer_state"] is None
    assert out["extra_state"] == {"epoch": 3, "train_iterator": {"epoch": 3}}
    assert checkpoint_state.hook_states(out) == {}
    assert out["cfg"] == state["cfg"] and out["optimizer_history"] == [{"num_updates": 7}]
    assert isinstance(out["model"]["emb"], SparseTensor)
    assert checkpoint_state.hook_states(state)["pruning"]["masks"] == masks  # input untouched
