"""Workers as Ray tasks: the same stateless worker loop, placed by Ray with per-trial resources.

Each Ray task runs `unipetl.search.worker.run_worker` against the study's storage URL, so the storage
must be reachable from every node (PostgreSQL on a cluster; SQLite works only when all tasks
share one machine / filesystem). One task holds `gpus_per_trial` GPUs and `cpus_per_trial`
CPUs for its whole life and runs trials one after the other; Ray retries a task whose node
died (`max_retries`), and the heartbeat re-queues the trial it was running.
"""

from __future__ import annotations

import logging
import os
from typing import Any

logger = logging.getLogger(__name__)


def _worker_task(storage_url: str, study_name: str, heartbeat_interval: int, grace_period: int | None, max_trials: int | None = None) -> int:
    import optuna

    from unipetl.search.worker import run_worker

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return run_worker(storage_url, study_name, heartbeat_interval=heartbeat_interval, grace_period=grace_period, max_trials=max_trials)


def run_ray_workers(storage_url: str, study_name: str, *, workers: int, address: str | None = None, gpus_per_trial: float = 0.0,
                    cpus_per_trial: float = 1.0, heartbeat_interval: int = 10, grace_period: int | None = None,
                    init_kwargs: dict[str, Any] | None = None, max_trials: list[int | None] | None = None) -> list[int]:
    """Start `workers` Ray tasks on the study and wait for them; returns trials run per task.

    `max_trials[i]`: task i claims at most that many tickets (None: until the budget).
    `address`: None or "local" starts a local Ray instance (2 CPUs on these machines), any other
    value (`auto`, `ray://host:10001`, `host:6379`) joins that cluster."""
    import ray

    started = False
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True, **(init_kwargs or {})}
        if address and address != "local":
            kwargs["address"] = address
        else:
            kwargs.setdefault("num_cpus", max(2, int(workers * cpus_per_trial)))
        # workers import the installed `unipetl` package (every node needs it installed)
        kwargs.setdefault("runtime_env", {"env_vars": {"HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
                                                       "OMP_NUM_THREADS": str(max(1, int(cpus_per_trial)))}})
        ray.init(**kwargs)
        started = True
    try:
        remote = ray.remote(num_cpus=cpus_per_trial, num_gpus=gpus_per_trial, max_retries=3)(_worker_task)
        limits = max_trials or [None] * workers
        refs = [remote.remote(storage_url, study_name, heartbeat_interval, grace_period, limits[i]) for i in range(workers)]
        return list(ray.get(refs))
    finally:
        if started:
            ray.shutdown()
