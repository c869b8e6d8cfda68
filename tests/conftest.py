"""Shared fixtures (helpers live in tests/helpers.py)."""
import pytest

from fairseq_efficiency.data.prepare import prepare
from tests.helpers import TINY, run_cli, train_args


@pytest.fixture(scope="session")
def tiny_data_bin(tmp_path_factory):
    """A 600-pair data-bin (built once per test session)."""
    return prepare(str(tmp_path_factory.mktemp("tiny")), TINY)


@pytest.fixture(scope="session")
def real_run(tiny_data_bin, tmp_path_factory):
    """One tiny plain-fairseq run (2 epochs, json log every 2 updates) with a generate output
    (read by the report's tests, never written to)."""
    d = tmp_path_factory.mktemp("real") / "baseline.seed1"
    args = train_args(tiny_data_bin, d, "--max-epoch", "2", "--no-epoch-checkpoints")
    args[args.index("simple")] = "json"
    args[args.index("--log-interval") + 1] = "2"
    res = run_cli("fairseq_cli.train", args)
    (d / "train.log").write_text(res.stdout + res.stderr)
    (d / "generate-test.txt").write_text("S-0\ta b\nGenerate test with beam=4: BLEU = 12.34 40/20\n")
    return d


def pytest_collection_modifyitems(config, items):
    """``gpu``-marked tests are skipped when torch sees no CUDA device."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@pytest.fixture
def cuda_exact():
    """CUDA matmuls and cuDNN RNNs in full fp32 (no TF32), so results compare to the CPU's."""
    import torch

    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
