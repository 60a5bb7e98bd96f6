"""Search backends: what runs a study's tickets (local processes, Ray tasks, Ray Tune), behind one protocol.

A backend is anything with a `name`, a `seed_phase` flag and `run(storage_url, study_name,
options) -> bool`. `run` trains the study's open tickets until COMPLETE + PRUNED reaches the
study's target (`unipetl.search.study.target`) and returns whether it did. Every backend keeps
the same contract, checked by one suite (tests/test_backend_contract.py) that each passes:

- **Exact trial budget.** Tickets are the only trials: a backend claims WAITING trials (or, for
  Tune, mirrors finished Tune trials into them) and never adds a trial of its own, so the study
  ends with exactly `trials` COMPLETE + PRUNED design trials (plus the extra seeds, for a backend
  with a seed phase).
- **Record before state.** A trial's user attr `record` is written before the trial is told
  COMPLETE / PRUNED / FAIL: a COMPLETE trial has a record with status "ok" and a finite metric,
  a FAIL trial one with status "failed".
- **Failure replacement.** A failed trial gets a fresh ticket, up to the study's `max_failures`;
  past that the run ends without reaching the budget and returns False.
- **Resume.** A run stopped part-way (`RunOptions.max_trials`, Ctrl-C, a killed process) is
  continued by `run_study` (what `unipetl search` and `unipetl resume` call) to exactly the budget,
  and no ticket is trained twice.

`seed_phase`: whether the extra seeds of the frontier points and named methods (`--seeds K`) are
run after the design trials. Ray Tune has none (its trials come from OptunaSearch, not from the
study's seed tickets), so `unipetl search --backend tune` refuses `--seeds` > 1.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from unipetl.spaces.registry import Registry

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class RunOptions:
    """What one run of a backend may use; each backend reads the fields that apply to it."""

    workers: int = 1  # worker processes / Ray tasks (Tune: concurrency follows the per-trial resources)
    address: str | None = None  # Ray: None / "local" starts Ray here; "auto" / host:port joins a cluster
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    heartbeat_interval: int = 10
    grace_period: int | None = None
    max_trials: int | None = None  # start at most this many trials in this run, then return (a partial run; resume continues)
    verbose: bool = False
    progress: Callable[[], None] | None = None  # called now and then while trials run (the progress bar)

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"`workers` should be a positive integer, got {self.workers}.")
        if self.max_trials is not None and self.max_trials < 0:
            raise ValueError(f"`max_trials` should be >= 0 or None, got {self.max_trials}.")

    def share(self, i: int) -> int | None:
        """Worker i's part of `max_trials` (the parts add up to it); None: no limit."""
        if self.max_trials is None:
            return None
        return self.max_trials // self.workers + (1 if i < self.max_trials % self.workers else 0)


class Backend(Protocol):
    name: str
    seed_phase: bool

    def run(self, storage_url: str, study_name: str, options: RunOptions) -> bool:
        """Run the study's open tickets until COMPLETE + PRUNED reaches its target; True when it did."""
        ...


def _reached(storage_url: str, study_name: str) -> bool:
    from unipetl.search import study as studies

    study = studies.load(storage_url, study_name)
    return studies.finished(study) >= studies.target(study)


class LocalProcesses:
    """`workers` worker processes on this machine (`python -m unipetl.search.worker`); one worker
    runs in this process (no start-up cost, and the progress bar updates after every trial)."""

    name = "local"
    seed_phase = True

    def run(self, storage_url: str, study_name: str, options: RunOptions) -> bool:
        from unipetl.search.worker import run_worker

        if options.workers == 1:
            run_worker(storage_url, study_name, heartbeat_interval=options.heartbeat_interval, grace_period=options.grace_period,
                       max_trials=options.max_trials, on_trial=lambda _s, _state: options.progress() if options.progress else None)
        else:
            self._processes(storage_url, study_name, options)
        return _reached(storage_url, study_name)

    @staticmethod
    def _processes(storage_url: str, study_name: str, options: RunOptions) -> None:
        # the storage URL travels in the environment, not on the command line, so a password in it
        # never shows in `ps` output
        env = dict(os.environ, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 2) // options.workers)), UNIPETL_STORAGE=storage_url)
        if options.verbose:
            env["UNIPETL_LOG"] = "INFO"
        cmd = [sys.executable, "-m", "unipetl.search.worker", "--study", study_name, "--heartbeat-interval", str(options.heartbeat_interval)]
        if options.grace_period:
            cmd += ["--grace-period", str(options.grace_period)]
        cmds = [cmd + ([] if options.share(i) is None else ["--max-trials", str(options.share(i))]) for i in range(options.workers)]
        procs = [subprocess.Popen(c, env=env) for c in cmds]
        try:
            while any(p.poll() is None for p in procs):
                if options.progress:
                    options.progress()
                time.sleep(0.5)
        except KeyboardInterrupt:
            for p in procs:  # the workers got the terminal's SIGINT too; make sure, then wait for their clean exit
                if p.poll() is None:
                    p.send_signal(signal.SIGINT)
            for p in procs:
                p.wait(timeout=60)
            raise


