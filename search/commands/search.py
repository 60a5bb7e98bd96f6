"""`unipetl search`: create (or continue) a study and run its trials with local or Ray workers."""

from __future__ import annotations

import argparse
import logging
import os
import subprocess  # noqa: F401 - tests patch `search.subprocess.Popen` (the module the local backend starts workers with)
import sys
import time
from typing import TYPE_CHECKING, Any

from unipetl.reports.load import mask_url
from unipetl.search.commands.run import add_setting_arguments, settings_from_args
from unipetl.spaces.registry import UnipetlError

if TYPE_CHECKING:
    from unipetl.search.backends import RunOptions

logger = logging.getLogger(__name__)

NAME = "search"
HELP = "search the design space under a parameter budget (an Optuna study; resumable)"
EPILOG = """examples:
  unipetl search --task sst2 --model minilm --budget 0.5% --trials 12 --data-dir ../shared/data
  unipetl search --study-file studies/sst2-minilm.yaml --data-dir ../shared/data --mode frontier --workers 2
  unipetl search --task mnli --model roberta-base --budget 0.5% --trials 64 \\
      --storage postgresql+psycopg2://user@db/unipetl --study mnli-05 --ray-address auto --gpus-per-trial 1
  unipetl search --task sst2 --model minilm --budget 0.5% --trials 12 --data-dir ../shared/data --backend tune --cpus-per-trial 1
With --backend tune, Ray Tune runs --trials samples (OptunaSearch over the same space, ASHA on the evaluations);
concurrency follows --cpus-per-trial / --gpus-per-trial (--workers is not used); `unipetl resume` restores it.
Tune runs no extra seeds: one seed unless --seeds is given, and --seeds > 1 is refused.
budgets: 0.5% | 0.005 (a fraction) | 50000 (paper parameters). Storage defaults to sqlite:///runs/unipetl.db.
Studies in studies/{task}-{model}.yaml supply defaults (training caps) when task and model match."""

def add_worker_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("workers")
    g.add_argument("--workers", type=int, default=1, help="worker processes (or Ray tasks) on the study (default 1)")
    g.add_argument("--ray-address", default=None, help="run workers as Ray tasks: 'local' starts Ray here, 'auto' / host:port joins a cluster")
    g.add_argument("--ray", dest="ray_address", action="store_const", const="local", help="same as --ray-address local")
    g.add_argument("--gpus-per-trial", type=float, default=0.0, help="GPUs each Ray worker task (or Tune trial) holds")
    g.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs each Ray worker task (or Tune trial) holds (default 1)")
    g.add_argument("--heartbeat-interval", type=int, default=10, help="seconds between worker heartbeats")
    g.add_argument("--grace-period", type=int, default=None, help="seconds without heartbeat before a trial is failed and re-queued (default 3 × interval)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--study-file", help="YAML study file (studies/*.yaml); flags override its values")
    p.add_argument("--task", help="task name (sst2, mnli, xsum, wmt16-en-ro, …) or a task file")
    p.add_argument("--model", help="model name (minilm, roberta-base, tiny-bert, …) or a local directory")
    p.add_argument("--budget", help="paper-parameter budget: 0.5%%, 0.005 or 50000 (default 0.5%%)")
    p.add_argument("--mode", choices=["budget", "frontier"], help="budget: best metric at <= budget (pruned); frontier: metric vs parameters")
    p.add_argument("--trials", type=int, help="trial budget: COMPLETE + PRUNED trials the study ends with (default 12)")
    p.add_argument("--storage", help="database URL (default sqlite:///runs/unipetl.db)")
    p.add_argument("--study", help="study name (default TASK-MODEL-MODE-BUDGET)")
    p.add_argument("--data-dir", help="directory with the task data (e.g. ../shared/data)")
    p.add_argument("--with-full", action="store_true", default=None, help="also run full fine-tuning once (the 100 %% reference)")
    p.add_argument("--pruner", choices=["median", "hyperband", "none", "mo-asha"],
                   help="budget mode: median (default), hyperband or none; frontier mode: mo-asha (multi-objective successive halving over "
                        "training steps; rungs at --eval-every · η^k) or none (default)")
    p.add_argument("--reduction-factor", type=int, help="mo-asha: keep the top 1/η of each rung (default 3)")
    p.add_argument("--rung-examples", type=int, help="mo-asha: dev examples a rung's loss is measured on (default 256)")
    p.add_argument("--rung-order", help="mo-asha: the order inside one non-dominated front at a rung: hv (hypervolume contribution), eps-net "
                                        "(from the lowest loss, then farthest first) or crowding (NSGA-II crowding distance); default hv")
    p.add_argument("--objectives", help="frontier mode: what the front trades, the metric then costs among params, latency, latency_batch, "
                                        "step_time, memory (default metric,params; e.g. accuracy,params,latency)")
    p.add_argument("--sampler", choices=["tpe", "random"], help="sampler (default tpe)")
    p.add_argument("--seeds", type=int, help="seeds per frontier point and named method (default 3; 1 = none extra): the extra "
                                              "seeds are ordinary, resumable trials of the study, linked to their parent trial")
    p.add_argument("--backend", choices=["optuna", "tune"], default="optuna",
                   help="optuna: workers claim the study's tickets (default); tune: Ray Tune with OptunaSearch + ASHA, "
                        "results mirrored into the study (only finished trials COMPLETE)")
    p.add_argument("--tune-dir", default=None, help="Tune run directory with --backend tune (default: tune/<file name>/STUDY next to the SQLite file, symlinks resolved; "
                        "else runs/tune/<digest of the database URL>/STUDY)")
    add_setting_arguments(p.add_argument_group("training settings (TrialConfig fields; override the study file's train: keys)"))
    add_worker_arguments(p)


