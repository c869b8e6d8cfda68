"""Shared fixtures (helpers live in tests/helpers.py)."""
import pytest

from fairseq_efficiency.data.prepare import prepare
from tests.helpers import TINY


@pytest.fixture(scope="session")
def tiny_data_bin(tmp_path_factory):
    """A 600-pair data-bin (built once per test session)."""
    return prepare(str(tmp_path_factory.mktemp("tiny")), TINY)
