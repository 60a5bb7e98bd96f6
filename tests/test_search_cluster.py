"""Cluster storage and Ray workers: PostgreSQL on 127.0.0.1 with 2 worker processes; Ray tasks."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import optuna
import pytest
from helpers import FAST, drivers_together, open_together

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


def test_workers_opening_a_new_postgresql_database_together_all_succeed(tmp_path: Path) -> None:
    """Regression: four workers opening one new PostgreSQL database at the same instant raced to
    create its tables; the losers failed ("duplicate key value violates unique constraint
    pg_type_typname_nsp_index", 2 rounds of 2 before the fix). They now open it again."""
    if not _pg_available():
        pytest.fail(f"PostgreSQL is not reachable at {PG}")
    import sqlalchemy

    admin = sqlalchemy.create_engine(PG, isolation_level="AUTOCOMMIT")
    db = f"unipetl_new_{uuid.uuid4().hex[:10]}"
    with admin.connect() as c:
        c.execute(sqlalchemy.text(f"CREATE DATABASE {db}"))
    try:
        url = sqlalchemy.engine.make_url(PG).set(database=db).render_as_string(hide_password=False)
        (tmp_path / "barrier").mkdir()
        open_together(url, 4, tmp_path / "barrier")
        assert studies.study_names(studies.make_storage(url)) == []
    finally:
        with admin.connect() as c:
            c.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        admin.dispose()


def test_drivers_starting_together_on_one_new_postgresql_study_take_turns(tmp_path: Path) -> None:
    """The cluster case of tests/test_search.py's driver race: three drivers on one new
    PostgreSQL study, created together and raised together, give one driver's tickets."""
    if not _pg_available():
        pytest.fail(f"PostgreSQL is not reachable at {PG}")
    name = f"pg-drivers-{uuid.uuid4().hex[:10]}"
    try:
        drivers_together(PG, name, tmp_path)
    finally:
        if name in studies.study_names(studies.make_storage(PG)):
            optuna.delete_study(study_name=name, storage=PG)


def test_the_postgresql_driver_lock_is_per_study_and_dies_with_its_holder() -> None:
    """A driver killed while it holds the lock (an advisory lock of its connection) does not
    leave it held: the server releases it when the connection drops."""
    if not _pg_available():
        pytest.fail(f"PostgreSQL is not reachable at {PG}")
    import signal
    import subprocess
    import sys
    import time

    import sqlalchemy

    from unipetl.search.locks import lock_key, study_lock

    name = f"pg-lock-{uuid.uuid4().hex[:10]}"
    code = (f"from unipetl.search.locks import study_lock\nimport time\nwith study_lock({PG!r}, {name!r}):\n"
            "    print('held', flush=True)\n    time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    engine = sqlalchemy.create_engine(PG, poolclass=sqlalchemy.pool.NullPool)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"

        def free() -> bool:
            with engine.connect() as c:
                got = c.execute(sqlalchemy.text("SELECT pg_try_advisory_lock(:k)"), {"k": lock_key(name)}).scalar()
                if got:
                    c.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": lock_key(name)})
                return bool(got)

        assert not free()  # held by the other process
        t0 = time.perf_counter()
        with study_lock(PG, name + "-other"):  # another study's lock is independent
            pass
        assert time.perf_counter() - t0 < 10
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        deadline = time.monotonic() + 30
        while not free() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert free(), "the killed driver's lock was not released"
        with study_lock(PG, name):  # taken at once now
            assert not free()
        assert free()  # and released on exit
    finally:
        proc.kill()
        engine.dispose()


def test_ray_workers_local(data_dir: str, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/ray.db"
    assert main(["search", "--task", "sst2", "--model", "tiny-bert", "--budget", "5%", "--trials", "3", "--storage", url, "--study", "r",
                 "--data-dir", data_dir, "--workers", "2", "--ray", "--no-progress", *FAST]) == 0
    _check(url, "r", 3)