def build_spec(args: argparse.Namespace) -> Any:
    from unipetl.search.study import StudySpec, bundled_study_file, load_study_file

    data: dict[str, Any] = load_study_file(args.study_file) if args.study_file else {}
    seeds_given = args.seeds is not None or "seeds" in data  # by a flag or the user's own study file
    task, model = args.task or data.get("task"), args.model or data.get("model")
    if not task or not model:
        raise UnipetlError("give --task and --model (or a --study-file that names them).")
    if not args.study_file and (bundled := bundled_study_file(task, model)):
        data = load_study_file(bundled)  # its training caps are the defaults of this task / model pair
    data.update(task=task, model=model)
    for key in ("budget", "mode", "trials", "storage", "study", "data_dir", "with_full", "pruner", "sampler", "seeds", "objectives", "reduction_factor", "rung_examples", "rung_order"):
        if getattr(args, key, None) is not None:
            data[key] = getattr(args, key)
    if getattr(args, "backend", None) == "tune" and not seeds_given:
        data["seeds"] = 1  # Tune runs no seed phase (unipetl.search.backends); an explicit --seeds > 1 is refused
    train = dict(data.get("train") or {})
    train.update(settings_from_args(args))
    data["train"] = train
    if data.get("data_dir"):
        data["data_dir"] = os.path.abspath(str(data["data_dir"]))
    return StudySpec(**data, seeds_asked=seeds_given)


def check_workers(args: argparse.Namespace) -> None:
    if args.workers < 1:
        raise UnipetlError(f"`workers` should be a positive integer, got {args.workers}.")
    if getattr(args, "cpus_per_trial", 1.0) <= 0 or getattr(args, "gpus_per_trial", 0.0) < 0:
        raise UnipetlError(f"`cpus-per-trial` must be > 0 and `gpus-per-trial` >= 0, got {args.cpus_per_trial} and {args.gpus_per_trial}.")
    if args.heartbeat_interval < 1:
        raise UnipetlError(f"`heartbeat-interval` should be a positive integer, got {args.heartbeat_interval}.")


