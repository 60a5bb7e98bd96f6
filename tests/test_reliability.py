"""Crashes and dead nodes: after resume the study holds exactly its trials.

- `test_crash_at_random_points_*`: 20 iterations against SQLite and against PostgreSQL. Each
  starts a driver (`unipetl search`) or a worker (`python -m unipetl.search.worker`) process and SIGKILLs
  it at a point drawn from a seeded RNG: during study creation, during training, during the
  storage write of the result, or between trials. Then the same search is run again (`search`
  when creation never finished, else `resume`) and the study must hold exactly `--trials`
  COMPLETE trials, each with a complete record, none lost and none counted twice.
  The evaluator is `helpers.crash_runner`, plugged in through the documented `UNIPETL_RUNNER`
  hook: it "trains" for a few hundred ms and returns a full record, so 20 iterations fit in
  a minute or two; the fault handling under test is the worker's and the storage's, not the model's.
- `test_ray_two_node_cluster_node_dies_mid_trial`: a head and a second Ray node started with
  `ray start` (one CPU each), one worker task per node with the real evaluator on a tiny BERT;
  the second node is killed mid-trial; the study still reaches its budget and the killed trial
  is retried with the same parameters.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import optuna
import pytest
from helpers import CRASH_RUNNER, NEG, POS

from unipetl.search import study as studies
from unipetl.search.cli import main

optuna.logging.set_verbosity(optuna.logging.WARNING)
ROOT = Path(__file__).resolve().parents[1]
PG = os.environ.get("UNIPETL_TEST_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")
TRIALS = 2
HB = ["--heartbeat-interval", "1", "--grace-period", "2"]
KILL_POINTS = ("creation", "training", "storage_write", "between_trials")


def _env(**extra: str) -> dict[str, str]:
    return dict(os.environ, UNIPETL_RUNNER=CRASH_RUNNER, PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), str(ROOT)]),
                OMP_NUM_THREADS="1", **extra)


def _counts(url: str, name: str) -> dict[str, int] | None:
    try:
        return studies.state_counts(studies.load(url, name))
    except Exception:  # noqa: BLE001 - the study may not exist yet / be half-created
        return None


def _wait(cond: Any, proc: subprocess.Popen[bytes], timeout: float = 60) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if cond():
            return True
        time.sleep(0.02)
    return False


def _search_argv(url: str, name: str) -> list[str]:
    return ["search", "--task", "sst2", "--model", "tiny-bert", "--budget", "5%", "--trials", str(TRIALS), "--storage", url, "--study", name,
            "--pruner", "none", "--seeds", "1", "--no-progress", *HB]


def _one_crash(url: str, name: str, point: str, rng: random.Random) -> None:
    if point == "creation":  # the driver dies while it creates the study or starts its first trial
        cmd = [sys.executable, "-m", "unipetl.search.cli", *_search_argv(url, name)]
        proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, 2.5))
    else:
        studies.create_or_check(studies.StudySpec(seeds=1, task="sst2", model="tiny-bert", budget="5%", trials=TRIALS, storage=url, study=name,
                                                  space={"presets": ["lora", "pa-ffn"]}, pruner="none"))
        extra = {"UNIPETL_TEST_KILL_AFTER_MS": f"{rng.uniform(0, 15):.1f}"} if point == "storage_write" else {}
        cmd = [sys.executable, "-m", "unipetl.search.worker", "--storage", url, "--study", name, *HB]
        proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(**extra), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        done_before = rng.randrange(TRIALS)  # crash in / after the (k+1)-th trial
        if point == "training":
            _wait(lambda: (c := _counts(url, name)) is not None and c["COMPLETE"] >= done_before and c["RUNNING"] > 0, proc)
            time.sleep(rng.uniform(0.0, 0.25))
        elif point == "between_trials":
            _wait(lambda: (c := _counts(url, name)) is not None and c["COMPLETE"] > done_before, proc)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def _recover(url: str, name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("UNIPETL_RUNNER", CRASH_RUNNER)
    monkeypatch.delenv("UNIPETL_TEST_KILL_AFTER_MS", raising=False)
    monkeypatch.setenv("UNIPETL_TEST_TRAIN_MS", "50")
    time.sleep(2.2)  # past the grace period: a killed trial is stale now
    code = main(["resume", "--storage", url, "--study", name, "--no-progress", *HB])
    if code == 2:  # the driver died before the study was fully created: the same search again
        assert "never fully created" in capsys.readouterr().err or _counts(url, name) is None
        code = main(_search_argv(url, name))
    assert code == 0


def _check(url: str, name: str, point: str) -> None:
    from unipetl.evaluators.record import RECORD_KEYS

    study = studies.load(url, name)
    c = studies.state_counts(study)
    assert c["COMPLETE"] == TRIALS and c["RUNNING"] == c["WAITING"] == c["PRUNED"] == 0, (point, c)
    trials = study.get_trials()
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    for t in done:
        rec = t.user_attrs["record"]
        assert set(RECORD_KEYS) <= set(rec) and rec["status"] == "ok" and t.values == [rec["metric"]], (point, t.number)
        assert t.user_attrs["paper_params"] > 0 and t.user_attrs["variant_description"] == rec["variant_description"]
    # nothing lost or counted twice: each enqueued preset completed once; each failed trial has one retry
    presets = [t.user_attrs.get("preset") for t in done if t.user_attrs.get("preset")]
    assert len(presets) == len(set(presets)), (point, presets)
    for f in (t for t in trials if t.state == optuna.trial.TrialState.FAIL):
        retries = [t for t in trials if t.system_attrs.get("failed_trial") == f.number]
        assert len(retries) == 1 and retries[0].user_attrs.get("preset") == f.user_attrs.get("preset"), (point, f.number)


def _crash_loop(url: str, tag: str, seed: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], cleanup: Any = None) -> None:
    rng = random.Random(seed)
    seen: dict[str, int] = dict.fromkeys(KILL_POINTS, 0)
    t0 = time.time()
    for i in range(20):
        point = KILL_POINTS[i % len(KILL_POINTS)]
        name = f"crash-{tag}-{i}-{uuid.uuid4().hex[:6]}"
        try:
            _one_crash(url, name, point, rng)
            _recover(url, name, monkeypatch, capsys)
            _check(url, name, point)
            seen[point] += 1
        finally:
            if cleanup:
                cleanup(name)
    print(f"{tag}: 20 crash/resume iterations in {time.time() - t0:.0f} s ({seen})")
    assert all(n == 5 for n in seen.values())


@pytest.mark.slow
def test_crash_at_random_points_sqlite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "tests"))
    _crash_loop(f"sqlite:///{tmp_path}/crash.db", "sqlite", 8, monkeypatch, capsys)


@pytest.mark.cluster
def test_crash_at_random_points_postgresql(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "tests"))

    def drop(name: str) -> None:
        try:
            optuna.delete_study(study_name=name, storage=PG)
        except KeyError:
            pass

    _crash_loop(PG, "pg", 88, monkeypatch, capsys, cleanup=drop)


# --- a 2-node Ray cluster on this machine ----------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_node(args: list[str], temp: str) -> subprocess.Popen[bytes]:
    """`ray start ... --block` in its own session, so the node (raylet and its workers) can be killed as one group."""
    ray = str(Path(sys.executable).with_name("ray"))
    cmd = [ray, "start", "--block", "--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--num-gpus", "0", "--dashboard-agent-listen-port", str(_free_port()),
           "--metrics-export-port", str(_free_port()), *args]
    # token auth off for this private loopback cluster: a ~/.ray/auth_token left by another Ray
    # start would otherwise switch the head to token mode and lock out the second node
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", RAY_TMPDIR=temp, RAY_AUTH_MODE="disabled")
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


@pytest.mark.cluster
@pytest.mark.timeout(300)
def test_ray_two_node_cluster_node_dies_mid_trial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    from unipetl.search.ray_backend import run_ray_workers

    data = _tiny_sst2(tmp_path / "data")
    url = f"sqlite:///{tmp_path}/ray.db"  # both nodes share this machine's file system
    spec = studies.StudySpec(seeds=1, task="sst2", model="tiny-bert", budget="5%", trials=4, storage=url, study="ray2", data_dir=data, pruner="none",
                             space={"presets": ["lora", "pa-ffn"]},
                             train={"max_train_examples": 48, "max_eval_examples": 16, "max_steps": 120, "batch_size": 8, "max_length": 16, "eval_every": 120})
    studies.create_or_check(spec)
    temp = tempfile.mkdtemp(prefix="ur", dir="/tmp")
    port = _free_port()
    head = _ray_node(["--head", "--port", str(port), "--include-dashboard", "false",
                      "--temp-dir", temp], temp)
    nodes = [head]
    try:
        deadline = time.time() + 90
        while True:  # the head's GCS port accepts connections once it is up
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.time() < deadline and head.poll() is None, "the Ray head did not start"
            time.sleep(0.5)
        second = _ray_node(["--address", f"127.0.0.1:{port}"], temp)
        nodes.append(second)
        monkeypatch.chdir(ROOT)
        monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
        ray.init(address=f"127.0.0.1:{port}", include_dashboard=False, log_to_driver=False)
        deadline = time.time() + 60
        while len([n for n in ray.nodes() if n["Alive"]]) < 2:
            assert time.time() < deadline, "the second Ray node did not join"
            time.sleep(1)
        print("2 nodes alive", flush=True)
        box: dict[str, Any] = {}
        driver = threading.Thread(target=lambda: box.update(ran=run_ray_workers(url, "ray2", workers=2, cpus_per_trial=1.0, heartbeat_interval=1,
                                                                                 grace_period=4)))
        driver.start()
        deadline = time.time() + 150
        while (c := _counts(url, "ray2")) is None or c["RUNNING"] < 2:  # one trial running on each node
            assert time.time() < deadline and driver.is_alive(), c
            time.sleep(0.2)
        print("both nodes run a trial:", c, flush=True)
        time.sleep(1.0)
        _kill_group(second)  # the second node dies mid-trial
        killed_at = time.time()
        driver.join(timeout=170)
        assert not driver.is_alive(), "the study did not finish after the node died"
        print(f"study finished {time.time() - killed_at:.0f} s after the node died; tasks ran {box.get('ran')}")
    finally:
        if ray.is_initialized():
            ray.shutdown()
        for proc in reversed(nodes):
            _kill_group(proc)
        shutil.rmtree(temp, ignore_errors=True)
    study = studies.load(url, "ray2")
    c = studies.state_counts(study)
    assert c["COMPLETE"] == 4 and c["RUNNING"] == c["WAITING"] == 0 and c["FAIL"] == 1, c
    trials = study.get_trials()
    dead = [t for t in trials if t.state == optuna.trial.TrialState.FAIL][0]
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == dead.number]
    assert len(retry) == 1 and retry[0].state == optuna.trial.TrialState.COMPLETE
    assert retry[0].params == dead.params and retry[0].user_attrs.get("preset") == dead.user_attrs.get("preset")
    presets = [t.user_attrs.get("preset") for t in trials if t.state == optuna.trial.TrialState.COMPLETE and t.user_attrs.get("preset")]
    assert len(presets) == len(set(presets)) == 2  # nothing counted twice
    assert all(t.user_attrs["record"]["status"] == "ok" for t in trials if t.state == optuna.trial.TrialState.COMPLETE)


def _tiny_sst2(root: Path) -> str:
    import json

    rng = random.Random(0)
    (root / "sst2").mkdir(parents=True)
    for split, n in (("train", 64), ("dev", 32)):
        with open(root / "sst2" / f"{split}.jsonl", "w") as fh:
            for i in range(n):
                words = rng.choices(POS if i % 2 else NEG, k=3) + rng.choices(["the", "movie", "was"], k=3)
                fh.write(json.dumps({"sentence": " ".join(words), "label": i % 2}) + "\n")
    return str(root)