class RayTasks:
    """`workers` Ray tasks, each the same worker loop, placed by Ray with per-trial resources."""

    name = "ray"
    seed_phase = True

    def run(self, storage_url: str, study_name: str, options: RunOptions) -> bool:
        from unipetl.search.ray_backend import run_ray_workers

        run_ray_workers(storage_url, study_name, workers=options.workers, address=options.address, gpus_per_trial=options.gpus_per_trial,
                        cpus_per_trial=options.cpus_per_trial, heartbeat_interval=options.heartbeat_interval, grace_period=options.grace_period,
                        max_trials=[options.share(i) for i in range(options.workers)])
        return _reached(storage_url, study_name)


@dataclass
class RayTune:
    """Ray Tune rounds (OptunaSearch + ASHA) mirrored into the study's tickets; no seed phase.

    `scheduler`, `stop` and `seed` go to `run_tune` (tests and experiments; None: the defaults)."""

    scheduler: Any = None
    stop: Any = None
    seed: int | None = None
    name = "tune"
    seed_phase = False

    def run(self, storage_url: str, study_name: str, options: RunOptions) -> bool:
        from unipetl.search.tune_backend import run_tune

        return run_tune(storage_url, study_name, address=options.address, cpus_per_trial=options.cpus_per_trial, gpus_per_trial=options.gpus_per_trial,
                        scheduler=self.scheduler, stop=self.stop, verbose=1 if options.progress else 0, seed=self.seed, max_trials=options.max_trials)


BACKENDS: Registry[Callable[[], Backend]] = Registry("backend")
BACKENDS.register("local", LocalProcesses)
BACKENDS.register("ray", RayTasks)
BACKENDS.register("tune", RayTune)


def get(name: str) -> Backend:
    """A backend by registry name ("local", "ray", "tune"); unknown names get a suggestion."""
    return BACKENDS.get(name)()


def for_study(study_backend: str | None, address: str | None) -> Backend:
    """The backend that continues a study: Tune for a study made with `--backend tune` (its tickets
    are filled by mirroring), else Ray tasks when a Ray address is given, else local processes."""
    if study_backend == "tune":
        return get("tune")
    return get("ray" if address else "local")


def run_study(backend: Backend, storage_url: str, study_name: str, options: RunOptions) -> bool:
    """Run a study to its target with `backend`: what `unipetl search` and `unipetl resume` call.

    Trials of dead workers are failed (and re-queued) and missing tickets topped up first; then
    the design trials run; then, for a backend with a seed phase, the extra seeds of the
    frontier points and named methods (ordinary tickets: a stop in either phase is resumed by
    calling this again). Returns True when COMPLETE + PRUNED reached the target."""
    import optuna

    from unipetl.search import study as studies

    study = studies.load(storage_url, study_name, heartbeat_interval=options.heartbeat_interval, grace_period=options.grace_period)
    with studies.driver_lock(study), warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # re-queue what dead workers left RUNNING
        studies.top_up(study)
    started = _started(study)
    done = backend.run(storage_url, study_name, options)
    if not backend.seed_phase:
        return done
    design = studies.state_counts(study, design_only=True)
    if design["COMPLETE"] + design["PRUNED"] < study.user_attrs["trials"]:
        return False
    if studies.enqueue_seed_trials(study) + _open_seed_tickets(study):
        if options.max_trials is not None:  # the limit is for the whole call: what the design phase used is spent
            options = replace(options, max_trials=max(0, options.max_trials - (_started(study) - started)))
        done = backend.run(storage_url, study_name, options)
    return done and studies.finished(study) >= studies.target(study)


def _started(study: Any) -> int:
    """Trials that left the WAITING state (claimed by a worker or mirrored from Tune)."""
    from optuna.trial import TrialState

    return sum(1 for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING)


def _open_seed_tickets(study: Any) -> int:
    from optuna.trial import TrialState

    from unipetl.search.study import is_seed_trial

    return sum(1 for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING)) if is_seed_trial(t))