def run_options(args: argparse.Namespace, progress: Any = None) -> RunOptions:
    """The backend options of `unipetl search` / `unipetl resume` flags."""
    from unipetl.search.backends import RunOptions

    return RunOptions(workers=args.workers, address=args.ray_address, cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
                      heartbeat_interval=args.heartbeat_interval, grace_period=args.grace_period, verbose=bool(getattr(args, "verbose", False)),
                      progress=progress)


def drive(storage_url: str, study_name: str, args: argparse.Namespace) -> int:
    """Run the study to its target with its backend (`unipetl.search.backends.run_study`: the design
    trials, then the extra seeds where the backend has a seed phase) and print the summary;
    Ctrl-C leaves the study resumable."""
    from unipetl.search import backends
    from unipetl.search import study as studies

    study = studies.load(storage_url, study_name, heartbeat_interval=args.heartbeat_interval, grace_period=args.grace_period)
    backend = backends.for_study(study.user_attrs.get("backend"), args.ray_address)
    tune = backend.name == "tune"
    bar = _Progress(study, disable=args.no_progress or tune)  # Tune prints its own progress table
    t0 = time.time()
    try:
        done = backends.run_study(backend, storage_url, study_name, run_options(args, progress=None if args.no_progress else bar.update))
    except KeyboardInterrupt:
        bar.close()
        print(f"interrupted: study {study_name!r} is resumable with `unipetl resume --storage {mask_url(storage_url)} --study {study_name}`", file=sys.stderr)
        return 130
    bar.update()
    bar.close()
    c = studies.state_counts(study)
    where = f"; Tune runs in {study.user_attrs.get('tune_dir')}" if tune else ""
    print(f"study {study_name}{' (tune)' if tune else ''}: {c['COMPLETE']} complete, {c['PRUNED']} pruned, {c['FAIL']} failed in {time.time() - t0:.0f} s; "
          f"storage {mask_url(storage_url)}{where}")
    if best := _best_line(study):
        print(best)
    if not done:
        print(f"incomplete: continue with `unipetl resume --storage {mask_url(storage_url)} --study {study_name}`", file=sys.stderr)
        return 1
    print(f"next: unipetl report --storage {mask_url(storage_url)} --study {study_name} --out runs/report   "
          "(frontier with seed intervals, lesson verdicts, report.html)")
    return 0


def _local_processes(storage_url: str, study_name: str, args: argparse.Namespace, bar: _Progress) -> None:
    """Local worker processes on the study (`backends.LocalProcesses`), for callers of the old driver API."""
    from unipetl.search.backends import LocalProcesses, RunOptions

    LocalProcesses._processes(storage_url, study_name, RunOptions(workers=args.workers, heartbeat_interval=args.heartbeat_interval,
                                                                   grace_period=args.grace_period, progress=bar.update))


class _Progress:
    """tqdm bar of finished trials with running count and best value (quiet when not a TTY)."""

    def __init__(self, study: Any, *, disable: bool) -> None:
        from tqdm import tqdm

        from unipetl.search.study import target

        self.study = study
        self.shown: set[int] = set()
        self.initial = True
        self.bar = tqdm(total=target(study), desc=study.study_name, unit="trial", disable=disable or not sys.stderr.isatty())
        self.update()

    def update(self) -> None:
        from unipetl.search.study import state_counts, target

        self.bar.total = target(self.study)  # grows by the extra-seed tickets
        self.print_finished()
        c = state_counts(self.study)
        self.bar.n = c["COMPLETE"] + c["PRUNED"]
        best = _best_value(self.study)
        self.bar.set_postfix(running=c["RUNNING"], failed=c["FAIL"], best="-" if best is None else f"{best:.4g}")

    def print_finished(self) -> None:
        """One line per newly finished trial: number, variant in unified-view words, paper %,
        metric, learning-rate multiplier, seed (and the trial it repeats), seconds."""
        from optuna.trial import TrialState

        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)):
            if t.number in self.shown:
                continue
            self.shown.add(t.number)
            if self.initial:
                continue  # finished before this driver started: not news
            rec = t.user_attrs.get("record") or {}
            metric = rec.get("metric")
            lr = rec.get("lr") or {}
            seed = f"seed {rec.get('seed', t.user_attrs.get('seed', 0))}" + (f" of #{t.user_attrs['parent']}" if t.user_attrs.get("parent") is not None else "")
            line = (f"#{t.number:<3} {t.state.name.lower():<8} {100 * (t.user_attrs.get('paper_fraction') or 0):.3f} %  "
                    f"{self.study.user_attrs.get('main_metric', 'metric')} {'-' if metric is None else f'{metric:.4f}'}  "
                    f"lr×{lr.get('scale', 1.0):.2g}  {seed}  {rec.get('wall_seconds') or 0:.0f} s  {t.user_attrs.get('variant_description', '')}")
            self.bar.write(line) if not self.bar.disable else print(line, flush=True)
        self.initial = False

    def close(self) -> None:
        self.bar.close()


