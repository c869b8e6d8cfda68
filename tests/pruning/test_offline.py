"""Offline pruning: masks applied to the model and stored where retraining restores them."""
import pytest
import torch

from fairseq_efficiency import checkpoint_state
from fairseq_efficiency.pruning.checkpoint import PruneError
from fairseq_efficiency.pruning.classes import find_weight_classes
from fairseq_efficiency.pruning.hook import hook_state_from_checkpoint
from fairseq_efficiency.pruning.masks import MaskSet
from fairseq_efficiency.pruning.offline import attach_masks, check_masks_hold, prune_model
from fairseq_efficiency.pruning.schemes import compute_masks
from tests.pruning.test_masks import Toy


@pytest.mark.parametrize("scheme", ["class-uniform", "lamp"])
def test_prune_model_zeroes_the_pruned_weights(scheme):
    torch.manual_seed(0)
    model = Toy()
    dense = {n: p.detach().clone() for n, p in model.named_parameters()}
    classes, res, masks = prune_model(model, scheme, 0.6, exclude=["fc_out"])
    assert classes == find_weight_classes(model, exclude=["fc_out"])
    tensors = {c: {n: dense[n] for n in ns} for c, ns in classes.items()}
    want = compute_masks(tensors, scheme, 0.6).masks
    assert list(masks.masks) == list(want)
    params = dict(model.named_parameters())
    for n, keep in want.items():
        assert torch.equal(masks.masks[n], keep) and torch.equal(res.masks[n], keep)
        assert torch.equal(params[n].detach(), dense[n] * keep)
    assert torch.equal(params["decoder.fc_out.weight"].detach(), dense["decoder.fc_out.weight"])
    assert masks.sparsity() == pytest.approx(0.6, abs=0.01)


def checkpoint_of(model, updates=40):
    return {"model": {n: t.detach().clone() for n, t in model.state_dict().items()},
            "optimizer_history": [{"num_updates": updates}],
            "extra_state": {"train_iterator": {"epoch": 9, "iterations_in_epoch": 5},
                            "best": 1.5, "other": 1}}


def test_attach_masks_for_a_fresh_retraining_phase():
    torch.manual_seed(0)
    model = Toy()
    _, _, masks = prune_model(model, "class-blind", 0.5)
    state = attach_masks(checkpoint_of(model), masks, "class-blind")
    hs = hook_state_from_checkpoint(state)
    assert hs["scheme"] == "class-blind" and hs["events_done"] == 0
    assert hs["trained_updates"] == 40  # the retraining budget's reference
    assert checkpoint_state.hook_states(state)["pruning"] is hs
    back = MaskSet.from_state_dict(hs["masks"]).masks
    assert all(torch.equal(back[n], m) for n, m in masks.masks.items())
    extra = state["extra_state"]
    assert extra["train_iterator"]["epoch"] == 1
    assert extra["train_iterator"]["iterations_in_epoch"] == 0
    assert "best" not in extra and extra["other"] == 1
    kept = attach_masks(checkpoint_of(model), masks, "class-blind", fresh_start=False)
    assert kept["extra_state"]["train_iterator"]["epoch"] == 9
    assert kept["extra_state"]["best"] == 1.5


def test_check_masks_hold_refuses_revived_or_foreign_masks():
    torch.manual_seed(0)
    model = Toy()
    _, _, masks = prune_model(model, "class-blind", 0.5)
    state = attach_masks(checkpoint_of(model), masks, "class-blind")
    check_masks_hold(state, "p.pt")
    check_masks_hold(checkpoint_of(model), "dense.pt")  # no masks: nothing to check
    n = "encoder.embed_tokens.weight"
    state["model"][n][~masks.masks[n]] = 0.5  # fine-tuned without the masks
    pruned = sum(int((~m).sum()) for m in masks.masks.values())
    with pytest.raises(PruneError, match=rf"p.pt: {int((~masks.masks[n]).sum())} of its {pruned} "
                                         "pruned weights are non-zero again"):
        check_masks_hold(state, "p.pt")
    del state["model"][n]
    with pytest.raises(PruneError, match=f"its pruning mask for {n} matches no weight"):
        check_masks_hold(state, "p.pt")
