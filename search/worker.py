"""A worker: claim a ticket (WAITING trial), suggest a variant inside the budget, train, store.

Workers are stateless: everything comes from the study's user attrs. Run in-process
(`run_worker`), as local processes (`python -m unipetl.search.worker --storage URL --study NAME`,
spawned by `unipetl search --workers N`), or as Ray tasks (`unipetl.search.ray_backend`).

While a trial trains, a heartbeat thread writes to the storage every `heartbeat_interval`
seconds; a worker killed mid-trial stops beating, and any other worker (or a later `resume`)
marks its trial FAIL and re-queues it with the same parameters (`fail_stale_trials`).

The evaluator is pluggable (documented in docs/operations.md): `run_worker(runner=...)` in
process, or `UNIPETL_RUNNER=package.module:function` / `--runner` for worker processes and Ray
tasks. A runner is called as `runner(attrs, variant, report, preset) -> record`; the default
fine-tunes with `unipetl.evaluators.trial.run_trial`. Load tests use it to measure the storage alone.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import logging
import math
import os
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import optuna
from optuna.trial import TrialState

from unipetl.evaluators.reporting import RungReport
from unipetl.reports.objectives import COSTS
from unipetl.search import optuna_ext
from unipetl.search import study as studies
from unipetl.search.mo_asha import COSTS_ATTR, LEGACY_COSTS, stored_rungs
from unipetl.search.mo_asha import PRUNER as MO_ASHA
from unipetl.search.mo_asha import judge as mo_asha_judge
from unipetl.spaces.presets import parse_preset
from unipetl.spaces.registry import UnipetlError
from unipetl.spaces.search_space import SpaceConfig, suggest_lr_scale, suggest_variant
from unipetl.spaces.variant import Variant

logger = logging.getLogger(__name__)
POLL_SECONDS = 2.0
RUNNER_ENV = "UNIPETL_RUNNER"
Runner = Callable[..., dict[str, Any]]


def resolve_runner(spec: str | None) -> Runner | None:
    """'package.module:function' → the evaluator callable (None / '' → the default evaluator)."""
    if not spec:
        return None
    module, _, name = spec.partition(":")
    if not module or not name:
        raise UnipetlError(f"`{RUNNER_ENV}` / --runner must look like package.module:function, got {spec!r}.")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise UnipetlError(f"`{RUNNER_ENV}` / --runner {spec!r} cannot be imported: {err}.") from None
    if not callable(fn):
        raise UnipetlError(f"`{RUNNER_ENV}` / --runner {spec!r} is not callable.")
    return fn


def _retry_locked(fn: Callable[[], Any], what: str, attempts: int = 8) -> Any:
    """Run a storage call again when the database refuses it for a moment.

    SQLite answers "database is locked" when two writers collide (a busy timeout does not help a
    reader that wants to become a writer while another writer waits: SQLite returns at once to
    avoid a deadlock); PostgreSQL may drop a connection. The call is retried with a growing pause."""
    from sqlalchemy.exc import DBAPIError

    for i in range(attempts):
        try:
            return fn()
        except DBAPIError as err:
            if i == attempts - 1 or not (err.connection_invalidated or "locked" in str(err) or "could not serialize" in str(err)):
                raise
            logger.info("%s: storage busy (%s); retry %d", what, str(err).splitlines()[0][:80], i + 1)
            time.sleep(min(2.0, 0.05 * 2**i))
    return None  # pragma: no cover - the loop returns or raises


class _Heartbeat:
    """Beats for one trial until stopped (Optuna's own heartbeat runs only inside optimize())."""

    def __init__(self, study: optuna.Study, trial: optuna.Trial) -> None:
        (self._interval, self._beat), self._tid = optuna_ext.heartbeat(study), optuna_ext.trial_id(trial)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._beat(self._tid)
            except Exception:  # noqa: BLE001 - a missed beat is retried; the grace period covers it
                logger.warning("heartbeat for trial %d failed", self._tid, exc_info=True)
            self._stop.wait(self._interval)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def claim(study: optuna.Study) -> optuna.Trial | None:
    """Atomically move one WAITING trial to RUNNING (no second process can claim it too).

    The heartbeat is written *before* the claim, so a RUNNING trial always has a heartbeat
    row: a worker killed right after claiming still leaves a trial that turns stale."""
    _interval, beat = optuna_ext.heartbeat(study)
    tid = optuna_ext.claim_waiting(study, before=beat, retry=_retry_locked)
    return None if tid is None else optuna_ext.live(study, tid)


def variant_for(trial: optuna.Trial, attrs: dict[str, Any]) -> Variant:
    shape = studies.model_shape(attrs["model"])
    preset = trial.user_attrs.get("preset")
    if preset:
        return parse_preset(preset)
    return suggest_variant(trial, shape, attrs["budget_fraction"], SpaceConfig.from_dict(attrs["space"]))


def _failed_record(attrs: dict[str, Any], variant: Variant | None, error: str) -> dict[str, Any]:
    return {"schema": 1, "status": "failed", "error": error, "task": attrs["task"], "model": attrs["model"],
            "variant": variant.to_dict() if variant else None, "metric": None, "main_metric": attrs["main_metric"],
            "higher_is_better": attrs["higher_is_better"]}


def run_one(study: optuna.Study, trial: optuna.Trial, *, runner: Runner | None = None) -> TrialState | None:
    """Train one claimed trial and tell the study its outcome; returns the final state.

    The heartbeat covers the whole trial, from the claim to the stored outcome, so a slow storage
    write cannot make a live trial look stale. Returns None when another worker (or `resume`)
    had already failed this trial as stale: its retry ticket runs it again, nothing is stored twice."""
    attrs = study.user_attrs
    holder: dict[str, Any] = {}
    with _Heartbeat(study, trial):
        try:
            record = _train(trial, attrs, runner or _run_trial, holder)
        except KeyboardInterrupt:
            # leave the study resumable: this ticket fails and an identical one is queued again
            # (the mark first: a finished trial's attributes can no longer be written)
            optuna_ext.set_user_attr(study, optuna_ext.trial_id(trial), "interrupted", True)
            study.tell(trial, state=TrialState.FAIL)
            again = copy.deepcopy(optuna_ext.frozen(study, trial))
            again.user_attrs = {k: v for k, v in again.user_attrs.items() if k != "interrupted"}  # a fresh try: its own failure counts
            studies.retry_callback(max_retry=None)(study, again)
            raise
        except optuna.exceptions.UpdateFinishedTrialError:
            return _lost(trial)
        except Exception as err:  # noqa: BLE001 - one bad variant (NaN, OOM, a bug in a module) must not stop the search
            logger.error("trial %d raised: %s", trial.number, err)
            record = _failed_record(attrs, holder.get("variant"), f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=5)}")
        if studies.is_seed_trial(trial) and isinstance(record, dict):
            record = {**record, "parent": trial.user_attrs["parent"]}
        try:
            return _store(study, trial, attrs, record)
        except optuna.exceptions.UpdateFinishedTrialError:
            return _lost(trial)