def _best_value(study: Any) -> float | None:
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.values]
    if not done:
        return None
    pick = max if study.user_attrs.get("higher_is_better", True) else min
    return pick(t.values[0] for t in done)


def _best_line(study: Any) -> str | None:
    """The best *design point* (a trial and its extra seeds, by their mean, with the interval;
    never the luckiest single seed), as `unipetl status` and the report compute it."""
    from unipetl.reports.summary import interval
    from unipetl.search.commands.status import summary

    s = summary(study)
    b = s["best"]
    if b is None:
        return None
    return (f"best: {s['main_metric']} {interval(b)} — {b['variant']} "
            f"({100 * (b['paper_fraction'] or 0):.3f} % paper params; trial #{b['number']} and its extra seeds)")


def run(args: argparse.Namespace) -> int:
    import optuna

    from unipetl.search import study as studies

    if not getattr(args, "verbose", False):
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    check_workers(args)
    spec = build_spec(args)
    check_backend(spec, args.backend)
    study = studies.create_or_check(spec, heartbeat_interval=args.heartbeat_interval, grace_period=args.grace_period)
    if args.backend == "tune":
        from unipetl.search.tune_backend import prepare_study

        prepare_study(study, spec.storage, args.tune_dir)
    return drive(spec.storage, study.study_name, args)


def check_backend(spec: Any, backend: str) -> None:
    """A study stays with the backend that created it (its tickets are filled differently), and a
    backend without a seed phase (Tune) takes no extra seeds; checked before anything is written."""
    import optuna

    from unipetl.reports.objectives import DEFAULT as DEFAULT_OBJECTIVES
    from unipetl.reports.objectives import parse_objectives
    from unipetl.search import backends
    from unipetl.search import study as studies

    if backend == "tune" and not backends.get("tune").seed_phase and spec.seeds > 1:
        raise UnipetlError(f"`seeds` {spec.seeds} needs a seed phase, which --backend tune does not run; "
                           "give --seeds 1, or use the optuna backend (local or Ray workers) for extra seeds.")
    if backend == "tune" and spec.mode == "frontier" and spec.objectives is not None and parse_objectives(spec.objectives) != DEFAULT_OBJECTIVES:
        raise UnipetlError(f"`objectives` {spec.objectives!r}: --backend tune's searcher trades the metric and paper params only; "
                           "use the optuna backend (local or Ray workers) for other costs.")
    if backend == "tune" and spec.pruner == "mo-asha":
        raise UnipetlError("`pruner` mo-asha runs in the optuna backend's workers (local or Ray); Ray Tune's schedulers do not "
                           "prune multi-objective studies: use --backend optuna, or --pruner none with --backend tune.")
    name = spec.study or studies.default_study_name(spec)
    storage = studies.make_storage(spec.storage)
    if name not in studies.study_names(storage):
        return
    existing = optuna.load_study(study_name=name, storage=storage).user_attrs.get("backend", "optuna")
    if existing != backend:
        raise UnipetlError(f"study {name!r} exists with backend={existing!r}, not {backend!r}; "
                           "continue it with `unipetl resume` or choose another --study name (the existing study was not changed).")
