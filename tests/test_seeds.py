"""Extra seeds: linked, resumable trials of the same study, for frontier points and named methods.

A stub evaluator stands in for training (metric = a fixed function of the variant and the seed),
so the bookkeeping is tested exactly: which trials get seeds, how they link to their parent,
that a kill mid-phase resumes without duplicates, and that reports fold them into intervals.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from unipetl.search import study as studies
from unipetl.search.worker import run_worker
from unipetl.spaces.accounting import count
from unipetl.spaces.variant import Variant

optuna.logging.set_verbosity(optuna.logging.WARNING)
CALLS: list[tuple[str, int, float | None]] = []
KILL_AT: dict[str, Any] = {}


def stub(attrs: dict[str, Any], variant: Variant, report: Any, preset: str | None) -> dict[str, Any]:
    """metric = 0.7 + a stable per-variant offset (≤ 0.2) + 0.01 · seed; baseline 0.5 on 10,000 examples."""
    seed = int(attrs["train"]["seed"])
    CALLS.append((variant.describe(), seed, attrs["train"].get("lr_scale")))
    if KILL_AT and len(CALLS) == KILL_AT["call"]:
        raise KeyboardInterrupt  # what a worker killed mid-trial leaves behind (the ticket is re-queued)
    c = count(variant, studies.model_shape(attrs["model"]))
    offset = int(hashlib.sha256(variant.describe().encode()).hexdigest()[:6], 16) / 0xFFFFFF * 0.2
    return {"schema": 1, "status": "ok", "task": attrs["task"], "model": attrs["model"], "variant": variant.to_dict(),
            "variant_description": variant.describe(), "preset": preset, "paper_params": c.paper_params, "base_params": c.base_params,
            "paper_fraction": c.paper_params / c.base_params, "metric": 0.7 + offset + 0.01 * seed, "main_metric": "accuracy",
            "higher_is_better": True, "seed": seed, "baseline_metric": 0.5, "eval_examples": 10_000, "fidelity": "final",
            "lr": {"rates": {"head": 1.0}, "source": "method", "scale": attrs["train"].get("lr_scale", 1.0), "principal": "lora"}}


def _study(tmp_path: Path, *, trials: int = 5, seeds: int = 3, mode: str = "frontier") -> tuple[str, optuna.Study]:
    url = f"sqlite:///{tmp_path}/seeds.db"
    spec = studies.StudySpec(task="sst2", model="tiny-bert", budget="5%", mode=mode, trials=trials, storage=url, study="z", seeds=seeds,
                             train={"max_steps": 1}, space={"presets": ["lora", "pa-ffn"]})
    return url, studies.create_or_check(spec)


def _pairs(study: optuna.Study, states: tuple[TrialState, ...] = (TrialState.COMPLETE,)) -> list[tuple[int, int]]:
    return sorted((int(t.user_attrs["parent"]), int(t.user_attrs["seed_index"])) for t in study.get_trials(deepcopy=False, states=states)
                  if studies.is_seed_trial(t))


def test_frontier_points_and_named_methods_get_linked_seed_trials(tmp_path: Path) -> None:
    CALLS.clear()
    KILL_AT.clear()
    url, study = _study(tmp_path)
    run_worker(url, "z", runner=stub)
    assert studies.finished(study) == 5 and studies.enqueue_seed_trials(study) > 0
    parents = studies.seed_candidates(study)
    named = [t.number for t in parents if t.user_attrs.get("preset")]
    assert named == [0, 1]  # both named methods, whatever the front
    run_worker(url, "z", runner=stub)
    pairs = _pairs(study)
    assert pairs == sorted((p.number, i) for p in parents for i in (1, 2))  # seeds 1 and 2 of every candidate, once
    assert study.user_attrs["seed_trials"] == len(pairs) and studies.finished(study) == studies.target(study) == 5 + len(pairs)
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if not studies.is_seed_trial(t):
            continue
        parent = by_number[t.user_attrs["parent"]]
        rec, prec = t.user_attrs["record"], parent.user_attrs["record"]
        assert rec["variant"] == prec["variant"] and rec["parent"] == parent.number  # the same design …
        assert rec["seed"] == t.user_attrs["seed_index"] and prec["seed"] == 0       # … another seed
        assert rec["lr"]["scale"] == prec["lr"]["scale"]                               # … at the same learning rate
    # named methods train at their kinds' central rate; sampled trials at a searched multiplier in [1/4, 4]
    scales = [s for d, _seed, s in CALLS]
    assert scales[:2] == [1.0, 1.0] and all(0.25 <= s <= 4.0 for s in scales)
    assert len({s for s in scales[2:5]}) == 3
    assert studies.enqueue_seed_trials(study) == 0  # idempotent


def test_an_extra_seed_reuses_its_parents_latency_in_a_fresh_worker(tmp_path: Path, monkeypatch) -> None:
    """The seed phase runs in new worker processes: the parent's measured latency reaches them
    through its stored record (keyed by design), so an extra seed does not time the design again."""
    from unipetl.evaluators import latency

    measured: list[str] = []

    def timed(attrs: dict[str, Any], variant: Variant, report: Any, preset: str | None) -> dict[str, Any]:
        rec = stub(attrs, variant, report, preset)
        key = latency.design_key(variant=variant.to_dict(), model=attrs["model"])
        rec["latency"] = latency.reuse_or_measure(key, lambda: measured.append(variant.describe()) or {"batch1_ms": 1.0 + len(measured), "batch_ms_per_example": 0.5, "batch1_ratio": 1.1})
        return rec

    CALLS.clear()
    KILL_AT.clear()
    monkeypatch.setattr(latency, "_MEASURED", {})
    url, study = _study(tmp_path)
    run_worker(url, "z", runner=timed)
    designs = {t.user_attrs["record"]["variant_description"] for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
    assert sorted(measured) == sorted(designs) and studies.enqueue_seed_trials(study) > 0  # each distinct design timed once
    first = list(measured)
    monkeypatch.setattr(latency, "_MEASURED", {})  # what a new worker process starts with
    run_worker(url, "z", runner=timed)
    assert measured == first  # no design timed again in the seed phase
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    seeds = [t for t in by_number.values() if studies.is_seed_trial(t)]
    assert seeds and all(t.state == TrialState.COMPLETE for t in seeds)
    for t in seeds:
        mine, theirs = t.user_attrs["record"]["latency"], by_number[t.user_attrs["parent"]].user_attrs["record"]["latency"]
        assert mine["reused"] is True  # the parent measured it, or reused it from an earlier trial of its variant (the stub's
        assert mine["batch1_ms"] == theirs["batch1_ms"] and mine["design"] == theirs["design"]  # metric ignores lr: such ties all get seeds)
    assert any(by_number[t.user_attrs["parent"]].user_attrs["record"]["latency"]["reused"] is False for t in seeds)


def test_kill_during_the_seed_phase_resumes_without_duplicates(tmp_path: Path) -> None:
    CALLS.clear()
    KILL_AT.clear()
    url, study = _study(tmp_path, trials=4)
    run_worker(url, "z", runner=stub)
    studies.enqueue_seed_trials(study)
    KILL_AT["call"] = len(CALLS) + 2  # the second seed trial is killed while it trains
    with pytest.raises(KeyboardInterrupt):
        run_worker(url, "z", runner=stub)
    KILL_AT.clear()
    (killed,) = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    (retry,) = [t for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)) if t.system_attrs.get("failed_trial") == killed.number]
    assert killed.user_attrs["interrupted"] is True and "interrupted" not in retry.user_attrs  # a fresh try: its own failure counts
    # resume = the driver again: enqueue (idempotent) and run workers
    assert studies.enqueue_seed_trials(study) == 0
    run_worker(url, "z", runner=stub)
    pairs = _pairs(study)
    assert len(pairs) == len(set(pairs)) == study.user_attrs["seed_trials"]  # every (parent, seed) exactly once
    assert {p for p, _ in pairs} == {t.number for t in studies.seed_candidates(study)}
    assert len(_pairs(study, (TrialState.FAIL,))) == 1  # the killed run stays as a FAIL, its retry COMPLETE


def test_seeds_one_adds_no_trials_and_bad_seeds_are_refused(tmp_path: Path) -> None:
    url, study = _study(tmp_path, trials=3, seeds=1, mode="budget")
    run_worker(url, "z", runner=stub)
    assert studies.enqueue_seed_trials(study) == 0 and studies.target(study) == 3
    with pytest.raises(studies.UnipetlError, match="`seeds` should be an integer in 1..20, got 0"):
        studies.StudySpec(task="sst2", model="tiny-bert", seeds=0).validate()


def test_report_folds_seed_trials_into_intervals(tmp_path: Path) -> None:
    from unipetl.reports.frontier import design_points
    from unipetl.reports.load import load_studies

    CALLS.clear()
    KILL_AT.clear()
    url, study = _study(tmp_path, trials=3, mode="budget")
    run_worker(url, "z", runner=stub)
    studies.enqueue_seed_trials(study)
    run_worker(url, "z", runner=stub)
    df, _ = load_studies(url, ["z"])
    pts = design_points(df)
    from unipetl.search.commands.status import summary

    st = summary(study)  # `unipetl status` sees the same design points: means over seeds, not a lucky seed
    assert st["best"]["n_seeds"] == 3 and st["best"]["metric"] == pytest.approx(max(pts["metric"].to_list()))
    seeded = pts.filter(pts["n_seeds"] == 3)
    assert seeded.height == len(studies.seed_candidates(study))
    for r in seeded.iter_rows(named=True):  # stub: seeds 0, 1, 2 add 0, 0.01, 0.02 → mean +0.01, std 0.01
        assert r["metric_std"] == pytest.approx(0.01) and r["metric_hi"] - r["metric_lo"] == pytest.approx(2 * 4.302652729911275 * 0.01 / 3 ** 0.5)


def test_seed_candidates_take_every_tied_design_but_a_reproposed_design_once() -> None:
    """Two distinct designs tied on the front both get seeds, whatever their order (the front kept the first of exact
    ties); the same variant at the same learning rates proposed again gets them once, at its first trial."""
    study = optuna.create_study(directions=["maximize", "minimize"])

    def add(variant: str, metric: float, scale: float = 1.0) -> None:
        from unipetl.spaces.presets import parse_preset

        v = parse_preset(variant)
        rec = {"metric": metric, "paper_fraction": 0.004, "variant": v.to_dict(), "lr": {"scale": scale}, "baseline_metric": 0.5, "eval_examples": 10_000}
        study.add_trial(optuna.trial.create_trial(values=[metric, 0.004], user_attrs={"record": rec}))

    add("pa-ffn:r=8", 0.85)
    add("lora:r=8", 0.85)             # tied with trial 0: a distinct design
    add("lora:r=8", 0.85)             # trial 1 again, same learning rates: the same design
    add("lora:r=8", 0.85, scale=2.0)  # at another learning rate: a design of its own
    add("pa-ffn:r=4", 0.80)           # dominated
    assert [t.number for t in studies.seed_candidates(study)] == [0, 1, 3]


def _front_study() -> tuple[optuna.Study, Any]:
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_user_attr("seeds", 2)

    def add(variant: str, metric: float, fraction: float, **attrs: Any) -> None:
        from unipetl.spaces.presets import parse_preset

        rec = {"metric": metric, "paper_fraction": fraction, "variant": parse_preset(variant).to_dict(), "lr": {"scale": 1.0}}
        study.add_trial(optuna.trial.create_trial(values=[metric, fraction], params={"x": metric}, distributions={"x": optuna.distributions.FloatDistribution(0, 1)},
                                                  user_attrs={"record": rec, **attrs}))

    return study, add


def test_seed_trials_count_every_pair_a_new_front_point_adds() -> None:
    """After a resume whose new trial joins the front, the study counted max(wanted now, pairs it had): one new point's
    ticket stayed WAITING while the study reported itself done."""
    study, add = _front_study()
    add("lora:r=4", 0.80, 0.001)
    add("lora:r=8", 0.85, 0.002)
    assert studies.enqueue_seed_trials(study) == 2 and study.user_attrs["seed_trials"] == 2
    add("lora:r=2", 0.81, 0.0005)  # dominates lora:r=4, joins the front: 2 pairs existed, 2 are wanted, 3 in all
    assert studies.enqueue_seed_trials(study) == 1 and study.user_attrs["seed_trials"] == 3


def test_a_failed_seed_is_replaced_on_its_parents_design_and_a_failed_named_method_by_itself() -> None:
    from unipetl.search.worker import _replace_failed

    study, add = _front_study()
    study.set_user_attr("trials", 4)
    add("lora:r=4", 0.80, 0.001)  # trial 0: params {"x": 0.8}
    failed_seed = optuna.trial.create_trial(state=TrialState.FAIL, user_attrs={"parent": 0, "seed_index": 1})  # failed before its params were stored
    study.add_trial(failed_seed)
    _replace_failed(study, study.get_trials()[-1])
    ticket = study.get_trials(states=(TrialState.WAITING,))[-1]
    assert ticket.system_attrs["fixed_params"] == {"x": 0.8} and ticket.user_attrs == {"parent": 0, "seed_index": 1}
    study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL, user_attrs={"preset": "lora:r=5,s=2.0"}))
    _replace_failed(study, study.get_trials()[-1])
    assert study.get_trials(states=(TrialState.WAITING,))[-1].user_attrs == {"preset": "lora:r=5,s=2.0"}  # not a blank ticket


def test_a_continued_study_keeps_its_seeds_unless_asked_and_refuses_fewer(tmp_path: Path) -> None:
    url, study = _study(tmp_path, trials=2, seeds=5)
    base = dict(task="sst2", model="tiny-bert", budget="5%", mode="frontier", trials=2, storage=url, study="z", train={"max_steps": 1},
                space={"presets": ["lora", "pa-ffn"]})
    studies.create_or_check(studies.StudySpec(**base, seeds=3, seeds_asked=False))  # the default of a run that did not ask
    assert studies.load(url, "z").user_attrs["seeds"] == 5
    with pytest.raises(studies.UnipetlError, match="exists with seeds=5, not 3: fewer seeds"):
        studies.create_or_check(studies.StudySpec(**base, seeds=3))
    studies.create_or_check(studies.StudySpec(**base, seeds=7, max_failures=9))
    assert (studies.load(url, "z").user_attrs["seeds"], studies.load(url, "z").user_attrs["max_failures"]) == (7, 9)
    with pytest.raises(studies.UnipetlError, match="exists with data_dir no data directory .*UNIPETL_DATA_DIR.*, not '"):
        studies.create_or_check(studies.StudySpec(**base, seeds=7, data_dir=str(tmp_path)))  # its workers read the environment's


def test_a_continued_study_reads_the_data_it_was_created_with(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (tmp_path / "link").symlink_to(data)
    url = f"sqlite:///{tmp_path}/d.db"
    base = dict(task="sst2", model="tiny-bert", budget="5%", trials=1, storage=url, study="d", seeds=1)
    studies.create_or_check(studies.StudySpec(**base, data_dir=str(data)))
    monkeypatch.chdir(tmp_path)
    for same in (None, "data", str(data) + "/", str(tmp_path / "link")):  # not asked, relative, trailing slash, a symlink
        studies.create_or_check(studies.StudySpec(**base, data_dir=same))
    with pytest.raises(studies.UnipetlError, match=r"exists with data_dir '.*/data', not '.*/other'; its trials read the stored data"):
        studies.create_or_check(studies.StudySpec(**base, data_dir=str(tmp_path / "other")))
    assert studies.load(url, "d").user_attrs["data_dir"] == str(data)


def test_seed_candidates_come_from_the_front_the_study_trades() -> None:
    """A study trading latency re-seeded the (paper fraction, metric) front: a slow small design got seeds and the
    fast point of its own front did not."""
    from unipetl.spaces.presets import parse_preset

    study = optuna.create_study(directions=["maximize", "minimize"])
    for k, v in {"mode": "frontier", "objectives": ["metric", "latency"], "seeds": 2}.items():
        study.set_user_attr(k, v)
    for variant, metric, fraction, latency in (("lora:r=4", 0.85, 0.004, 1.0), ("pa-ffn:r=2", 0.85, 0.001, 1.2), ("pa-ffn:r=8", 0.80, 0.002, 1.3)):
        rec = {"metric": metric, "paper_fraction": fraction, "variant": parse_preset(variant).to_dict(), "lr": {"scale": 1.0},
               "latency": {"batch1_ratio": latency}}
        study.add_trial(optuna.trial.create_trial(values=[metric, latency], user_attrs={"record": rec}))
    assert [t.number for t in studies.seed_candidates(study)] == [0]  # merged LoRA: as accurate and faster; not the smaller adapter
    study.set_user_attr("objectives", None)  # the default frontier: metric and paper params
    assert [t.number for t in studies.seed_candidates(study)] == [1]
