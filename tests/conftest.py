"""Shared fixtures (helpers live in tests/helpers.py)."""
import pytest

from fairseq_efficiency.data.prepare import prepare
from tests.helpers import TINY


@pytest.fixture(scope="session")
def tiny_data_bin(tmp_path_factory):
    """A 600-pair data-bin (built once per test session)."""
    return prepare(str(tmp_path_factory.mktemp("tiny")), TINY)


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
