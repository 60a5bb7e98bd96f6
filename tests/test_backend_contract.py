"""The backend contract (`unipetl.search.backends`): one suite that every registered backend passes.

Each test runs the same study through local worker processes, Ray tasks and Ray Tune, with the
same stub evaluator plugged in through `UNIPETL_RUNNER` (`contract_runner` below: a few ms per
trial, so the suite measures the backends' bookkeeping, not training). The contract:

- exact trial budget: `trials` COMPLETE + PRUNED design trials, plus the extra seeds where the
  backend has a seed phase (a backend without one refuses `--seeds` > 1);
- record before state: every finished trial carries its record (Optuna refuses attribute writes
  to a finished trial, so a record written after the state would be missing altogether);
- failure replacement: a failed variant gets a fresh ticket, bounded by `max_failures`;
- resume: a run stopped part-way and run again ends at exactly the budget, no ticket trained twice.

The stub learns what to do from `plan.json` in the study's `data_dir` (which reaches the
evaluator in every backend) and appends one line per call to `calls.jsonl` there.
Ray starts once for the module (2 CPUs); the Ray and Tune cases are in the cluster tier.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from unipetl.search import backends
from unipetl.search import study as studies

optuna.logging.set_verbosity(optuna.logging.WARNING)
TESTS = str(Path(__file__).resolve().parent)
RUNNER = "test_backend_contract:contract_runner"
PRESETS = ["lora", "prefix"]
WORKERS = [1]  # of the current case (set by the `backend` fixture)
# (backend, workers): the local backend runs its worker in this process (what `--workers 1` does;
# a worker process pays ~10 s of imports on 2 cores), its processes in one slow case below
BACKEND_CASES = [pytest.param(("local", 1), id="local"), pytest.param(("ray", 2), id="ray", marks=pytest.mark.cluster),
                 pytest.param(("tune", 2), id="tune", marks=pytest.mark.cluster)]
PROCESSES = pytest.param(("local", 2), id="local-processes", marks=pytest.mark.slow)


def contract_runner(attrs: dict[str, Any], variant: Any, report: Any, preset: str | None) -> dict[str, Any]:
    """The stub evaluator: metric 0.6 + a stable per-variant offset + 0.01 · seed; fails the
    variants plan.json names ("fail_presets": named methods by kind, or "fail_all")."""
    from unipetl.evaluators.record import make_record
    from unipetl.spaces.accounting import count

    scratch = Path(attrs["data_dir"])
    plan = json.loads((scratch / "plan.json").read_text())
    seed = int(attrs["train"].get("seed", 0))
    with open(scratch / "calls.jsonl", "a") as fh:  # one short line per call: an atomic append
        fh.write(json.dumps({"variant": preset or variant.describe(), "seed": seed, "pid": os.getpid()}) + "\n")
    time.sleep(plan.get("sleep", 0.02))
    failed = plan.get("fail_all") or (preset or "").split(":")[0] in plan.get("fail_presets", [])
    c = count(variant, studies.model_shape(attrs["model"]))
    metric = None if failed else 0.6 + (sum(map(ord, variant.describe())) % 97) / 500 + 0.01 * seed
    if metric is not None:
        report(1, metric)
    return make_record(status="failed" if failed else "ok", error="stub failure" if failed else None, task=attrs["task"], model=attrs["model"],
                       variant=variant.to_dict(), variant_description=variant.describe(), preset=preset, paper_params=c.paper_params,
                       trainable_params=c.trainable_params, base_params=c.base_params, paper_fraction=c.paper_params / c.base_params,
                       metrics={} if failed else {"accuracy": metric}, main_metric="accuracy", higher_is_better=True, metric=metric, seed=seed,
                       fidelity="final", train_settings=dict(attrs["train"]))


@pytest.fixture(scope="module")
def ray_once() -> Any:
    """One local Ray for the module's Ray and Tune cases; its workers load the stub evaluator."""
    import ray

    env = {"UNIPETL_RUNNER": RUNNER, "PYTHONPATH": os.pathsep.join(p for p in (TESTS, os.environ.get("PYTHONPATH")) if p),
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
    yield ray
    ray.shutdown()


@pytest.fixture
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> backends.Backend:
    monkeypatch.setenv("UNIPETL_RUNNER", RUNNER)  # local worker processes inherit the environment
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (TESTS, os.environ.get("PYTHONPATH")) if p))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    name, workers = request.param
    if name != "local":
        request.getfixturevalue("ray_once")
    WORKERS[0] = workers
    return backends.get(name)


