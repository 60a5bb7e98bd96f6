"""Pruning in budget mode: the study's pruner stops trials through the evaluator's intermediate
reports; pruned trials are PRUNED with a "pruned" / "partial" record and count toward --trials."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import optuna
import pytest
from helpers import search_args

from unipetl.search import study as studies
from unipetl.search.cli import main
from unipetl.search.worker import run_worker

optuna.logging.set_verbosity(optuna.logging.WARNING)
os.environ.setdefault("HF_HUB_OFFLINE", "1")


class PruneAfterFirstReport(optuna.pruners.BasePruner):
    """Prunes every trial as soon as it has reported once."""

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return trial.last_step is not None


@pytest.fixture
def always_prune(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inject the pruner through the study's pruner setting (what `studies.load` builds)."""
    real = studies.make_pruner
    monkeypatch.setattr(studies, "make_pruner", lambda attrs: PruneAfterFirstReport() if attrs["mode"] == "budget" else real(attrs))


def test_pruned_trials_are_recorded_partial_and_count_toward_trials(tmp_path: Path, data_dir: str, always_prune: None,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path}/p.db"
    args = search_args(url, "p", data_dir, "--study-file", str(_file(tmp_path, "[lora]")), trials=3)
    args[args.index("--max-steps") + 1] = "4"  # 4 steps, evaluated at every step: a pruned trial stops after step 1
    assert main(args) == 0
    study = studies.load(url, "p")
    trials = study.get_trials()
    assert len(trials) == 3 and [t.state.name for t in trials] == ["PRUNED"] * 3  # the budget, no extra tickets
    assert trials[0].user_attrs["preset"].startswith("lora:")
    for t in trials:
        rec = t.user_attrs["record"]
        assert rec["status"] == "pruned" and rec["fidelity"] == "partial" and rec["error"] is None
        assert rec["train_settings"]["steps"] == 1 and [p["step"] for p in rec["curve"]] == [1] and rec["best_step"] == 1
        assert rec["metric"] == rec["curve"][0]["metrics"]["accuracy"] == t.intermediate_values[1]
        assert t.values == [t.intermediate_values[1]]  # Optuna keeps a pruned trial's last report; only COMPLETE trials reach reports
    capsys.readouterr()
    assert main(["status", "--storage", url, "--study", "p", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["states"] == {"COMPLETE": 0, "FAIL": 0, "PRUNED": 3, "RUNNING": 0, "WAITING": 0} and s["best"] is None and s["pareto"] == []
    # the budget is held: resuming a study whose tickets all ended PRUNED runs nothing more
    assert main(["resume", "--storage", url, "--study", "p", "--no-progress"]) == 0
    assert len(studies.load(url, "p").get_trials()) == 3


def test_frontier_studies_are_never_pruned(tmp_path: Path, data_dir: str, always_prune: None) -> None:
    url = f"sqlite:///{tmp_path}/f.db"
    assert main(search_args(url, "f", data_dir, "--mode", "frontier", "--study-file", str(_file(tmp_path, "[lora]")), trials=2)) == 0
    study = studies.load(url, "f")
    assert [t.state.name for t in study.get_trials()] == ["COMPLETE"] * 2
    assert all(t.user_attrs["record"]["fidelity"] == "final" and t.intermediate_values == {} for t in study.get_trials())


def _file(tmp_path: Path, presets: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(f"space:\n  presets: {presets}\n")
    return path


def _runner(values: list[float]) -> Any:
    """A stand-in evaluator: trial k reports values[k] at steps 1 and 2 and stops when told to,
    as evaluators.train does (a pruned trial's record is "pruned" / "partial")."""
    calls = {"n": 0}

    def run(attrs: dict[str, Any], variant: Any, report: Any, preset: str | None) -> dict[str, Any]:
        v = values[calls["n"]]
        calls["n"] += 1
        curve = []
        for step in (1, 2):
            curve.append({"step": step, "loss": 0.0, "metrics": {"accuracy": v}})
            if report(step, v):
                return {"schema": 1, "status": "pruned", "metric": v, "curve": curve, "fidelity": "partial", "paper_fraction": 0.01}
        return {"schema": 1, "status": "ok", "metric": v, "curve": curve, "fidelity": "final", "paper_fraction": 0.01}

    return run


def test_median_pruner_of_the_study_prunes_below_the_median(tmp_path: Path) -> None:
    """The default `pruner: median` (3 startup trials): a trial worse than the median of the
    earlier trials at the same step is pruned at its first report; a better one completes."""
    url = f"sqlite:///{tmp_path}/m.db"
    spec = studies.StudySpec(seeds=1, task="sst2", model="tiny-bert", budget="5%", trials=6, storage=url, study="m", space={"presets": []})
    studies.create_or_check(spec)
    values = [0.6, 0.7, 0.8, 0.5, 0.9, 0.65]
    assert run_worker(url, "m", runner=_runner(values), poll_seconds=0.1) == 6
    study = studies.load(url, "m")
    assert [t.state.name for t in study.get_trials()] == ["COMPLETE"] * 3 + ["PRUNED", "COMPLETE", "PRUNED"]
    pruned = study.get_trials(states=(optuna.trial.TrialState.PRUNED,))
    assert [t.intermediate_values for t in pruned] == [{1: 0.5}, {1: 0.65}]  # stopped at the first report
    assert all(t.user_attrs["record"]["status"] == "pruned" and t.user_attrs["record"]["fidelity"] == "partial" for t in pruned)
    assert studies.finished(study) == 6 and studies.state_counts(study)["WAITING"] == 0
    assert study.best_value == 0.9
