"""Trials that fail: NaN loss, an exception in the model, CPU / CUDA out-of-memory.

The real evaluator fine-tunes a tiny BERT; the fault is injected into the model's code
(`BertOutput.forward`, i.e. a bug or an allocation failure inside a transformer layer) with the
real exception types. Each failure must be recorded as FAIL with the reason, the worker must go
on to finish the trial budget, and reports must show the failure and never put it on a frontier.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from transformers.models.bert import modeling_bert

from unipetl.reports.build import build_sections
from unipetl.reports.html import render
from unipetl.reports.load import load_studies
from unipetl.search import study as studies
from unipetl.search.worker import run_worker

optuna.logging.set_verbosity(optuna.logging.WARNING)
TRAIN = {"max_train_examples": 48, "max_eval_examples": 24, "max_steps": 3, "batch_size": 8, "eval_every": 1, "max_length": 16}


def _fault(kind: str) -> Exception | None:
    return {
        "exception": ValueError("broken module: shape mismatch in adapter"),
        "cuda_oom": torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 79.10 GiB total capacity)"),
        "cpu_oom": RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried to allocate 68719476736 bytes. Error code 12 (Cannot allocate memory)"),
        "memory_error": MemoryError("out of host memory"),
    }.get(kind)


FAULTS = [  # (kind, the reason the record must carry), one per trial, in this order
    ("nan", "loss became nan"),
    ("exception", "ValueError: broken module"),
    ("cuda_oom", "OutOfMemoryError: CUDA out of memory"),
    ("cpu_oom", "RuntimeError: [enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"),
    ("memory_error", "MemoryError: out of host memory"),
]


def _inject(monkeypatch: pytest.MonkeyPatch, kinds: list[str]) -> dict[str, int]:
    """Make the 2nd training step of each of the first len(kinds) trials fail, one kind each."""
    original = modeling_bert.BertOutput.forward
    state = {"train_calls": 0, "faults": 0}

    def forward(self: Any, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        out = original(self, hidden_states, input_tensor)
        if self.training and state["faults"] < len(kinds):
            state["train_calls"] += 1
            if state["train_calls"] > 2:  # step 1 (2 layers) and its evaluation pass first
                kind = kinds[state["faults"]]
                state["faults"] += 1
                state["train_calls"] = 0
                err = _fault(kind)
                if err is not None:
                    raise err
                return out * float("nan")
        return out

    monkeypatch.setattr(modeling_bert.BertOutput, "forward", forward)
    return state


def test_failed_trials_are_recorded_and_the_worker_goes_on(tmp_path: Path, data_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path}/f.db"
    spec = studies.StudySpec(seeds=1, task="sst2", model="tiny-bert", budget="5%", trials=1, storage=url, study="f", data_dir=data_dir, max_failures=len(FAULTS),
                             space={"presets": ["lora"]}, pruner="none", train=dict(TRAIN))
    studies.create_or_check(spec)
    state = _inject(monkeypatch, [k for k, _ in FAULTS])
    ran = run_worker(url, "f", poll_seconds=0.1)
    assert state["faults"] == len(FAULTS) and ran == len(FAULTS) + 1  # the worker survived every failure and ran the replacements
    study = studies.load(url, "f")
    assert studies.state_counts(study) == {"COMPLETE": 1, "FAIL": len(FAULTS), "PRUNED": 0, "RUNNING": 0, "WAITING": 0}
    trials = study.get_trials()
    df, _ = load_studies(url)
    for t, (kind, reason) in zip(trials, FAULTS, strict=False):
        assert t.state == optuna.trial.TrialState.FAIL
        rec = t.user_attrs["record"]
        assert rec["status"] == "failed" and reason in rec["error"], (kind, rec["error"])
        assert rec["task"] == "sst2" and rec["variant"] is not None
        if kind == "nan":
            # the NaN came after a good evaluation at step 1: the record keeps that metric, yet the trial is FAIL
            assert rec["metric"] is not None and math.isfinite(rec["metric"]) and rec["fidelity"] == "partial"
        row = df.filter(df["trial"] == t.number).row(0, named=True)  # reports show the failure and its reason
        assert row["state"] == "FAIL" and row["status"] == "failed" and reason in row["error"]
    assert trials[0].user_attrs["preset"].startswith("lora") and trials[-1].state == optuna.trial.TrialState.COMPLETE
    assert trials[-1].user_attrs["record"]["status"] == "ok" and trials[-1].values == [trials[-1].user_attrs["record"]["metric"]]

    # never on the frontier: only the one COMPLETE trial is a design point (and on the frontier
    # when it beats the majority-class baseline, which a 2-step tiny model need not)
    sections = build_sections(df, with_plots=False)
    assert sections[0]["summary"]["design_rows"]["trial"].to_list() == [trials[-1].number]
    assert set(sections[0]["summary"]["frontier_rows"]["trial"].to_list()) <= {trials[-1].number}
    for sec in sections:
        sec.update(png_frontier=b"", png_effects=b"", png_hv=b"")
    page = render(sections, [url], "now")
    for _, reason in FAULTS:
        assert html.escape(reason, quote=True) in page


def test_failed_trial_with_best_metric_never_on_frontier_even_when_best(tmp_path: Path) -> None:
    """A FAIL trial whose partial record carries the best metric of the study stays off the frontier."""
    url = f"sqlite:///{tmp_path}/x.db"
    spec = studies.StudySpec(seeds=1, task="sst2", model="tiny-bert", budget="5%", trials=2, storage=url, study="x", space={"presets": []}, pruner="none")
    studies.create_or_check(spec)
    calls = {"n": 0}

    def runner(attrs: dict[str, Any], variant: Any, report: Any, preset: str | None) -> dict[str, Any]:
        calls["n"] += 1
        if calls["n"] == 1:
            return {"schema": 1, "status": "failed", "error": "loss became nan at step 3", "metric": 0.99, "paper_fraction": 0.001,
                    "task": "sst2", "model": "tiny-bert", "variant": variant.to_dict(), "fidelity": "partial"}
        return {"schema": 1, "status": "ok", "metric": 0.5 + 0.01 * calls["n"], "paper_fraction": 0.01, "task": "sst2", "model": "tiny-bert",
                "variant": variant.to_dict(), "fidelity": "final"}

    assert run_worker(url, "x", runner=runner, poll_seconds=0.1) == 3
    df, _ = load_studies(url)
    front = build_sections(df, with_plots=False)[0]["summary"]["frontier_rows"]
    assert front.height >= 1 and 0.99 not in front["metric"].to_list() and set(front["status"].to_list()) == {"ok"}


def test_ok_record_without_a_finite_metric_is_a_failure(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/m.db"
    studies.create_or_check(studies.StudySpec(seeds=1, task="sst2", model="tiny-bert", budget="5%", trials=1, storage=url, study="m", space={"presets": []}))
    calls = {"n": 0}

    def runner(attrs: dict[str, Any], variant: Any, report: Any, preset: str | None) -> dict[str, Any]:
        calls["n"] += 1
        return {"schema": 1, "status": "ok", "metric": float("nan") if calls["n"] == 1 else 0.7, "paper_fraction": 0.01}

    assert run_worker(url, "m", runner=runner, poll_seconds=0.1) == 2
    study = studies.load(url, "m")
    failed = study.get_trials(states=(optuna.trial.TrialState.FAIL,))
    assert len(failed) == 1 and failed[0].user_attrs["record"]["status"] == "failed"
    assert "no finite metric" in failed[0].user_attrs["record"]["error"]
    assert [t.values for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))] == [[0.7]]