def _lost(trial: optuna.Trial) -> None:
    logger.warning("trial %d was failed as stale by another process while it ran; its retry ticket runs it again", trial.number)
    return None


def _store(study: optuna.Study, trial: optuna.Trial, attrs: dict[str, Any], record: dict[str, Any]) -> TrialState:
    """The record first, then the state: a crash between the two leaves a RUNNING trial that
    turns stale and is retried, never a COMPLETE trial without its record."""
    status = record.get("status")
    metric = record.get("metric")
    ok = status == "ok" and isinstance(metric, (int, float)) and math.isfinite(metric)
    if status == "ok" and not ok:
        record = {**record, "status": "failed", "error": record.get("error") or f"the evaluator returned no finite metric ({metric!r})"}
    _retry_locked(lambda: trial.set_user_attr("record", record), "store record")
    values = studies.objective_values(attrs, {"paper_fraction": trial.user_attrs.get("paper_fraction"), **record}) if ok else None
    if ok and values is None:  # a frontier objective the evaluator did not measure (e.g. no latency): the point cannot be placed
        missing = [o for o in studies.objectives_of(attrs)[1:] if COSTS[o].of_record(record) is None]
        ok, record = False, {**record, "status": "failed", "error": f"the record lacks the frontier objective(s) {', '.join(missing)}"}
        _retry_locked(lambda: trial.set_user_attr("record", record), "store record")
    if ok:
        _retry_locked(lambda: _tell_once(study, trial, TrialState.COMPLETE, values), "tell")
        return TrialState.COMPLETE
    if status == "pruned":
        _retry_locked(lambda: _tell_once(study, trial, TrialState.PRUNED), "tell")
        return TrialState.PRUNED
    with studies.driver_lock(study):  # a driver topping up meanwhile would fill the same gap
        _retry_locked(lambda: _tell_once(study, trial, TrialState.FAIL), "tell")
        _retry_locked(lambda: _replace_failed(study, trial), "replace failed")
    return TrialState.FAIL


def _tell_once(study: optuna.Study, trial: optuna.Trial, state: TrialState, values: list[float] | None = None) -> None:
    """`study.tell`, safe to retry: when an earlier attempt reached the storage before the
    database refused a later statement of the same call (SQLite "database is locked"), the
    trial is already in `state`, and telling it again must not look like a lost trial."""
    try:
        if values is not None:
            study.tell(trial, values)
        else:
            study.tell(trial, state=state)
    except optuna.exceptions.UpdateFinishedTrialError:
        if optuna_ext.frozen(study, trial).state != state:
            raise  # finished by someone else (stale): the caller reports the trial as lost


