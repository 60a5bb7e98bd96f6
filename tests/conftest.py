"""Fixtures shared by the test modules; shared constants and functions are in helpers.py."""

from __future__ import annotations

import pytest
from helpers import write_tiny_sst2


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A small SST-2 layout (sst2/train.jsonl, sst2/dev.jsonl) with a learnable signal."""
    return write_tiny_sst2(tmp_path_factory.mktemp("data"))
