"""`--backend tune`: Ray Tune with OptunaSearch over the same define-by-run space, ASHA on the
evaluator's intermediate reports, and every finished Tune trial mirrored into the Optuna study.

Why mirror instead of reading Tune's results directly: the Optuna study stays the single source
of truth, so `unipetl status` / `unipetl report` and the frontier work unchanged
whichever backend ran. Mirroring fills the study's *tickets* (the WAITING trials that
`unipetl.search.study.create_or_check` put there), so the trial budget is held the same way as with
Optuna workers: a Tune trial that ran to the end becomes COMPLETE (record fidelity "final"), one
stopped early by ASHA becomes PRUNED (status "pruned", fidelity "partial"), one that raised
becomes FAIL. Only COMPLETE trials carry objective values, so only final-fidelity results reach
the frontier.

Named methods: the space function of a round returns the round's preset tickets as constants
(`{"preset": ...}`) for OptunaSearch's first trials, then samples the space; a mirrored trial
goes to the ticket of its preset.

Rounds: Tune's `num_samples` is fixed per experiment, so a round samples the tickets missing at
its start. Failed trials leave tickets open; the driver runs another round for them (bounded by
the study's `max_failures`). Each round is a Tune experiment `<tune_dir>/round-K`, restorable
with `Tuner.restore(path, trainable)` by `unipetl resume` after a crash or Ctrl-C.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import TrialState
from ray import tune

from unipetl.search import optuna_ext
from unipetl.search import study as studies
from unipetl.search.locks import sqlite_place
from unipetl.spaces.accounting import count
from unipetl.spaces.presets import parse_preset
from unipetl.spaces.registry import UnipetlError
from unipetl.spaces.search_space import SpaceConfig, suggest_lr_scale, suggest_variant
from unipetl.spaces.shapes import ModelShape
from unipetl.spaces.variant import Variant

logger = logging.getLogger(__name__)
BACKEND_ATTR = "backend"  # study user attr: "tune" for studies run by this backend (absent: optuna workers)
DIR_ATTR = "tune_dir"  # study user attr: the absolute Tune run directory of the study
TRAIN_ATTRS = ("task", "model", "mode", "budget_fraction", "space", "train", "data_dir", "main_metric", "higher_is_better")


@dataclass
class TuneSpace:
    """The define-by-run function given to OptunaSearch (picklable: Tune saves the searcher).

    OptunaSearch numbers its own trials from 0, so trial k < len(presets) is the k-th named method."""

    shape: ModelShape
    budget_fraction: float
    space: dict[str, Any]
    presets: tuple[str, ...] = ()
    search_lr: bool = True  # False when the study fixes `train.lr` (one rate for every trial)

    def __call__(self, trial: Any) -> dict[str, Any] | None:
        if trial.number < len(self.presets):
            return {"preset": self.presets[trial.number]}
        cfg = SpaceConfig.from_dict(self.space)
        suggest_variant(trial, self.shape, self.budget_fraction, cfg)
        if self.search_lr:  # the rate is searched with the design, as the workers' sampler does
            suggest_lr_scale(trial, cfg)
        return None


def variant_of(config: dict[str, Any], attrs: dict[str, Any]) -> tuple[Variant, dict[str, Any], dict[str, BaseDistribution]]:
    """(variant, params, distributions) of a Tune trial config; presets carry no parameters."""
    if config.get("preset"):
        return parse_preset(config["preset"]), {}, {}
    # the stored parameters replayed through the define-by-run space: the same variant the
    # sampler saw, and each parameter's distribution (the study needs it to store the parameter)
    replay = optuna.trial.FixedTrial(config)
    cfg = SpaceConfig.from_dict(attrs["space"])
    try:
        variant = suggest_variant(replay, studies.model_shape(attrs["model"]), attrs["budget_fraction"], cfg)
        if attrs["train"].get("lr") is None:
            suggest_lr_scale(replay, cfg)
    except ValueError as err:
        missing = re.search(r"parameter '(.+?)' is not found", str(err))
        if missing is None:
            raise
        raise UnipetlError(f"Tune trial config lacks parameter {missing.group(1)!r} of the space (config keys: {sorted(config)}).") from None
    return variant, {k: config[k] for k in replay.distributions}, replay.distributions


def trial_train(config: dict[str, Any], attrs: dict[str, Any]) -> dict[str, Any]:
    """The study's training settings for one Tune trial: with no fixed `train.lr`, its `lr_scale`
    (named methods: the study's, default 1; sampled points: the one the searcher suggested)."""
    train = dict(attrs["train"])
    if train.get("lr") is None:
        train["lr_scale"] = train.get("lr_scale", 1.0) if config.get("preset") else \
            suggest_lr_scale(optuna.trial.FixedTrial(config), SpaceConfig.from_dict(attrs["space"]))
    return train


# --- the trainable (runs in a Tune actor) ---------------------------------------------------


def train_fn(config: dict[str, Any], attrs: dict[str, Any]) -> None:
    """Train one variant; every evaluation goes to `tune.report` (ASHA decides there), the
    finished record goes in a last report with `final=True`.

    A trial ASHA stops is ended by Tune inside one of those reports, so it never sends a final
    report: that absence is what marks it partial. An evaluator failure raises (Tune ERROR) after
    the failed record is in record.json in the trial directory, where the mirror finds it.

    The evaluator is the workers' (`UNIPETL_RUNNER=package.module:function`, see
    `unipetl.search.worker`); the default fine-tunes with `run_trial`."""
    from unipetl.search.worker import RUNNER_ENV, resolve_runner

    variant, _, _ = variant_of(config, attrs)
    attrs = {**attrs, "train": trial_train(config, attrs)}
    fraction = count(variant, studies.model_shape(attrs["model"])).paper_params / studies.model_shape(attrs["model"]).base_params
    curve: list[list[float]] = []

    def report(step: int, value: float) -> bool:
        if value is None or not math.isfinite(value):
            return False
        curve.append([int(step), float(value)])
        tune.report({"step": int(step), "value": float(value), "paper_fraction": fraction, "final": False, "curve": json.dumps(curve)})
        return False  # Tune stops the trial itself

    trial_dir = tune.get_context().get_trial_dir()
    runner = resolve_runner(os.environ.get(RUNNER_ENV))
    if runner is None:
        from unipetl.evaluators.trial import TrialConfig, run_trial

        record = run_trial(TrialConfig.for_trial(attrs, variant), report=report, out_dir=trial_dir)
    else:
        record = runner(attrs, variant, report, config.get("preset"))
    if config.get("preset") and record.get("preset") is None:
        record["preset"] = config["preset"]
    metric = record.get("metric")
    if record.get("status") != "ok" or metric is None or not math.isfinite(metric):
        path = Path(trial_dir) / "record.json"
        if not path.is_file():  # run_trial writes its own; a plugged-in evaluator's failed record goes there too
            path.write_text(json.dumps({**record, "status": "failed"}))
        raise RuntimeError(f"trial {record.get('status')}: {record.get('error')}")
    steps = (record.get("train_settings") or {}).get("steps") or (curve[-1][0] if curve else 0)
    tune.report({"step": int(steps), "value": float(metric), "paper_fraction": fraction, "final": True, "curve": json.dumps(curve),
                 "record": json.dumps(record)})


# --- mirroring Tune trials into the Optuna study --------------------------------------------


def _claim_ticket(study: optuna.Study, preset: str | None) -> int:
    """Trial id of a WAITING ticket moved to RUNNING: the preset's own ticket first, then an
    empty one; a fresh ticket when none is left (a round sampled past the study's tickets)."""
    def order(waiting: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
        return [t for t in waiting if t.user_attrs.get("preset") == preset] + [t for t in waiting if not t.user_attrs.get("preset")]

    _interval, beat = optuna_ext.heartbeat(study)
    tid = optuna_ext.claim_waiting(study, order, before=beat)  # a RUNNING ticket always has a heartbeat: a driver that dies here leaves it stale, not stuck
    if tid is not None:
        return tid
    study.enqueue_trial({}, user_attrs={"preset": preset} if preset else None)
    return _claim_ticket(study, preset)


def _partial_record(attrs: dict[str, Any], variant: Variant, counts: Any, result: dict[str, Any], preset: str | None) -> dict[str, Any]:
    """The record of a trial ASHA stopped: what its reports said (the curve of the main metric)."""
    from unipetl.evaluators.record import make_record

    main, hib = attrs["main_metric"], attrs["higher_is_better"]
    points = json.loads(result.get("curve") or "[]")
    best = (max if hib else min)(points, key=lambda p: p[1]) if points else None
    return make_record(
        status="pruned", error=None, task=attrs["task"], model=attrs["model"], variant=variant.to_dict(), variant_description=variant.describe(),
        preset=preset, paper_params=counts.paper_params, trainable_params=counts.trainable_params, base_params=counts.base_params,
        paper_percent=counts.paper_percent, paper_fraction=counts.paper_params / counts.base_params, trainable_percent=counts.trainable_percent,
        trainable_fraction=counts.trainable_params / counts.base_params, metrics={main: best[1]} if best else {}, main_metric=main,
        higher_is_better=hib, metric=best[1] if best else None, best_step=int(best[0]) if best else None,
        curve=[{"step": int(s), "loss": None, "metrics": {main: v}} for s, v in points],
        wall_seconds=float(result.get("time_total_s") or 0.0), seed=attrs["train"].get("seed"), train_settings=dict(attrs["train"]),
        fidelity="partial",
    )


def _failed_record(attrs: dict[str, Any], variant: Variant, trial_dir: str | None, error: str) -> dict[str, Any]:
    path = Path(trial_dir or "") / "record.json"
    if trial_dir and path.is_file():
        return json.loads(path.read_text())
    from unipetl.evaluators.record import make_record

    return make_record(status="failed", error=error, task=attrs["task"], model=attrs["model"], variant=variant.to_dict(),
                       variant_description=variant.describe(), main_metric=attrs["main_metric"], higher_is_better=attrs["higher_is_better"],
                       fidelity="partial")


def mirror(study: optuna.Study, *, tune_trial_id: str, config: dict[str, Any], result: dict[str, Any] | None, error: str | None,
           trial_dir: str | None = None, round_: int = 0) -> TrialState | None:
    """Store one finished Tune trial in a ticket of the study; idempotent per Tune trial id.

    Returns the state given (None when the trial was mirrored before)."""
    if any(t.user_attrs.get("tune_trial_id") == tune_trial_id for t in study.get_trials(deepcopy=False)):
        return None
    attrs = study.user_attrs
    preset = config.get("preset")
    variant, params, dists = variant_of(config, attrs)
    counts = count(variant, studies.model_shape(attrs["model"]))
    result = result or {}
    if error is not None:
        record, state = _failed_record(attrs, variant, trial_dir, error), TrialState.FAIL
    elif result.get("final") and result.get("record"):
        record, state = json.loads(result["record"]), TrialState.COMPLETE
    else:
        record, state = _partial_record({**attrs, "train": trial_train(config, attrs)}, variant, counts, result, preset), TrialState.PRUNED
    fraction = counts.paper_params / counts.base_params
    values = studies.objective_values(attrs, {"paper_fraction": fraction, **record}) if state == TrialState.COMPLETE else None
    if state == TrialState.COMPLETE and values is None:  # a frontier objective the trial did not measure: it cannot be placed
        record, state = {**record, "status": "failed", "error": "the record lacks a frontier objective of the study"}, TrialState.FAIL
    trial_id = _claim_ticket(study, preset)
    for name, value in params.items():
        optuna_ext.set_param(study, trial_id, name, value, dists[name])
    if attrs["mode"] == "budget":  # the evaluations as intermediate values, as Optuna workers report them
        for step, value in json.loads(result.get("curve") or "[]"):
            optuna_ext.set_intermediate(study, trial_id, step, value)
    for key, value in {"record": record, "tune_trial_id": tune_trial_id, "tune_round": round_, "paper_params": counts.paper_params,
                       "paper_fraction": fraction, "variant_description": variant.describe(), **({"preset": preset} if preset else {})}.items():
        optuna_ext.set_user_attr(study, trial_id, key, value)
    trial = optuna_ext.live(study, trial_id)
    if values is not None:  # what the study trades, as the Optuna workers tell it (it was always [metric, paper fraction])
        study.tell(trial, values)
    else:
        study.tell(trial, state=state)
    logger.info("tune trial %s → study trial %d %s", tune_trial_id, trial.number, state.name)
    return state


# --- the driver: rounds of Tune experiments, restore, Ray start-up --------------------------


def default_tune_dir(storage_url: str, study_name: str) -> str:
    """Next to the study: <folder of the SQLite file's real path>/tune/<file name>/<study> (the
    same folder for every spelling of one file, `locks.sqlite_place`); runs/tune/<digest of the
    URL>/<study> for a database server or an in-memory SQLite database — two databases holding a
    study of the same name never share (or restore) one Tune run."""
    place = sqlite_place(storage_url)
    if place is not None and place[0] == "file":
        base, where = Path(place[1]).parent, Path(place[1]).name  # the file's whole name: a.db and a.sqlite are two databases
    else:  # a server (or memory): the database's identity, so two databases with a study of one name never share a run
        import hashlib

        from unipetl.reports.load import mask_url

        base, where = Path("runs"), hashlib.sha256(mask_url(storage_url).encode()).hexdigest()[:12]
    return str((base / "tune" / where / study_name).resolve())


def _round_state(study: optuna.Study) -> tuple[list[int], list[int]]:
    """(samples per round, trials mirrored per round) from the study."""
    rounds = list(study.user_attrs.get("tune_rounds", []))
    mirrored = [0] * len(rounds)
    for t in study.get_trials(deepcopy=False):
        k = t.user_attrs.get("tune_round")
        if t.user_attrs.get("tune_trial_id") and k is not None and k < len(mirrored):
            mirrored[k] += 1
    return rounds, mirrored


class MirrorCallback(tune.Callback):
    """Mirrors each Tune trial into the study the moment it ends (in the driver process).

    Tune calls `on_trial_complete` for a trial that returned and for one its scheduler stopped;
    the final report tells the two apart (see `mirror`). Pickled with the experiment, so a
    restored Tuner mirrors into the same study."""

    def __init__(self, storage_url: str, study_name: str, round_: int) -> None:
        self.storage_url, self.study_name, self.round_ = storage_url, study_name, round_
        self._study: optuna.Study | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_study": None}

    def study(self) -> optuna.Study:
        if self._study is None:
            self._study = studies.load(self.storage_url, self.study_name)
        return self._study

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        mirror(self.study(), tune_trial_id=trial.trial_id, config=dict(trial.config), result=dict(trial.last_result or {}), error=None,
               trial_dir=trial.local_path, round_=self.round_)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        err = trial.get_error()
        mirror(self.study(), tune_trial_id=trial.trial_id, config=dict(trial.config), result=dict(trial.last_result or {}),
               error=str(err).strip().splitlines()[-1] if err else "Tune trial error", trial_dir=trial.local_path, round_=self.round_)


def _trainable(attrs: dict[str, Any], cpus_per_trial: float, gpus_per_trial: float) -> Any:
    return tune.with_resources(tune.with_parameters(train_fn, attrs={k: attrs.get(k) for k in TRAIN_ATTRS}), {"cpu": cpus_per_trial, "gpu": gpus_per_trial})


def make_scheduler(attrs: dict[str, Any]) -> Any:
    """ASHA on the evaluations (time axis: training steps) in budget mode; FIFO in frontier mode
    (stopping on the metric alone would cut the cheap end of the front, as Optuna refuses to
    prune multi-objective studies) or with `pruner: none`."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if attrs["mode"] != "budget" or attrs.get("pruner") == "none":
        return FIFOScheduler()
    train = attrs.get("train") or {}
    # max_t one past the last step: a trial that reaches its last evaluation is never stopped
    # before it sends its final record
    max_t = int(train.get("max_steps") or 10**6) + 1
    return ASHAScheduler(time_attr="step", metric="value", mode="max" if attrs["higher_is_better"] else "min", max_t=max_t,
                         grace_period=max(1, int(train.get("eval_every") or 1)), reduction_factor=2)


def _new_tuner(study: optuna.Study, round_: int, storage_url: str, *, cpus_per_trial: float, gpus_per_trial: float, scheduler: Any, stop: Any,
               verbose: int, seed: int | None, max_samples: int | None = None) -> Any:
    """A Tune experiment sampling the tickets WAITING now (at most `max_samples`: the first ones)."""
    from ray.tune.search.optuna import OptunaSearch

    attrs = study.user_attrs
    waiting = sorted(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)), key=lambda t: t.number)[:max_samples]
    presets = tuple(t.user_attrs["preset"] for t in waiting if t.user_attrs.get("preset"))
    space = TuneSpace(studies.model_shape(attrs["model"]), attrs["budget_fraction"], attrs["space"], presets, search_lr=attrs["train"].get("lr") is None)
    hib = "max" if attrs["higher_is_better"] else "min"
    metric, mode = ("value", hib) if attrs["mode"] == "budget" else (["value", "paper_fraction"], [hib, "min"])
    # each round its own sampler seed: one seed for every round proposed round 0's points again
    searcher = OptunaSearch(space=space, metric=metric, mode=mode, sampler=studies.make_sampler(attrs, None if seed is None else seed + round_))
    study.set_user_attr("tune_rounds", [*attrs.get("tune_rounds", []), len(waiting)])
    return tune.Tuner(
        _trainable(attrs, cpus_per_trial, gpus_per_trial),
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler or make_scheduler(attrs), num_samples=len(waiting)),
        run_config=tune.RunConfig(name=f"round-{round_}", storage_path=attrs[DIR_ATTR], stop=stop, verbose=verbose,
                                  callbacks=[MirrorCallback(storage_url, study.study_name, round_)]),
    )


def run_tune(storage_url: str, study_name: str, *, address: str | None = None, cpus_per_trial: float = 1.0, gpus_per_trial: float = 0.0,
             scheduler: Any = None, stop: Any = None, verbose: int = 0, seed: int | None = None, max_trials: int | None = None) -> bool:
    """Run (or restore) the study's Tune rounds until COMPLETE + PRUNED reaches its trial budget.

    Returns True when the budget is reached; False when a round ended early (Ctrl-C, a stopper),
    failures exhausted `max_failures`, or new rounds sampled `max_trials` trials in this call —
    `unipetl resume` continues from there."""
    study = studies.load(storage_url, study_name)
    if study.user_attrs.get(BACKEND_ATTR) != "tune":
        raise UnipetlError(f"study {study_name!r} was not created with --backend tune.")
    started = _ensure_ray(address, cpus_per_trial)
    try:
        rounds, mirrored = _round_state(study)
        if rounds and mirrored[-1] < rounds[-1]:
            path = os.path.join(study.user_attrs[DIR_ATTR], f"round-{len(rounds) - 1}")
            if tune.Tuner.can_restore(path):
                logger.info("restoring Tune experiment %s", path)
                tune.Tuner.restore(path, trainable=_trainable(study.user_attrs, cpus_per_trial, gpus_per_trial), resume_unfinished=True).fit()
                if not _round_done(study) and _round_state(study)[1][-1] > mirrored[-1]:
                    return False  # interrupted again: resume once more
            # a round that never saved its state, or whose trials Tune ended without finishing them
            # (a stopper): its tickets are still WAITING and go to a new round below
        sampled = 0
        while studies.finished(study) < study.user_attrs["trials"]:
            if max_trials is not None and sampled >= max_trials:
                return False
            failed = len(study.get_trials(deepcopy=False, states=(TrialState.FAIL,)))
            if failed > study.user_attrs.get("max_failures", study.user_attrs["trials"]):
                logger.warning("study %s: %d failed trials, no more rounds", study_name, failed)
                return False
            _retry_failed_presets(study)
            studies.top_up(study)
            round_ = len(study.user_attrs.get("tune_rounds", []))
            tuner = _new_tuner(study, round_, storage_url, cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial, scheduler=scheduler,
                               stop=stop, verbose=verbose, seed=seed, max_samples=None if max_trials is None else max_trials - sampled)
            sampled += study.user_attrs["tune_rounds"][-1]
            tuner.fit()
            if not _round_done(study):
                return False
        return True
    finally:
        if started:
            import ray

            ray.shutdown()


def _retry_failed_presets(study: optuna.Study) -> None:
    """A named method whose trial failed gets a ticket once more, as the workers' replacement does
    (search.worker._replace_failed); after a second failure its gap is left to top_up's blank
    ticket. The retry takes a gap: a blank WAITING ticket becomes the method's (a resumed study's
    top-up may have filled the gap already), else a new ticket while the design trials in play
    fall short of the study's `trials` — never one more trial than the budget. Driver only."""
    with studies.driver_lock(study):
        trials = study.get_trials(deepcopy=False)
        designs = [t for t in trials if not studies.is_seed_trial(t)]
        in_play = sum(1 for t in designs if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.WAITING, TrialState.RUNNING))
        blank = [t for t in designs if t.state == TrialState.WAITING and not t.user_attrs.get("preset")]
        for preset in dict.fromkeys(t.user_attrs.get("preset") for t in designs if t.state == TrialState.FAIL and t.user_attrs.get("preset")):
            if not studies.named_retry_due(designs, preset) or any(t.state != TrialState.FAIL and t.user_attrs.get("preset") == preset for t in designs):
                continue
            if blank:
                optuna_ext.set_user_attr(study, optuna_ext.trial_id(blank.pop(0)), "preset", preset)
            elif in_play < int(study.user_attrs["trials"]):
                study.enqueue_trial({}, user_attrs={"preset": preset})
                in_play += 1


def _round_done(study: optuna.Study) -> bool:
    rounds, mirrored = _round_state(study)
    return not rounds or mirrored[-1] >= rounds[-1]


def _ensure_ray(address: str | None, cpus_per_trial: float) -> bool:
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False,
                              "runtime_env": {"env_vars": {"HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}}}
    if address and address != "local":
        kwargs["address"] = address
    else:
        kwargs["num_cpus"] = max(2, int(cpus_per_trial))
    ray.init(**kwargs)
    return True


def prepare_study(study: optuna.Study, storage_url: str, tune_dir: str | None = None) -> None:
    """Mark a new study as a Tune study and fix its run directory (kept on later runs)."""
    if study.user_attrs.get(BACKEND_ATTR) != "tune":
        study.set_user_attr(BACKEND_ATTR, "tune")
    if not study.user_attrs.get(DIR_ATTR):
        study.set_user_attr(DIR_ATTR, str(Path(tune_dir).resolve()) if tune_dir else default_tune_dir(storage_url, study.study_name))