def _train(trial: optuna.Trial, attrs: dict[str, Any], runner: Callable[..., dict[str, Any]], holder: dict[str, Any]) -> dict[str, Any]:
    from unipetl.spaces.accounting import count

    variant = holder["variant"] = variant_for(trial, attrs)
    counts = count(variant, studies.model_shape(attrs["model"]))
    trial.set_user_attr("paper_params", counts.paper_params)
    trial.set_user_attr("paper_fraction", counts.paper_params / counts.base_params)
    trial.set_user_attr("variant_description", variant.describe())
    seed_trial = studies.is_seed_trial(trial)  # an extra seed always trains to the end
    if seed_trial:  # its parent's latency was measured on the same design: keep it for reuse (checked by key)
        _remember_parent_latency(trial)
    prunable = attrs["mode"] == "budget" and not seed_trial
    mo_asha = attrs["mode"] == "frontier" and attrs.get("pruner") == MO_ASHA
    rungs = stored_rungs(attrs) if mo_asha and not seed_trial else None
    rung_examples = attrs.get("rung_examples")  # absent in studies created before rungs measured the dev loss
    rung_costs = tuple(attrs.get("rung_costs") or LEGACY_COSTS)  # absent in studies created before rungs ranked their own costs
    noted: dict[str, Any] = {}  # {cost: value} of the structure; {"at": {step: {cost: value}}} measured at a rung

    def note(costs: Mapping[str, float], step: int | None) -> None:  # the evaluator's measured costs: stored before the rung they count for
        finite = {k: float(v) for k, v in costs.items() if math.isfinite(float(v))}
        if finite:
            if step is None:
                noted.update(finite)
            else:
                noted.setdefault("at", {}).setdefault(str(int(step)), {}).update(finite)
            optuna_ext.set_user_attr(trial.study, optuna_ext.trial_id(trial), COSTS_ATTR, noted)

    named = bool(trial.user_attrs.get("preset"))
    train = dict(attrs["train"])
    if train.get("lr") is None:  # method-aware rates: named methods at their kinds' central lr, sampled ones searched
        train["lr_scale"] = train.get("lr_scale", 1.0) if named else suggest_lr_scale(trial, SpaceConfig.from_dict(attrs["space"]))
    train["seed"] = int(train.get("seed", 0)) + int(trial.user_attrs.get("seed_index", 0))
    trial.set_user_attr("seed", train["seed"])

    def report(step: int, value: float) -> bool:
        if value is None or not math.isfinite(value):
            return False
        if rungs is not None:  # frontier mode, multi-fidelity: successive halving by non-dominated rank
            # the rung's value: the dev loss on a fixed subset (lower is better); the main metric in older studies
            stop = mo_asha_judge(trial.study, trial, int(step), float(value), rungs, higher=rung_examples is None and bool(attrs["higher_is_better"]),
                                 paper_fraction=counts.paper_params / counts.base_params, costs=rung_costs, noted=noted)
            # a named method competes at the rung (its value is stored) but trains to the end: it is
            # the report's reference point, and stopping one that sits on the front loses its area
            return stop and not named
        if not prunable:
            return False
        trial.report(float(value), int(step))
        return trial.should_prune()

    # MO-ASHA judges only at rungs: evaluate there (and at the end), not at every `eval_every`;
    # its extra seeds are evaluated at the end only, as their design trial is (one mean, one kind of number)
    if rungs is not None:
        judged: Any = RungReport(report, rungs.is_rung, rung_examples, costs=rung_costs, note=note)
    elif mo_asha and rung_examples is not None:  # an extra seed
        judged = RungReport(report, lambda _step: False, rung_examples)
    else:
        judged = report
    return runner({**attrs, "train": train}, variant, judged, trial.user_attrs.get("preset"))


def _remember_parent_latency(trial: optuna.Trial) -> None:
    from unipetl.evaluators.latency import remember

    parent = int(trial.user_attrs["parent"])
    for t in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.number == parent:
            remember((t.user_attrs.get("record") or {}).get("latency"))
            return


