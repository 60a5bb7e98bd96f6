"""MO-ASHA (search.mo_asha): rungs, the ranking, promotion on a synthetic multi-objective study,
kill/resume mid-rung, and a frontier-mode search through the worker with a stub evaluator."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import optuna
import polars as pl
import pytest
from optuna.trial import TrialState

from unipetl.search import mo_asha, optuna_ext
from unipetl.search import study as studies
from unipetl.search.worker import run_worker
from unipetl.spaces.registry import UnipetlError

optuna.logging.set_verbosity(optuna.logging.WARNING)
RUNGS = mo_asha.Rungs(10, 3)  # rungs at 10, 30, 90 steps


def test_rungs() -> None:
    assert [s for s in range(1, 300) if RUNGS.is_rung(s)] == [10, 30, 90, 270]
    for bad in (0, -1, 1.5, True):
        with pytest.raises(UnipetlError, match="eval_every"):
            mo_asha.Rungs(bad, 3)  # type: ignore[arg-type]
    with pytest.raises(UnipetlError, match="reduction_factor"):
        mo_asha.Rungs(10, 1)


def test_ranking_is_rank_then_hypervolume_contribution() -> None:
    # (metric ↑, log fraction ↓): a, b, c on the front; d dominated by b; e dominated by everything
    vals = [(0.80, -3.0), (0.85, -2.5), (0.90, -2.0), (0.84, -2.4), (0.5, -1.0)]
    order = mo_asha.ranking(vals, (True, False), [0, 1, 2, 3, 4])
    assert set(order[:3]) == {0, 1, 2} and order[3:] == [3, 4]
    # within the front, the middle point's exclusive contribution is the smallest
    assert order[2] == 1
    assert mo_asha.keeps(vals, (True, False), [0, 1, 2, 3, 4], 3, eta=3) is False  # top max(1, 5 // 3) = 1
    assert mo_asha.keeps(vals[:2], (True, False), [0, 1], 1, eta=3) in (True, False)  # one of two kept
    assert sum(mo_asha.keeps(vals[:2], (True, False), [0, 1], i, eta=3) for i in range(2)) == 1
    assert mo_asha.ranking(vals, (True, False), [0, 1, 2, 3, 4]) == order  # deterministic


def test_the_order_inside_a_front() -> None:
    """Four designs on one front (loss ↓, log fraction ↓, both already spanning [0, 1]) and one
    dominated: A (0, 1), B (0.1, 0.5), C (0.5, 0.45), D (1, 0), E (0.6, 0.6). Hypervolume
    contributions with the reference at 1.1: A 0.1·0.1 = 0.01, B 0.4·0.5 = 0.2, C 0.5·0.05 = 0.025,
    D 0.1·0.45 = 0.045, so "hv" puts the lowest loss (A) last of the front. The ε-net starts at A,
    takes D (√2 away), then C (0.673 from D against B's 0.510 from A), then B. Crowding distance:
    A, D ∞; B 0.5 + 0.55 = 1.05; C 0.9 + 0.5 = 1.4."""
    vals = [(0.0, 1.0), (0.1, 0.5), (0.5, 0.45), (1.0, 0.0), (0.6, 0.6)]
    numbers = [10, 11, 12, 13, 14]
    assert mo_asha.ranking(vals, (False, False), numbers, "hv") == [1, 3, 2, 0, 4]
    assert mo_asha.ranking(vals, (False, False), numbers, "eps-net") == [0, 3, 2, 1, 4]
    assert mo_asha.ranking(vals, (False, False), numbers, "crowding") == [0, 3, 2, 1, 4]
    # a rung of 5 keeps max(1, 5 // 3) = 1: the lowest loss under eps-net, B under hv
    assert [mo_asha.keeps(vals, (False, False), numbers, i, 3, "eps-net") for i in range(5)] == [True, False, False, False, False]
    assert [mo_asha.keeps(vals, (False, False), numbers, i, 3, "hv") for i in range(5)] == [False, True, False, False, False]
    # the same decision whatever order the caller lists the trials in (each worker puts its own trial first),
    # ties (two identical designs) broken by trial number
    twin = [*vals, (1.0, 0.0)]
    for order in mo_asha.ORDERS:
        best = [numbers[i] if i < 5 else 15 for i in mo_asha.ranking(twin, (False, False), [*numbers, 15], order)]
        for perm in ([5, 4, 3, 2, 1, 0], [3, 5, 0, 2, 4, 1]):
            got = mo_asha.ranking([twin[i] for i in perm], (False, False), [[*numbers, 15][i] for i in perm], order)
            assert [[*numbers, 15][perm[i]] for i in got] == best, (order, perm)
        assert best.index(13) < best.index(15)  # D and its twin: the earlier trial first
    with pytest.raises(UnipetlError, match=r"`rung_order` should be one of hv, eps-net, crowding, got 'hvv'"):
        mo_asha.ranking(vals, (False, False), numbers, "hvv")
    with pytest.raises(UnipetlError, match="`rung_order`"):
        mo_asha.Rungs(10, 3, "nsga")


def test_a_rung_of_dev_losses_keeps_the_lowest(tmp_path: Path) -> None:
    """Rungs rank the dev loss (lower first): four trials of one size arriving in turn at rung 10
    with losses 0.69, 0.60, 0.65, 0.50 — the first two lead when they arrive, the third is behind
    0.60 in a rung of three (keep 1), the fourth leads."""
    study = _mo_study(tmp_path)
    stops = []
    for loss in (0.69, 0.60, 0.65, 0.50):
        trial = study.ask()
        trial.set_user_attr("paper_fraction", 0.004)
        stops.append(mo_asha.judge(study, trial, 10, loss, RUNGS, higher=False, paper_fraction=0.004))
    assert stops == [False, False, True, False]


def _mo_study(tmp_path: Path, name: str = "mo") -> optuna.Study:
    return optuna.create_study(storage=f"sqlite:///{tmp_path}/mo.db", study_name=name, directions=["maximize", "minimize"])


def _run(study: optuna.Study, fraction: float, quality: float, *, stop_at: int | None = None) -> tuple[optuna.Trial, str]:
    """One synthetic trial: the metric rises with the steps, scaled by `quality`; judged at each rung."""
    trial = study.ask()
    trial.set_user_attr("paper_fraction", fraction)
    for step in (10, 20, 30, 60, 90):
        value = quality * (1 - math.exp(-step / 30))
        if stop_at is not None and step > stop_at:
            return trial, "killed"
        if mo_asha.judge(study, trial, step, value, RUNGS, higher=True, paper_fraction=fraction):
            study.tell(trial, state=TrialState.PRUNED)
            return trial, "pruned"
    study.tell(trial, [value, fraction])
    return trial, "complete"


def test_a_known_front_is_kept_and_the_rest_halved(tmp_path: Path) -> None:
    """18 dominated designs first, then 3 that form the true front: the front is never pruned
    (rank 0, and the rung has room for it), and each rung keeps about 1/η of those that reach it."""
    study = _mo_study(tmp_path)
    dominated = [(0.002 * (1 + i % 6), 0.5 + 0.01 * i) for i in range(18)]
    front = [(0.001, 0.95), (0.004, 0.97), (0.01, 0.99)]
    outcome = {}
    for f, q in dominated + front:
        trial, how = _run(study, f, q)
        outcome[(f, q)] = how
    assert all(outcome[p] == "complete" for p in front)
    reached = {s: sum(1 for t in study.trials if s in t.intermediate_values) for s in (10, 30, 90)}
    assert reached[10] == 21 and reached[30] < reached[10] and reached[90] < reached[30]
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    pruned = study.get_trials(states=(TrialState.PRUNED,))
    assert len(complete) <= reached[90] and len(pruned) == 21 - len(complete)
    assert all(RUNGS.is_rung(max(t.intermediate_values)) for t in pruned)  # stopped only at a rung
    assert all(max(t.intermediate_values) == 90 for t in complete)
    # the study's own Pareto front of finished trials is the known front
    assert {(t.values[1], round(t.values[0] / (1 - math.exp(-3)), 6)) for t in study.best_trials} == {(f, q) for f, q in front}


def test_kill_and_resume_mid_rung_promotes_nothing_twice(tmp_path: Path) -> None:
    study = _mo_study(tmp_path)
    for f, q in [(0.002, 0.6), (0.003, 0.7), (0.004, 0.65), (0.005, 0.8), (0.006, 0.62)]:
        _run(study, f, q)
    killed, how = _run(study, 0.001, 0.9, stop_at=10)  # passed rung 10, then its worker died
    assert how == "killed"
    competitors_before = sum(1 for t in study.get_trials(states=mo_asha.ACTIVE) if 10 in t.intermediate_values)
    study.tell(killed, state=TrialState.FAIL)  # what the heartbeat does to a dead worker's trial
    retry, how = _run(study, 0.001, 0.9)  # the retry ticket: same design, same values
    assert how == "complete"
    at_rung = [t for t in study.get_trials(states=mo_asha.ACTIVE) if 10 in t.intermediate_values]
    assert len(at_rung) == competitors_before  # the failed original is not a competitor: one entry per design
    assert sum(1 for t in at_rung if t.user_attrs["paper_fraction"] == 0.001) == 1


def stub_runner(attrs: dict[str, Any], variant: Any, report: Any, preset: str | None) -> dict[str, Any]:
    """A rising curve at steps 10…90 whose height grows with the variant's size; at a rung it
    reports the falling loss 1 − value (a rung ranks the dev loss, lower first); stops when told."""
    from unipetl.evaluators.record import make_record
    from unipetl.spaces.accounting import count

    shape = studies.model_shape(attrs["model"])
    c = count(variant, shape)
    frac = c.paper_params / c.base_params
    q = 0.6 + 0.3 * min(1.0, frac / attrs["budget_fraction"])
    curve, status = [], "ok"
    for step in range(10, 100, 10):
        value = q * (1 - math.exp(-step / 30))
        curve.append({"step": step, "loss": 0.5, "metrics": {"accuracy": value}})
        if step < 90 and report(step, 1 - value):  # as the training loop: rungs before the end judge the loss
            status = "pruned"
            break
    metric = curve[-1]["metrics"]["accuracy"]
    return make_record(status=status, task=attrs["task"], model=attrs["model"], variant=variant.to_dict(), variant_description=variant.describe(),
                       preset=preset, paper_params=c.paper_params, trainable_params=c.trainable_params, base_params=c.base_params,
                       paper_percent=100 * frac, paper_fraction=frac, main_metric="accuracy", higher_is_better=True, metric=metric,
                       metrics={"accuracy": metric}, curve=curve, best_step=curve[-1]["step"], seed=attrs["train"].get("seed", 0),
                       fidelity="final" if status == "ok" else "partial", latency={"batch1_ms": 1.0 + 10 * frac, "batch_ms_per_example": 0.1,
                                                                                                 "batch1_ratio": 1.0 + frac, "batch_ratio": 1.0})


def test_frontier_search_with_mo_asha_through_the_worker(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    spec = studies.StudySpec(task="sst2", model="tiny-bert", budget="5%", mode="frontier", trials=12, seeds=1, storage=url, study="f",
                             pruner="mo-asha", sampler="random", train={"eval_every": 10}, space={"presets": []},
                             objectives="metric,params,latency")
    study = studies.create_or_check(spec)
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE, optuna.study.StudyDirection.MINIMIZE]
    run_worker(url, "f", runner=stub_runner)
    c = studies.state_counts(study)
    assert c["COMPLETE"] + c["PRUNED"] == 12 and c["FAIL"] == 0 and c["PRUNED"] > 0
    for t in study.get_trials(states=(TrialState.PRUNED,)):
        assert t.user_attrs["record"]["fidelity"] == "partial" and max(t.intermediate_values) < 90
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        assert len(t.values) == 3 and t.values[2] == pytest.approx(t.user_attrs["record"]["latency"]["batch1_ratio"])
    # the report says how the trials were screened, from the study's stored settings, and how many were stopped
    from unipetl.reports.build import build_sections
    from unipetl.reports.load import load_studies
    from unipetl.reports.summary import sentences

    df, _ = load_studies(url, ["f"])
    said = [x for x in sentences(build_sections(df, with_plots=False, objectives=("metric", "params", "latency"))[0]) if x.startswith("Multi-fidelity")]
    assert said == [f"Multi-fidelity: MO-ASHA (Schmucker et al. 2021): rungs at 10·3^k training steps, the top 1/3 of the trials at a rung "
                    "continue, by non-dominated rank over (dev loss on 256 fixed dev examples; paper params (fraction of the model); "
                    "inference latency, batch 1 (× backbone)), within a front by hypervolume contribution; named methods and extra seeds "
                    f"train to the end. {c['PRUNED']} trials were stopped at a rung; a stopped design is screened out, not measured, and is never on the frontier."]


def test_screening_in_words_for_every_kind_of_study() -> None:
    """Full-fidelity studies say nothing; a study from before rungs measured the dev loss, ranked their own
    costs or had an order is described as it ran: the metric on the dev set, paper params, hypervolume contribution."""
    from unipetl.reports.load import ORDER_WORDS, screening_text

    assert set(ORDER_WORDS) == set(mo_asha.ORDERS)
    assert screening_text({"mode": "frontier", "pruner": "none"}) is None
    assert screening_text({"mode": "budget", "pruner": "median"}) is None
    old = screening_text({"mode": "frontier", "pruner": "mo-asha", "train": {"eval_every": 7}, "main_metric": "accuracy"})
    assert old is not None and "rungs at 7·3^k" in old and "(accuracy on the dev set; paper params (fraction of the model))" in old
    assert old.endswith(f"within a front by {ORDER_WORDS[mo_asha.LEGACY_ORDER]}; named methods and extra seeds train to the end")
    new = screening_text({"mode": "frontier", "pruner": "mo-asha", "train": {"eval_every": 42}, "reduction_factor": 4, "rung_examples": 64,
                          "rung_costs": ["latency"], "rung_order": "eps-net"})
    assert new is not None and "rungs at 42·4^k" in new and "top 1/4" in new and "(dev loss on 64 fixed dev examples; inference latency, batch 1 (× backbone))" in new
    assert "within a front by the ε-net order from the lowest rung value" in new


def test_a_named_method_competes_at_the_rung_but_trains_to_the_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under MO-ASHA a named method's rung value is stored and counts for the others, but the
    method is not stopped: it is the report's reference point. Here full fine-tuning (fraction 1)
    reports a rung loss of 5.0 after six sampled trials that all dominate it — the judge says
    stop, the trial still completes with its rung value stored; sampled trials told to stop are pruned."""
    from unipetl.search import worker

    answers: dict[int, list[bool]] = {}
    real_judge = worker.mo_asha_judge

    def spy(study: optuna.Study, trial: optuna.Trial, step: int, value: float, rungs: mo_asha.Rungs, **kw: Any) -> bool:
        stop = real_judge(study, trial, step, value, rungs, **kw)
        if rungs.is_rung(step):
            answers.setdefault(trial.number, []).append(stop)
        return stop

    monkeypatch.setattr(worker, "mo_asha_judge", spy)

    def runner(attrs: dict[str, Any], variant: Any, report: Any, preset: str | None) -> dict[str, Any]:
        return stub_runner(attrs, variant, (lambda s, _v: report(s, 5.0)) if preset else report, preset)

    url = f"sqlite:///{tmp_path}/n.db"
    spec = studies.StudySpec(task="sst2", model="tiny-bert", budget="5%", mode="frontier", trials=7, seeds=1, storage=url, study="n",
                             pruner="mo-asha", sampler="random", train={"eval_every": 10}, space={"presets": []})
    study = studies.create_or_check(spec)
    run_worker(url, "n", runner=runner, max_trials=6)
    (ticket,) = study.get_trials(states=(TrialState.WAITING,))  # the last ticket becomes the named method
    optuna_ext.set_user_attr(study, optuna_ext.trial_id(ticket), "preset", "full")
    run_worker(url, "n", runner=runner)
    (named,) = [t for t in study.get_trials() if t.user_attrs.get("preset") == "full"]
    assert answers[named.number][0] is True  # last of seven at rung 10: the judge would stop it
    assert named.state == TrialState.COMPLETE and named.user_attrs["record"]["fidelity"] == "final"
    assert named.intermediate_values[10] == 5.0 and max(named.intermediate_values) == 80
    for t in study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED)):
        if t.number != named.number:
            assert (t.state == TrialState.PRUNED) == any(answers[t.number])