def _study(tmp_path: Path, backend: backends.Backend, *, trials: int, seeds: int = 1, max_failures: int | None = None, **plan: Any) -> str:
    """A fresh budget study of a tiny BERT whose `data_dir` is the stub's scratch directory; returns its URL."""
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    url = f"sqlite:///{tmp_path}/contract.db"
    spec = studies.StudySpec(task="sst2", model="tiny-bert", budget="5%", trials=trials, storage=url, study="c", seeds=seeds, pruner="none",
                             max_failures=max_failures, space={"presets": PRESETS}, data_dir=str(tmp_path))
    study = studies.create_or_check(spec, heartbeat_interval=1, grace_period=5)
    if backend.name == "tune":
        from unipetl.search.tune_backend import prepare_study

        prepare_study(study, url)
    return url


def _run(url: str, backend: backends.Backend, max_trials: int | None = None) -> bool:
    options = backends.RunOptions(workers=WORKERS[0], address="local", heartbeat_interval=1, grace_period=5, max_trials=max_trials)
    return backends.run_study(backend, url, "c", options)


def _calls(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _check(url: str, tmp_path: Path, backend: backends.Backend, *, trials: int) -> optuna.Study:
    """What every finished study holds: the exact budget, records before states, one call per started trial."""
    study = studies.load(url, "c")
    c, design = studies.state_counts(study), studies.state_counts(study, design_only=True)
    assert design["COMPLETE"] + design["PRUNED"] == trials, design
    assert c["COMPLETE"] + c["PRUNED"] == studies.target(study) and c["RUNNING"] == c["WAITING"] == 0, c
    if backend.seed_phase and study.user_attrs["seeds"] > 1:
        assert study.user_attrs["seed_trials"] > 0 and c["COMPLETE"] + c["PRUNED"] == trials + study.user_attrs["seed_trials"]
    _check_records(study)
    started = [t for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING]
    assert len(_calls(tmp_path)) == len(started)  # each ticket trained once: no duplicates, no lost evaluation
    pairs = [(t.user_attrs["parent"], t.user_attrs["seed_index"]) for t in started if studies.is_seed_trial(t) and t.state != TrialState.FAIL]
    assert len(pairs) == len(set(pairs))
    return study


def _check_records(study: optuna.Study) -> None:
    for t in study.get_trials(deepcopy=False):
        rec = t.user_attrs.get("record")
        if t.state == TrialState.COMPLETE:
            assert rec and rec["status"] == "ok" and math.isfinite(rec["metric"]) and t.values[0] == rec["metric"], t.number
        elif t.state == TrialState.FAIL:
            assert rec and rec["status"] == "failed" and rec["error"], t.number
        elif t.state == TrialState.PRUNED:
            assert rec and rec["status"] == "pruned", t.number


@pytest.mark.parametrize("backend", [*BACKEND_CASES, PROCESSES], indirect=True)
def test_exact_trial_budget_with_records(tmp_path: Path, backend: backends.Backend) -> None:
    seeds = 2 if backend.seed_phase else 1
    url = _study(tmp_path, backend, trials=4, seeds=seeds)
    assert _run(url, backend) is True
    study = _check(url, tmp_path, backend, trials=4)
    assert studies.state_counts(study)["FAIL"] == 0
    named = Counter(t.user_attrs.get("preset", "").split(":")[0] for t in study.get_trials() if not studies.is_seed_trial(t))
    assert all(named[p] == 1 for p in PRESETS), named  # the named methods' tickets ran once each
    assert _run(url, backend) is True and len(_calls(tmp_path)) == len(study.get_trials())  # a finished study runs nothing more


@pytest.mark.parametrize("backend", BACKEND_CASES, indirect=True)
def test_failed_variant_gets_a_replacement_ticket(tmp_path: Path, backend: backends.Backend) -> None:
    url = _study(tmp_path, backend, trials=3, max_failures=2, fail_presets=["lora"])
    assert _run(url, backend) is True
    study = _check(url, tmp_path, backend, trials=3)
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert [t.user_attrs["record"]["error"] for t in failed] == ["stub failure"] * 2 and all(t.user_attrs["preset"].startswith("lora") for t in failed)
    assert len(study.get_trials()) == 5  # the three tickets, the named method once more, then a blank ticket


@pytest.mark.parametrize("backend", BACKEND_CASES, indirect=True)
def test_failures_are_bounded_by_max_failures(tmp_path: Path, backend: backends.Backend) -> None:
    url = _study(tmp_path, backend, trials=2, max_failures=1, fail_all=True)
    assert _run(url, backend) is False
    study = studies.load(url, "c")
    c = studies.state_counts(study)
    assert c["COMPLETE"] == c["PRUNED"] == c["RUNNING"] == c["WAITING"] == 0, c
    assert 1 < c["FAIL"] <= 2 + 1 and len(study.get_trials()) == c["FAIL"]  # replacements tried, never past max_failures
    assert len(_calls(tmp_path)) == c["FAIL"]
    _check_records(study)


@pytest.mark.parametrize("backend", BACKEND_CASES, indirect=True)
def test_stopped_run_resumes_to_the_exact_budget(tmp_path: Path, backend: backends.Backend) -> None:
    seeds = 2 if backend.seed_phase else 1
    url = _study(tmp_path, backend, trials=4, seeds=seeds)
    assert _run(url, backend, max_trials=2) is False  # stopped in the design phase
    c = studies.state_counts(studies.load(url, "c"))
    assert c["COMPLETE"] == 2 and c["WAITING"] == 2 and len(_calls(tmp_path)) == 2, c
    # stopped again: in the seed phase where there is one (the design trials need 2 of the 3)
    assert _run(url, backend, max_trials=3) is (not backend.seed_phase)
    assert len(_calls(tmp_path)) == (5 if backend.seed_phase else 4)
    assert _run(url, backend) is True
    _check(url, tmp_path, backend, trials=4)


def test_a_backend_without_a_seed_phase_refuses_extra_seeds(tmp_path: Path, data_dir: str, capsys: pytest.CaptureFixture[str]) -> None:
    from unipetl.search.cli import main

    url = f"sqlite:///{tmp_path}/s.db"
    without = [name for name in backends.BACKENDS.names() if not backends.get(name).seed_phase]
    assert without == ["tune"]  # the CLI's --backend tune; update the command below when this changes
    argv = ["search", "--task", "sst2", "--model", "tiny-bert", "--budget", "5%", "--trials", "2", "--storage", url, "--study", "x",
            "--data-dir", data_dir, "--backend", "tune", "--no-progress"]
    assert main([*argv, "--seeds", "2"]) == 2
    assert "`seeds` 2 needs a seed phase, which --backend tune does not run" in capsys.readouterr().err
    assert "x" not in studies.study_names(studies.make_storage(url))  # refused before anything was written
    # without --seeds, a Tune study takes one seed (the bundled study files ask for 3)
    from unipetl.search.cli import build_parser
    from unipetl.search.commands.search import build_spec

    spec = build_spec(build_parser()[0].parse_args(argv))
    assert spec.seeds == 1
