"""Load: 4 worker processes on one PostgreSQL study, 2 on one SQLite study, 200 trials.

The evaluator is the stub `helpers.crash_runner` (sleeps ~0.3 s, returns a complete
record), plugged in through the documented `UNIPETL_RUNNER` hook, so the storage is what is
under load. Every worker must exit cleanly, the study must end with exactly 200 COMPLETE trials
and no FAIL, and the stub must have been called exactly 200 times (no ticket run twice, none
lost). Throughput is printed.

SQLite lock handling (see docs/operations.md): the engine waits up to 120 s for the file lock
(`connect_args={"timeout": 120}`, SQLite's busy timeout), and the worker retries a storage call
that still fails with "database is locked" (the deadlock case where SQLite returns at once)
with a growing pause (`unipetl.search.worker._retry_locked`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
from helpers import CRASH_RUNNER

from unipetl.search import study as studies

optuna.logging.set_verbosity(optuna.logging.WARNING)
ROOT = Path(__file__).resolve().parents[1]
PG = os.environ.get("UNIPETL_TEST_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")
N = 200


def _load(url: str, name: str, workers: int, tmp_path: Path) -> float:
    studies.create_or_check(studies.StudySpec(seeds=1, task="sst2", model="tiny-bert", budget="5%", trials=N, storage=url, study=name,
                                              space={"presets": ["lora", "pa-ffn", "prefix"]}, pruner="none", sampler="random"))
    log = tmp_path / "calls.log"
    env = dict(os.environ, UNIPETL_RUNNER=CRASH_RUNNER, UNIPETL_TEST_TRAIN_MS="300", UNIPETL_TEST_CALL_LOG=str(log),
               PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), str(ROOT)]), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "unipetl.search.worker", "--storage", url, "--study", name, "--heartbeat-interval", "2", "--grace-period", "20"]
    t0 = time.time()
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(workers)]
    outs = [p.communicate(timeout=600) for p in procs]
    wall = time.time() - t0
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0 and "Traceback" not in err and "ERROR" not in err, err[-2000:]
    study = studies.load(url, name)
    c = studies.state_counts(study)
    assert c == {"COMPLETE": N, "FAIL": 0, "PRUNED": 0, "RUNNING": 0, "WAITING": 0}, c
    trials = study.get_trials()
    assert len(trials) == N and len({t.number for t in trials}) == N and all(t.user_attrs["record"]["status"] == "ok" for t in trials)
    calls = log.read_text().splitlines()
    assert len(calls) == N  # each ticket evaluated exactly once
    assert len({line.split()[0] for line in calls}) == workers  # every worker took part
    rate = N / wall
    print(f"\nload {url.split(':')[0]}: {workers} workers, {N} trials of 0.3 s in {wall:.1f} s = {rate:.1f} trials/s "
          f"(ideal {workers / 0.3:.1f}/s)")
    return rate


@pytest.mark.cluster
def test_postgresql_four_workers_200_trials(tmp_path: Path) -> None:
    name = f"load-{uuid.uuid4().hex[:8]}"
    try:
        _load(PG, name, 4, tmp_path)  # correctness under load; the printed throughput is information (speed lives in benchmarks/)
    finally:
        optuna.delete_study(study_name=name, storage=PG)


@pytest.mark.slow
def test_sqlite_two_workers_200_trials(tmp_path: Path) -> None:
    _load(f"sqlite:///{tmp_path}/load.db", "load", 2, tmp_path)
