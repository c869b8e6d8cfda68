"""Checkpoints of the plugin's architectures load by their registered names, wherever the
model classes live: a checkpoint stores the arch name and weights, never a module path."""
import pytest
import torch
from fairseq import checkpoint_utils

import fairseq_efficiency  # noqa: F401  (registers the architectures)
from tests.helpers import run_cli, train_args
from tests.parallel.test_cli import _args as hybrid_args

TASK = ["--task", "translation_efficiency", "--criterion", "cross_entropy"]
RUNS = {
    "lstm_meprop": ("fairseq_efficiency.meprop.lstm_meprop", "LSTMMePropModel"),
    "hybrid_lstm": ("fairseq_efficiency.parallel.hybrid_lstm", "HybridLSTMModel"),
}


@pytest.fixture(scope="module")
def checkpoints(tiny_data_bin, tmp_path_factory):
    """One-update checkpoints trained with the flags of the plugin's first releases."""
    d = tmp_path_factory.mktemp("compat")
    meprop = train_args(tiny_data_bin, d / "lstm_meprop", *TASK, "--meprop-k", "4",
                        "--meprop-alternate", "--max-update", "1")
    meprop[meprop.index("--arch") + 1] = "lstm_meprop"
    run_cli("fairseq_cli.train", meprop)
    run_cli("fairseq_cli.train", hybrid_args(tiny_data_bin, d / "hybrid_lstm", "--max-update", "1"))
    return {arch: str(d / arch / "checkpoint_last.pt") for arch in RUNS}


@pytest.mark.parametrize("arch", sorted(RUNS))
def test_checkpoint_loads_through_fairseq(checkpoints, arch, tiny_data_bin):
    path = checkpoints[arch]
    saved = torch.load(path, map_location="cpu", weights_only=False)
    assert saved["cfg"]["model"]["_name"] == arch
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task(
        [path], arg_overrides={"data": tiny_data_bin})
    model = models[0]
    assert (type(model).__module__, type(model).__name__) == RUNS[arch]
    assert cfg.model._name == arch and cfg.task._name == "translation_efficiency"
    state = model.state_dict()
    assert state.keys() == saved["model"].keys()
    for name, tensor in saved["model"].items():
        assert torch.equal(state[name], tensor), name
    model.eval()
    task.load_dataset("valid")
    ds = task.dataset("valid")
    sample = ds.collater([ds[i] for i in range(4)])
    with torch.no_grad():
        logits = model(**sample["net_input"])[0]
    assert logits.shape[:2] == sample["target"].shape and torch.isfinite(logits).all()
