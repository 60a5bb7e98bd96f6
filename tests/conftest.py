"""Fixtures shared by the test modules; shared constants and functions are in helpers.py."""

from __future__ import annotations

import os

import pytest
from helpers import write_tiny_sst2

# The tests start and stop several local Ray clusters in one process. Recent Ray enables token
# authentication by default for a new local cluster (it sets RAY_AUTH_MODE=token in the driver
# and writes ~/.ray/auth_token); a later start in the same process could then launch its GCS in
# token mode while the driver's cached config still said "disabled" ("InvalidAuthToken", seen in a
# full CI run). One explicit mode for the whole session, set before anything imports Ray, keeps
# driver and GCS agreeing. These clusters listen on this machine only and live for one test.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A small SST-2 layout (sst2/train.jsonl, sst2/dev.jsonl) with a learnable signal."""
    return write_tiny_sst2(tmp_path_factory.mktemp("data"))
