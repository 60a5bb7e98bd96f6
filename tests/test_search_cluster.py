"""Cluster storage and Ray workers: PostgreSQL on 127.0.0.1 with 2 worker processes; Ray tasks."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import optuna
import pytest
from helpers import FAST

from unipetl.search import study as studies
from unipetl.search.cli import main

pytestmark = pytest.mark.cluster
PG = os.environ.get("UNIPETL_TEST_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")


def _pg_available() -> bool:
    try:
        import sqlalchemy

        with sqlalchemy.create_engine(PG).connect():
            return True
    except Exception:  # noqa: BLE001
        return False


def _check(url: str, name: str, trials: int) -> None:
    study = studies.load(url, name)
    c = studies.state_counts(study)
    assert c["COMPLETE"] + c["PRUNED"] == trials and c["FAIL"] == c["RUNNING"] == c["WAITING"] == 0
    assert len(study.get_trials()) == trials  # no duplicate, no lost ticket
    assert all(t.user_attrs["record"]["schema"] == 1 for t in study.get_trials())


def test_postgresql_two_workers(data_dir: str) -> None:
    if not _pg_available():
        pytest.fail(f"PostgreSQL is not reachable at {PG}")
    name = f"pg-{uuid.uuid4().hex[:10]}"
    try:
        assert main(["search", "--task", "sst2", "--model", "tiny-bert", "--budget", "5%", "--trials", "4", "--storage", PG, "--study", name,
                     "--data-dir", data_dir, "--workers", "2", "--no-progress", *FAST]) == 0
        _check(PG, name, 4)
    finally:
        optuna.delete_study(study_name=name, storage=PG)


def test_ray_workers_local(data_dir: str, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/ray.db"
    assert main(["search", "--task", "sst2", "--model", "tiny-bert", "--budget", "5%", "--trials", "3", "--storage", url, "--study", "r",
                 "--data-dir", data_dir, "--workers", "2", "--ray", "--no-progress", *FAST]) == 0
    _check(url, "r", 3)
