"""Everything unipetl needs beyond Optuna's public API, in one module.

unipetl's workers run tickets (WAITING trials) that `unipetl search` / `resume` enqueue, from
several processes or machines at once, and store what a trial did while it runs (heartbeat,
parameters replayed from Ray Tune, records). Optuna's public `Study` API covers one process
asking and telling; the rest goes through the study's storage, addressed by the storage's own
trial ids — names Optuna keeps private (`Study._storage`, `Study._study_id`, `Trial._trial_id`,
`FrozenTrial._trial_id`). They are read here and nowhere else, and tests/test_optuna_ext.py pins
the behaviour unipetl relies on, so an Optuna release that changes it fails loudly.

Optuna's TPE cannot sample for a multi-objective study that holds PRUNED trials (it scores them
through `study.direction`, which raises for several objectives), and MO-ASHA prunes. TPE reads a
study's trials through the private `Study._get_trials`; `CompleteOnlyTPE` hands it a view of the
study in which PRUNED trials show as RUNNING (constant liar then counts them among the worse
trials), so MO-ASHA keeps the search's sampler. Pinned in tests/test_optuna_ext.py: plain TPE
still raises there, TPE still puts RUNNING trials in its worse group, and the view samples.

Claiming a ticket is the one place where Optuna's storage alone is not enough:
`RDBStorage.set_trial_state_values(id, RUNNING)` reads the row (`SELECT … FOR UPDATE`) and then
writes it. PostgreSQL and MySQL lock the row, so a second claimer waits and then sees RUNNING.
SQLite ignores `FOR UPDATE`, and Python's sqlite3 driver runs the SELECT outside a transaction,
so two processes can both read WAITING and both "claim" the same ticket: one ticket trained twice
(seen in CI: 201 evaluations for 200 tickets). On SQLite every claim therefore runs under an
exclusive file lock beside the database file (SQLite databases live on one machine's disk; the
lock covers every process that can open the file).
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

_MEMORY_LOCK = threading.Lock()  # in-memory SQLite: one process, threads only


def storage_of(study: optuna.Study) -> optuna.storages.BaseStorage:
    """The storage behind a study (Optuna's private `Study._storage`; for an RDB storage Optuna
    wraps it in a private caching layer, which this returns: reads and writes go through it)."""
    return study._storage


def database_url(study: optuna.Study) -> str | None:
    """The SQLAlchemy URL of an RDB-backed study; None for other storages (journal, in-memory).

    Optuna wraps an `RDBStorage` in its private `_CachedStorage` (attribute `_backend`)."""
    storage = storage_of(study)
    backend = getattr(storage, "_backend", storage)
    return backend.url if isinstance(backend, optuna.storages.RDBStorage) else None


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    """The storage's id of a trial (not `trial.number`, which counts within one study)."""
    return trial._trial_id


def frozen(study: optuna.Study, trial: optuna.Trial | FrozenTrial) -> FrozenTrial:
    """The trial as stored now (state, attributes), read fresh from the storage."""
    return storage_of(study).get_trial(trial_id(trial))


def live(study: optuna.Study, tid: int) -> optuna.Trial:
    """The `optuna.Trial` handle a worker reports and tells through, for a claimed trial id."""
    return optuna.Trial(study, tid)


def set_user_attr(study: optuna.Study, tid: int, key: str, value: Any) -> None:
    """Store a user attribute on any unfinished trial of the study by id."""
    storage_of(study).set_trial_user_attr(tid, key, value)


def set_param(study: optuna.Study, tid: int, name: str, value: Any, distribution: BaseDistribution) -> None:
    """Store a parameter (external value) on a trial by id, with its distribution."""
    storage_of(study).set_trial_param(tid, name, distribution.to_internal_repr(value), distribution)


def set_intermediate(study: optuna.Study, tid: int, step: int, value: float) -> None:
    """Store an intermediate value (what `Trial.report` writes) on a trial by id."""
    storage_of(study).set_trial_intermediate_value(tid, int(step), float(value))


def heartbeat(study: optuna.Study) -> tuple[int, Callable[[int], None]]:
    """(interval in seconds, a function recording one beat for a trial id)."""
    storage = storage_of(study)
    return int(storage.get_heartbeat_interval() or 10), storage.record_heartbeat


def _lock_path(study: optuna.Study) -> Path | None:
    """The claim lock file of a file-backed SQLite storage (beside the database file's real path,
    so every spelling of one file shares it); Path() for in-memory SQLite (the process lock);
    None for other storages."""
    from .locks import sqlite_place

    url = database_url(study)
    place = sqlite_place(url) if url else None
    if place is None:
        return None
    kind, where = place
    return Path() if kind == "memory" else Path(where + ".claim.lock")