@pytest.mark.parametrize(("changes", "message"), [
    ({"pruner": "mo-asha", "mode": "budget"}, "prunes frontier-mode studies"),
    ({"pruner": "mo-asha", "mode": "frontier"}, "needs `train.eval_every`"),
    ({"pruner": "mo-ashaa", "mode": "frontier"}, "`pruner` must be one of.*mo-asha"),
    ({"pruner": "mo-asha", "mode": "frontier", "train": {"eval_every": 10}, "rung_examples": 0}, r"`rung_examples` .* positive integer, got 0"),
    ({"pruner": "mo-asha", "mode": "frontier", "train": {"eval_every": 10}, "rung_examples": "all"}, r"`rung_examples` .* got 'all'"),
    ({"pruner": "mo-asha", "mode": "frontier", "train": {"eval_every": 10}, "rung_order": "epsnet"}, r"`rung_order` .* got 'epsnet'\. Did you mean: eps-net\?"),
    ({"rung_order": 3}, r"`rung_order` should be one of hv, eps-net, crowding, got 3"),
    ({"objectives": "metric,latency", "mode": "budget"}, "applies to frontier mode"),
    ({"objectives": "metric,speed", "mode": "frontier"}, "unknown cost 'speed'"),
])
def test_bad_study_settings_name_the_field(changes: dict[str, Any], message: str, tmp_path: Path) -> None:
    spec = studies.StudySpec(task="sst2", model="tiny-bert", storage=f"sqlite:///{tmp_path}/b.db", **changes)
    with pytest.raises(UnipetlError, match=message):
        spec.validate()