def _replace_failed(study: optuna.Study, trial: optuna.Trial) -> None:
    """A fresh ticket for a failed trial, up to `max_failures` in the study's life: for an extra
    seed its parent's parameters and the same seed (the failed try may have stored only the
    parameters drawn before it failed: the pair must still be run on the parent's design and
    learning rate); for a named method the same preset once (a second failure of it gets a blank
    ticket: a method that cannot run must not use up the failures); for a sampled design a blank one."""
    failed = sum(1 for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)) if not t.user_attrs.get("interrupted"))
    if failed <= study.user_attrs.get("max_failures", study.user_attrs["trials"]):
        if studies.is_seed_trial(trial):
            keep = {k: trial.user_attrs[k] for k in ("parent", "seed_index", "preset") if k in trial.user_attrs}
            parent = next((t for t in study.get_trials(deepcopy=False) if t.number == int(keep["parent"])), None)
            if parent is None:  # cannot happen for a stored study; a seed of nothing is not enqueued
                logger.warning("study %s: extra seed %d has no parent trial %s; not replaced", study.study_name, trial.number, keep["parent"])
                return
            study.enqueue_trial(dict(parent.params), user_attrs=keep)
        elif (preset := trial.user_attrs.get("preset")) and studies.named_retry_due(study.get_trials(deepcopy=False), preset):
            study.enqueue_trial({}, user_attrs={"preset": preset})  # once more: a reference point is not dropped for one failure
        else:
            study.enqueue_trial({})
    else:
        logger.warning("study %s: %d failed trials, no more replacement tickets", study.study_name, failed)


def _run_trial(attrs: dict[str, Any], variant: Variant, report: Callable[[int, float], bool], preset: str | None) -> dict[str, Any]:
    from unipetl.evaluators.trial import TrialConfig, run_trial

    cfg = TrialConfig.for_trial(attrs, variant)
    record = run_trial(cfg, report=report)
    if preset and record.get("preset") is None:
        record["preset"] = preset
    return record


def run_worker(storage_url: str, study_name: str, *, heartbeat_interval: int = 10, grace_period: int | None = None,
               runner: Runner | None = None, on_trial: Callable[[optuna.Study, TrialState | None], None] | None = None,
               poll_seconds: float = POLL_SECONDS, max_trials: int | None = None) -> int:
    """Run tickets until the study holds its budget of COMPLETE + PRUNED trials; returns trials run.

    `max_trials`: claim at most this many tickets, then return (a partial run that `unipetl
    resume` continues; the backends split `RunOptions.max_trials` between their workers).

    With no ticket left but trials still RUNNING elsewhere, the worker waits: if one of those
    workers died, its trial turns stale and comes back as a WAITING retry that this worker runs."""
    runner = runner or resolve_runner(os.environ.get(RUNNER_ENV))
    study = studies.load(storage_url, study_name, heartbeat_interval=heartbeat_interval, grace_period=grace_period)
    _retry_locked(lambda: studies.note_heartbeat(study, heartbeat_interval), "note heartbeat")  # others wait 3 of this worker's beats
    ran = 0
    while max_trials is None or ran < max_trials:
        with studies.driver_lock(study), warnings.catch_warnings():  # a reaped trial's retry fills its gap, not a driver's top-up too
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            _retry_locked(lambda: optuna.storages.fail_stale_trials(study), "fail stale trials")
        c = _retry_locked(lambda: studies.state_counts(study), "count trials")
        if c["COMPLETE"] + c["PRUNED"] >= _retry_locked(lambda: studies.target(study), "read target"):
            break
        trial = claim(study)
        if trial is None:
            if c["RUNNING"] == 0 and c["WAITING"] == 0:
                break  # tickets exhausted by failures: `unipetl resume` tops up
            time.sleep(poll_seconds)
            continue
        state = run_one(study, trial, runner=runner)
        ran += 1
        if on_trial:
            on_trial(study, state)
    return ran


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m unipetl.search.worker", description="one unipetl worker process")
    p.add_argument("--storage", default=os.environ.get("UNIPETL_STORAGE"), help="storage URL (default: $UNIPETL_STORAGE, which keeps passwords out of `ps`)")
    p.add_argument("--study", required=True)
    p.add_argument("--heartbeat-interval", type=int, default=10)
    p.add_argument("--grace-period", type=int, default=None)
    p.add_argument("--max-trials", type=int, default=None, help="claim at most this many tickets, then exit (default: until the budget)")
    p.add_argument("--runner", default=None, help=f"evaluator as package.module:function (default: ${RUNNER_ENV}, else run_trial)")
    args = p.parse_args(argv)
    if not args.storage:
        p.error("give --storage URL or set UNIPETL_STORAGE")
    logging.basicConfig(level=os.environ.get("UNIPETL_LOG", "WARNING"), format="%(levelname)s %(name)s[%(process)d]: %(message)s")
    from unipetl.search.cli import quiet_third_party

    quiet_third_party(os.environ.get("UNIPETL_LOG", "WARNING").upper() in ("INFO", "DEBUG"))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        run_worker(args.storage, args.study, heartbeat_interval=args.heartbeat_interval, grace_period=args.grace_period,
                   runner=resolve_runner(args.runner), max_trials=args.max_trials)
    except KeyboardInterrupt:
        return 130
    except UnipetlError as err:
        print(f"unipetl worker: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