def claim_waiting(study: optuna.Study, order: Callable[[list[FrozenTrial]], Iterable[FrozenTrial]] = list,
                  before: Callable[[int], None] | None = None,
                  retry: Callable[[Callable[[], Any], str], Any] = lambda fn, _what: fn()) -> int | None:
    """Move one WAITING trial to RUNNING so that no other process can also claim it.

    `order` ranks the waiting trials (first claimable wins); `before(trial_id)` runs just before
    the state change (the worker writes its first heartbeat there, so a RUNNING trial always has
    one); `retry(fn, what)` wraps each storage call (the worker retries "database is locked").
    Returns the claimed trial's storage id, or None when no ticket is left."""
    lock = _lock_path(study)
    if lock is None:
        return _claim(study, order, before, retry)
    if lock == Path():
        with _MEMORY_LOCK:
            return _claim(study, order, before, retry)
    from filelock import FileLock

    with FileLock(str(lock)):
        return _claim(study, order, before, retry)


def _claim(study: optuna.Study, order: Callable[[list[FrozenTrial]], Iterable[FrozenTrial]], before: Callable[[int], None] | None,
           retry: Callable[[Callable[[], Any], str], Any]) -> int | None:
    storage = storage_of(study)
    waiting = retry(lambda: study.get_trials(deepcopy=False, states=(TrialState.WAITING,)), "list tickets")
    for t in order(waiting):
        tid = trial_id(t)
        try:
            if before is not None:
                retry(lambda tid=tid: before(tid), "heartbeat")
            if retry(lambda tid=tid: storage.set_trial_state_values(tid, state=TrialState.RUNNING), "claim"):
                return tid
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    return None


__all__ = ["claim_waiting", "database_url", "frozen", "heartbeat", "live", "set_intermediate", "set_param", "set_user_attr", "storage_of", "trial_id"]


class _PrunedAsRunning:
    """A read-only view of a study in which every PRUNED trial shows as RUNNING (a copy; the
    study is untouched); everything else is the study's own (attribute access falls through).
    TPE with constant liar puts RUNNING trials in its "above" (worse) group — so a pruned design
    counts as evidence against its region, where TPE itself would have raised — and its startup
    phase, which counts COMPLETE and PRUNED trials, counts the COMPLETE ones only."""

    def __init__(self, study: optuna.Study) -> None:
        self._viewed = study

    def __getattr__(self, name: str) -> Any:
        return getattr(self._viewed, name)

    def _get_trials(self, deepcopy: bool = True, states: Any = None, use_cache: bool = False) -> list[FrozenTrial]:
        wanted = tuple(states) if states is not None else tuple(TrialState)
        fetch = tuple({*wanted, TrialState.PRUNED}) if TrialState.RUNNING in wanted else tuple(s for s in wanted if s != TrialState.PRUNED)
        out = []
        for t in self._viewed._get_trials(deepcopy=deepcopy, states=fetch, use_cache=use_cache):
            if t.state == TrialState.PRUNED:
                t = copy.copy(t)
                t.state = TrialState.RUNNING
            out.append(t)
        return out

    def get_trials(self, deepcopy: bool = True, states: Any = None) -> list[FrozenTrial]:
        return self._get_trials(deepcopy=deepcopy, states=states, use_cache=False)

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()


class CompleteOnlyTPE(optuna.samplers.BaseSampler):
    """TPE (`optuna.samplers.TPESampler(constant_liar=True, **kwargs)`) for a multi-objective
    study under MO-ASHA: it models the COMPLETE trials, and sees each PRUNED trial as a RUNNING
    one (`_PrunedAsRunning`: in the worse group, as constant liar places running trials), so it
    neither raises nor proposes a pruned design again as if nothing were known of it. Its startup
    phase counts COMPLETE trials."""

    def __init__(self, **kwargs: Any) -> None:
        self.tpe = optuna.samplers.TPESampler(**{**kwargs, "constant_liar": True})

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self.tpe.infer_relative_search_space(_PrunedAsRunning(study), trial)  # type: ignore[arg-type]

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self.tpe.sample_relative(_PrunedAsRunning(study), trial, search_space)  # type: ignore[arg-type]

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution) -> Any:
        return self.tpe.sample_independent(_PrunedAsRunning(study), trial, param_name, param_distribution)  # type: ignore[arg-type]

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.tpe.before_trial(study, trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Any) -> None:
        self.tpe.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.tpe.reseed_rng()