def test_a_stop_at_the_last_step_is_ignored_by_the_loop() -> None:
    """A rung at the final step (or a pruner answering there) cannot save any training: the
    trial stays complete instead of being marked partial."""
    from unipetl.evaluators.trial import TrialConfig, run_trial
    from unipetl.spaces.presets import parse_preset

    base = {"task": "sst2", "model": "tiny-bert", "variant": parse_preset("lora:r=2"), "max_train_examples": 32, "max_eval_examples": 16,
            "max_steps": 2, "batch_size": 8}
    early = run_trial(TrialConfig(**base, eval_every=1), report=lambda _s, _v: True)
    assert early["status"] == "pruned" and early["train_settings"]["steps"] == 1
    assert early["latency"] is None  # never on a frontier: its latency is not measured
    last = run_trial(TrialConfig(**base, eval_every=2), report=lambda _s, _v: True)
    assert last["status"] == "ok" and last["fidelity"] == "final" and last["train_settings"]["steps"] == 2


def test_the_loop_evaluates_only_at_rungs_under_mo_asha() -> None:
    """With eval_every=1 and rungs 1, 3, 9 (η = 3), a 10-step trial is evaluated at 1, 3, 9 and
    at its last step — four dev-set passes, not ten; a plain report still gets every step."""
    from unipetl.evaluators.reporting import RungReport
    from unipetl.evaluators.trial import TrialConfig, run_trial
    from unipetl.spaces.presets import parse_preset

    base = {"task": "sst2", "model": "tiny-bert", "variant": parse_preset("lora:r=2"), "max_train_examples": 32, "max_eval_examples": 16,
            "max_steps": 10, "batch_size": 8, "eval_every": 1}
    asked: list[int] = []
    rung = run_trial(TrialConfig(**base), report=RungReport(lambda s, _v: asked.append(s) or False, mo_asha.Rungs(1, 3).is_rung))
    assert asked == [1, 3, 9, 10] and [p["step"] for p in rung["curve"]] == [1, 3, 9, 10]
    plain: list[int] = []
    run_trial(TrialConfig(**base), report=lambda s, _v: plain.append(s) or False)
    assert plain == list(range(1, 11))


def test_mo_asha_with_the_default_sampler_runs_past_its_startup_trials(tmp_path: Path) -> None:
    """Regression: with TPE (the default sampler) every trial after TPE's startup trials failed —
    Optuna's TPE reads PRUNED trials of a multi-objective study through `study.direction`. Under
    MO-ASHA the study samples with TPE over its COMPLETE trials (`optuna_ext.CompleteOnlyTPE`)."""
    url = f"sqlite:///{tmp_path}/t.db"
    spec = studies.StudySpec(task="sst2", model="tiny-bert", budget="5%", mode="frontier", trials=14, seeds=1, storage=url, study="t",
                             pruner="mo-asha", train={"eval_every": 10}, space={"presets": []})
    study = studies.create_or_check(spec)
    from unipetl.search.optuna_ext import CompleteOnlyTPE

    assert isinstance(studies.load(url, "t").sampler, CompleteOnlyTPE)
    run_worker(url, "t", runner=stub_runner)
    c = studies.state_counts(study)
    assert c["COMPLETE"] + c["PRUNED"] == 14 and c["FAIL"] == 0 and c["PRUNED"] > 0


def _spy_loop(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Capture what `run_trial` hands the loop (task, model, tokenizer, eval sets) and the model after it."""
    from unipetl.evaluators import train as train_mod

    seen: dict[str, Any] = {}
    real = train_mod.train_and_evaluate

    def spy(task, model, tokenizer, train_ds, eval_sets, *a, **kw):  # type: ignore[no-untyped-def]
        seen.update(task=task, model=model, tokenizer=tokenizer, eval_sets=eval_sets)
        return real(task, model, tokenizer, train_ds, eval_sets, *a, **kw)

    monkeypatch.setattr(train_mod, "train_and_evaluate", spy)
    return seen


def test_rungs_rank_the_dev_loss_on_a_subset_and_the_end_is_the_full_fidelity_result(monkeypatch: pytest.MonkeyPatch) -> None:
    """With `RungReport.examples`, the judge hears the dev loss on a fixed subset at rungs 1, 3, 9
    (never at the last step); those points are in the curve under "rung" and never the best; the
    trial's metric and its trained tensors equal those of a run evaluated only at the end."""
    import torch

    from unipetl.evaluators.reporting import RungReport
    from unipetl.evaluators.train import dev_loss, rung_subset
    from unipetl.evaluators.trial import TrialConfig, run_trial
    from unipetl.spaces.presets import parse_preset

    base = {"task": "sst2", "model": "tiny-bert", "variant": parse_preset("lora:r=2"), "max_train_examples": 32, "max_eval_examples": 16,
            "max_steps": 10, "batch_size": 8, "lr": 3e-3, "seed": 5}
    seen = _spy_loop(monkeypatch)
    asked: list[tuple[int, float]] = []
    rung = run_trial(TrialConfig(**base, eval_every=1), report=RungReport(lambda s, v: asked.append((s, v)) or False, mo_asha.Rungs(1, 3).is_rung, 8))
    rung_model = {n: p.detach().clone() for n, p in seen["model"].named_parameters() if p.requires_grad}
    assert [s for s, _ in asked] == [1, 3, 9] and all(math.isfinite(v) and v > 0 for _, v in asked)
    assert [p["step"] for p in rung["curve"]] == [1, 3, 9, 10]
    assert all(p["metrics"] == {} and p["rung"]["examples"] == 8 for p in rung["curve"][:3]) and "rung" not in rung["curve"][3]
    assert rung["status"] == "ok" and rung["best_step"] == 10 and rung["metric"] == rung["curve"][3]["metrics"]["accuracy"]
    # the rung subset is the same rows every time; the loss does not depend on the batch size (padding)
    sub = rung_subset(seen["eval_sets"]["eval"], 8)
    assert len(sub) == 8 and sub["input_ids"] == rung_subset(seen["eval_sets"]["eval"], 8)["input_ids"]
    end_loss = dev_loss(seen["task"], seen["model"], seen["tokenizer"], sub, batch_size=4, device=torch.device("cpu"))

    plain = run_trial(TrialConfig(**base, eval_every=10))
    assert plain["metric"] == rung["metric"] and plain["best_step"] == 10
    for n, p in seen["model"].named_parameters():
        if p.requires_grad:
            assert torch.equal(p.detach(), rung_model[n]), n  # rung evaluations leave training untouched
    assert dev_loss(seen["task"], seen["model"], seen["tokenizer"], sub, batch_size=8, device=torch.device("cpu")) == pytest.approx(end_loss, abs=1e-5)


def test_dev_loss_is_the_mean_per_example_cross_entropy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batched with padding = one example at a time, by hand: mean cross-entropy over examples."""
    import torch
    import torch.nn.functional as F

    from unipetl.evaluators.train import dev_loss
    from unipetl.evaluators.trial import TrialConfig, run_trial
    from unipetl.spaces.presets import parse_preset

    seen = _spy_loop(monkeypatch)
    run_trial(TrialConfig(task="sst2", model="tiny-bert", variant=parse_preset("lora:r=2"), max_train_examples=16, max_eval_examples=12,
                          max_steps=2, batch_size=8, lr=1e-2))
    model, ds = seen["model"].eval(), seen["eval_sets"]["eval"]
    by_hand = []
    with torch.no_grad():
        for row in ds:
            ids = torch.tensor([row["input_ids"]])
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float()
            by_hand.append(float(F.cross_entropy(logits, torch.tensor([row["labels"]]))))
    assert len(by_hand) == 12
    want = sum(by_hand) / len(by_hand)
    for bs in (1, 5, 12):
        assert dev_loss(seen["task"], model, seen["tokenizer"], ds, batch_size=bs, device=torch.device("cpu")) == pytest.approx(want, abs=1e-5)
    with pytest.raises(ValueError, match="empty"):
        dev_loss(seen["task"], model, seen["tokenizer"], ds.select([]), batch_size=4, device=torch.device("cpu"))


def test_the_worker_hands_rung_examples_to_the_loop_and_old_studies_keep_the_metric(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A new MO-ASHA study stores `rung_examples` (default 256), the loop gets it, and the judge
    ranks rung values lower-first (a loss); a study from before (no such attribute) keeps rungs on
    the main metric, higher-first for SST-2's accuracy. Extra seeds of a new study are evaluated
    at the end only (a RungReport that asks at no step), as their design trial is."""
    from unipetl.evaluators.reporting import RungReport
    from unipetl.search import worker as worker_mod

    url = f"sqlite:///{tmp_path}/r.db"
    got: list[Any] = []
    higher: list[bool] = []
    real_judge = worker_mod.mo_asha_judge

    orders: list[str] = []

    def spy_judge(*a: Any, **kw: Any) -> bool:
        higher.append(kw["higher"])
        orders.append(a[4].order)
        return real_judge(*a, **kw)

    monkeypatch.setattr(worker_mod, "mo_asha_judge", spy_judge)

    def runner(attrs: dict[str, Any], variant: Any, report: Any, preset: str | None) -> dict[str, Any]:
        got.append((report.examples, [s for s in range(10, 100, 10) if report.evaluates_at(s)]) if isinstance(report, RungReport) else None)
        return stub_runner(attrs, variant, report, preset)

    for name, examples in (("new", 256), ("custom", 64)):
        spec = studies.StudySpec(task="sst2", model="tiny-bert", budget="5%", mode="frontier", trials=2, seeds=2, storage=url, study=name,
                                 pruner="mo-asha", sampler="random", train={"eval_every": 10}, space={"presets": []},
                                 **({"rung_examples": examples, "rung_order": "crowding"} if name == "custom" else {}))
        study = studies.create_or_check(spec)
        assert study.user_attrs["rung_examples"] == examples
        assert study.user_attrs["rung_order"] == ("crowding" if name == "custom" else mo_asha.ORDER)
        got.clear()
        higher.clear()
        orders.clear()
        run_worker(url, name, runner=runner)
        assert got == [(examples, [10, 30, 90])] * 2 and higher and not any(higher)
        assert set(orders) == {study.user_attrs["rung_order"]}
        got.clear()
        assert studies.enqueue_seed_trials(study) >= 1
        run_worker(url, name, runner=runner)
        assert got and all(g == (examples, []) for g in got)  # extra seeds: no rung, one evaluation at the end
    old = studies.create_or_check(studies.StudySpec(task="sst2", model="tiny-bert", budget="5%", mode="frontier", trials=3, seeds=1, storage=url,
                                                    study="old", pruner="mo-asha", sampler="random", train={"eval_every": 10}, space={"presets": []}))
    old.set_user_attr("rung_examples", None)
    old.set_user_attr("rung_order", None)  # a study from before the order was a setting: ranked as then, by hypervolume contribution
    got.clear()
    higher.clear()
    orders.clear()
    run_worker(url, "old", runner=runner)
    assert got == [(None, [10, 30, 90])] * 3 and higher and all(higher) and set(orders) == {"hv"}


def test_evaluations_leave_the_training_stream_alone() -> None:
    """Full dev evaluations after every step do not move training: the per-step losses of a run
    evaluated at every step average to the loss of the same run evaluated once at the end (with
    dropout on: a shifted RNG would change every mask)."""
    from unipetl.evaluators.trial import TrialConfig, run_trial
    from unipetl.spaces.presets import parse_preset

    base = {"task": "sst2", "model": "tiny-bert", "variant": parse_preset("lora:r=2"), "max_train_examples": 48, "max_eval_examples": 16,
            "max_steps": 6, "batch_size": 8, "lr": 3e-3, "seed": 3}
    every = run_trial(TrialConfig(**base, eval_every=1))
    once = run_trial(TrialConfig(**base, eval_every=6))
    assert [p["step"] for p in every["curve"]] == [1, 2, 3, 4, 5, 6] and [p["step"] for p in once["curve"]] == [6]
    losses = [p["loss"] for p in every["curve"]]
    assert len(set(round(x, 6) for x in losses)) > 1
    assert sum(losses) / 6 == pytest.approx(once["curve"][0]["loss"], abs=1e-6)


def test_a_rung_ranks_the_costs_the_study_trades(tmp_path: Path) -> None:
    """Six trials of one size at rung 10 (η = 3: keep 2). The last has the highest loss but the
    lowest latency: ranked on (loss, params) — what every rung did before — it is dominated by
    all five and stops; ranked on (loss, params, latency), a 3-objective study's own costs, it is
    on the rung's front with the lowest latency and continues. A study trading (metric, latency)
    alone does not hold parameters against a trial."""
    study = _mo_study(tmp_path)
    for loss in (0.50, 0.60, 0.65, 0.62, 0.70):
        t = study.ask()
        t.set_user_attr("paper_fraction", 0.004)
        t.set_user_attr(mo_asha.COSTS_ATTR, {"latency": 2.0})
        assert mo_asha.judge(study, t, 10, loss, RUNGS, higher=False, paper_fraction=0.004, costs=("params", "latency"), noted={"latency": 2.0}) is (loss > 0.50)
    last = study.ask()
    last.set_user_attr("paper_fraction", 0.004)
    last.set_user_attr(mo_asha.COSTS_ATTR, {"latency": 1.0})
    assert mo_asha.judge(study, last, 10, 0.70, RUNGS, higher=False, paper_fraction=0.004) is True  # legacy: (loss, params)
    assert mo_asha.judge(study, last, 10, 0.70, RUNGS, higher=False, paper_fraction=0.004, costs=("params", "latency"), noted={"latency": 1.0}) is False
    # (loss, latency) only: a 100x larger design with a lower loss and the same latency leads its rung;
    # ranked with params too, it is on the front but adds little there, and the smaller design leads
    other = optuna.create_study(storage=f"sqlite:///{tmp_path}/mo.db", study_name="lat", directions=["maximize", "minimize"])
    for loss, lat in ((0.50, 2.0), (0.60, 2.5)):
        t = other.ask()
        t.set_user_attr("paper_fraction", 0.004)
        t.set_user_attr(mo_asha.COSTS_ATTR, {"latency": lat})
        mo_asha.judge(other, t, 10, loss, RUNGS, higher=False, paper_fraction=0.004, costs=("latency",), noted={"latency": lat})
    big = other.ask()
    big.set_user_attr("paper_fraction", 0.4)
    assert mo_asha.judge(other, big, 10, 0.49, RUNGS, higher=False, paper_fraction=0.4, costs=("latency",), noted={"latency": 2.0}) is False
    assert mo_asha.judge(other, big, 10, 0.49, RUNGS, higher=False, paper_fraction=0.4, costs=("params", "latency"), noted={"latency": 2.0}) is True


def test_cost_vectors_and_what_a_judge_leaves_out(tmp_path: Path) -> None:
    assert mo_asha.cost_vector(("params", "latency", "memory"), 0.01, {"latency": 1.5, "memory": 2e9}) == [-2.0, 1.5, 2e9]
    # step time and memory are read at the rung being judged, never from a later one
    per_step = {"latency": 1.5, "at": {"10": {"memory": 1e8}, "30": {"memory": 3e8}}}
    assert mo_asha.cost_vector(("latency", "memory"), None, per_step, 10) == [1.5, 1e8]
    assert mo_asha.cost_vector(("latency", "memory"), None, per_step, 30) == [1.5, 3e8]
    assert mo_asha.cost_vector(("memory",), None, per_step, 90) is None and mo_asha.cost_vector(("memory",), None, per_step) is None
    assert mo_asha.cost_vector(("params", "latency"), 0.01, {}) is None
    assert mo_asha.cost_vector(("latency",), None, {"latency": float("nan")}) is None
    assert mo_asha.cost_vector(("params",), None, {}) is None
    # a competitor that noted no latency is left out of a latency rung; a candidate without one is judged on (loss, params)
    study = _mo_study(tmp_path)
    mute = study.ask()
    mute.set_user_attr("paper_fraction", 0.004)
    mo_asha.judge(study, mute, 10, 0.10, RUNGS, higher=False, paper_fraction=0.004)
    t = study.ask()
    t.set_user_attr("paper_fraction", 0.004)
    assert mo_asha.judge(study, t, 10, 0.50, RUNGS, higher=False, paper_fraction=0.004, costs=("params", "latency"), noted={"latency": 3.0}) is False
    assert mo_asha.judge(study, t, 10, 0.50, RUNGS, higher=False, paper_fraction=0.004, costs=("params", "latency"), noted={}) is True
    # memory at rung 10: a competitor that noted memory only at rung 30 (it has moved on) is no competitor at rung 10
    late = study.ask()
    late.set_user_attr("paper_fraction", 0.004)
    late.set_user_attr(mo_asha.COSTS_ATTR, {"at": {"30": {"memory": 1.0}}})
    optuna_ext.set_intermediate(study, optuna_ext.trial_id(late), 10, 0.05)
    me = study.ask()
    me.set_user_attr("paper_fraction", 0.004)
    assert mo_asha.judge(study, me, 10, 0.40, RUNGS, higher=False, paper_fraction=0.004, costs=("memory",), noted={"at": {"10": {"memory": 5.0}}}) is False
    late.set_user_attr(mo_asha.COSTS_ATTR, {"at": {"10": {"memory": 1.0}}, "30": {}})  # now with its rung-10 figure: it leads (0.05, 1.0)
    assert mo_asha.judge(study, me, 10, 0.40, RUNGS, higher=False, paper_fraction=0.004, costs=("memory",), noted={"at": {"10": {"memory": 5.0}}}) is True


def test_the_worker_stores_the_noted_costs_and_old_studies_rank_params(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A new MO-ASHA study stores `rung_costs` = its frontier's costs; the worker gives the
    evaluator a RungReport that asks for them, stores what it notes as the trial's `rung_costs`
    attribute and judges on them. A default study ranks params; a study from before keeps params."""
    from unipetl.search import worker as worker_mod

    url = f"sqlite:///{tmp_path}/c.db"
    costs_seen: list[tuple[str, ...]] = []
    real_judge = worker_mod.mo_asha_judge

    def spy_judge(*a: Any, **kw: Any) -> bool:
        costs_seen.append(tuple(kw["costs"]))
        return real_judge(*a, **kw)

    monkeypatch.setattr(worker_mod, "mo_asha_judge", spy_judge)

    def runner(attrs: dict[str, Any], variant: Any, report: Any, preset: str | None) -> dict[str, Any]:
        rec = stub_runner(attrs, variant, lambda s, v: False, preset)  # the record's latency, then the real run
        report.tell_costs({"latency": rec["latency"]["batch1_ratio"], "latency_batch": 9.0, "memory": None})
        return stub_runner(attrs, variant, report, preset)

    for name, objectives, stored in (("lat", "metric,params,latency", ["params", "latency"]), ("lat-only", "accuracy,latency", ["latency"]),
                                     ("default", None, ["params"])):
        spec = studies.StudySpec(task="sst2", model="tiny-bert", budget="5%", mode="frontier", trials=6, seeds=1, storage=url, study=name,
                                 pruner="mo-asha", sampler="random", train={"eval_every": 10}, space={"presets": []}, objectives=objectives)
        study = studies.create_or_check(spec)
        assert study.user_attrs["rung_costs"] == stored
        costs_seen.clear()
        run_worker(url, name, runner=runner)
        assert costs_seen and set(costs_seen) == {tuple(stored)}
        for t in study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED)):
            noted = t.user_attrs.get(mo_asha.COSTS_ATTR)
            if "latency" in stored:  # only what the study ranks is stored: not latency_batch, not a None
                assert noted == {"latency": pytest.approx(t.user_attrs["record"]["latency"]["batch1_ratio"])}
            else:
                assert noted is None
    old = studies.create_or_check(studies.StudySpec(task="sst2", model="tiny-bert", budget="5%", mode="frontier", trials=3, seeds=1, storage=url,
                                                    study="old", pruner="mo-asha", sampler="random", train={"eval_every": 10}, space={"presets": []},
                                                    objectives="metric,params,latency"))
    old.set_user_attr("rung_costs", None)
    costs_seen.clear()
    run_worker(url, "old", runner=runner)
    assert costs_seen and set(costs_seen) == {("params",)}


def test_the_trial_notes_latency_before_the_first_rung_and_step_time_and_memory_at_each(monkeypatch: pytest.MonkeyPatch) -> None:
    """run_trial with a RungReport that ranks latency, step time and memory: latency is timed
    after realization (before any rung; batch 1 only) and the record keeps that measurement,
    completed at the eval batch once the trial finishes;
    step time and memory come at each rung before its judgement. Timing early does not move
    training: the curve and metric equal a run whose rungs rank no costs."""
    from unipetl.evaluators.reporting import RungReport
    from unipetl.evaluators.trial import TrialConfig, run_trial
    from unipetl.spaces.presets import parse_preset

    base = {"task": "sst2", "model": "tiny-bert", "variant": parse_preset("pa:r=8"), "max_train_examples": 32, "max_eval_examples": 16,
            "max_steps": 10, "batch_size": 8, "lr": 3e-3, "seed": 2, "eval_every": 1}
    from unipetl.evaluators import latency as lat_mod

    parts: list[tuple[bool, bool]] = []
    real = lat_mod.measure_latency
    monkeypatch.setattr(lat_mod, "measure_latency", lambda *a, **k: parts.append((k["single"], k["batch"])) or real(*a, **k))
    events: list[tuple[str, Any]] = []
    report = RungReport(lambda s, v: events.append(("judge", s)) or False, mo_asha.Rungs(1, 3).is_rung, 8,
                        costs=("params", "latency", "step_time", "memory"), note=lambda c, step: events.append(("note", dict(c), step)))
    rec = run_trial(TrialConfig(**base), report=report)
    first = events[0][1]
    assert events[0][0] == "note" and events[0][2] is None and set(first) == {"latency"} and first["latency"] == rec["latency"]["batch1_ratio"] > 0
    # batch 1 before training (what the rung ranks), the eval batch after it (a finished trial's record): each part once
    assert parts == [(True, False), (False, True)] and rec["latency"]["reused"] is False and rec["latency"]["batch_ratio"] > 0
    stopped = run_trial(TrialConfig(**{**base, "variant": parse_preset("pa:r=4")}), report=RungReport(lambda s, v: True, mo_asha.Rungs(1, 3).is_rung, 8, costs=("latency",), note=lambda c, step: None))
    assert stopped["status"] == "pruned" and parts[2:] == [(True, False)]  # a pruned trial is not timed at the eval batch
    assert stopped["latency"]["batch1_ratio"] > 0 and stopped["latency"]["batch_ratio"] is None
    batch_rung: list[dict[str, float]] = []
    whole = run_trial(TrialConfig(**{**base, "variant": parse_preset("pa:r=2")}),
                      report=RungReport(lambda s, v: False, mo_asha.Rungs(1, 3).is_rung, 8, costs=("latency_batch",), note=lambda c, step: batch_rung.append(c)))
    assert parts[3:] == [(True, True)] and batch_rung[0] == {"latency_batch": whole["latency"]["batch_ratio"]}  # ranked: both parts at once
    assert [e[1] for e in events if e[0] == "judge"] == [1, 3, 9]
    at_rungs = [e for e in events[1:] if e[0] == "note"]
    assert [e[2] for e in at_rungs] == [1, 3, 9]  # each measured at its rung, told before that rung's judgement
    assert all(set(c) == {"step_time", "memory"} and c["step_time"] > 0 and c["memory"] >= 0 for _, c, _ in at_rungs)
    assert [e for e in events if e[0] == "judge" or e[1:2] != ({"latency": first["latency"]},)][:2] == [at_rungs[0], ("judge", 1)]
    plain = run_trial(TrialConfig(**base), report=RungReport(lambda s, v: False, mo_asha.Rungs(1, 3).is_rung, 8))
    assert plain["metric"] == rec["metric"] and [p.get("rung") for p in plain["curve"]] == [p.get("rung") for p in rec["curve"]]  # bit-identical
    assert [p["loss"] for p in plain["curve"]] == [p["loss"] for p in rec["curve"]]


def test_the_search_help_names_the_default_rung_order(capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI's help states the order a new study gets (written out there: the parser does not import the search)."""
    from unipetl.search.cli import main

    with pytest.raises(SystemExit):
        main(["search", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--rung-order RUNG_ORDER mo-asha: the order inside one non-dominated front" in text
    assert f"crowding distance); default {mo_asha.ORDER} " in text
    spec = studies.StudySpec(task="sst2", model="tiny-bert", mode="frontier", pruner="mo-asha", train={"eval_every": 7})
    assert studies.study_attrs(spec)["rung_order"] == mo_asha.ORDER


def test_an_older_study_keeps_its_order_and_a_bad_stored_one_is_one_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A study from before the order was a setting runs with hv; asking it for another order is refused (it
    would be ignored), the same command continues it. A stored order the worker cannot run with is one
    error line when the study is opened, not a failed trial per ticket."""
    from unipetl.search.cli import main

    url = f"sqlite:///{tmp_path}/o.db"
    base = dict(task="sst2", model="tiny-bert", budget="5%", mode="frontier", trials=2, seeds=1, storage=url, pruner="mo-asha",
                sampler="random", train={"eval_every": 10}, space={"presets": []})
    old = studies.create_or_check(studies.StudySpec(study="old", **base))
    old.set_user_attr("rung_order", None)
    with pytest.raises(UnipetlError, match=r"exists with rung_order='hv' \(created before the order was a setting\), not 'crowding'"):
        studies.create_or_check(studies.StudySpec(study="old", rung_order="crowding", **base))
    assert len(studies.create_or_check(studies.StudySpec(study="old", **{**base, "trials": 3})).get_trials()) == 3
    assert len(studies.create_or_check(studies.StudySpec(study="old", rung_order="hv", **{**base, "trials": 4})).get_trials()) == 4
    # a study from before rungs measured the dev loss: any rung size asked for would be ignored, so it is refused
    old.set_user_attr("rung_examples", None)
    with pytest.raises(UnipetlError, match=r"exists with rung_examples=None \(its rungs rank the main metric: .*\), not 256"):
        studies.create_or_check(studies.StudySpec(study="old", rung_examples=256, **base))
    assert len(studies.create_or_check(studies.StudySpec(study="old", **{**base, "trials": 5})).get_trials()) == 5
    assert old.user_attrs["rung_examples"] is None and old.user_attrs["rung_order"] is None  # nothing stored was changed
    bad = studies.create_or_check(studies.StudySpec(study="bad", **base))
    bad.set_user_attr("rung_order", "nsga")
    with pytest.raises(UnipetlError, match=r"^`study` 'bad' has a stored MO-ASHA setting it cannot run with: `rung_order` should be one of "
                                           r"hv, eps-net, crowding, got 'nsga'\.$"):
        studies.load(url, "bad")
    capsys.readouterr()
    assert main(["resume", "--storage", url, "--study", "bad", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "`rung_order` should be one of hv, eps-net, crowding, got 'nsga'" in err and len(err.splitlines()) == 1, err
    assert all(t.state == TrialState.WAITING for t in bad.get_trials())  # nothing ran, nothing failed


def test_the_summary_counts_each_studys_own_stopped_trials(tmp_path: Path) -> None:
    """Two MO-ASHA studies of one task and model, screened differently, and a budget-mode study whose median
    pruner stopped trials too: each screening sentence counts its own study's stopped trials."""
    from unipetl.reports.build import build_sections
    from unipetl.reports.load import load_studies
    from unipetl.reports.summary import sentences

    url = f"sqlite:///{tmp_path}/two.db"
    counts = {}
    for name, order in (("a", "hv"), ("b", "crowding")):
        spec = studies.StudySpec(task="sst2", model="tiny-bert", budget="5%", mode="frontier", trials=12 if name == "a" else 9, seeds=1, storage=url,
                                 study=name, pruner="mo-asha", sampler="random", train={"eval_every": 10}, space={"presets": []}, rung_order=order)
        studies.create_or_check(spec)
        run_worker(url, name, runner=stub_runner)
        counts[name] = studies.state_counts(optuna.load_study(study_name=name, storage=url))["PRUNED"]
    assert counts["a"] > 0 and counts["b"] > 0
    df, _ = load_studies(url, ["a", "b"])
    df = df.vstack(df.filter(pl.col("study") == "a").with_columns(study=pl.lit("median"), screening=pl.lit(None, pl.Utf8), state=pl.lit("PRUNED")))
    said = [x for x in sentences(build_sections(df, with_plots=False)[0]) if x.startswith("Multi-fidelity")]
    assert len(said) == 2
    for order, name in (("NSGA-II crowding distance", "b"), ("hypervolume contribution", "a")):
        (line,) = [x for x in said if f"within a front by {order};" in x]
        assert f"{counts[name]} trial{'s were' if counts[name] != 1 else ' was'} stopped at a rung" in line, line
