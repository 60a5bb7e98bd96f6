"""Studies: the study spec (study file + flags), Optuna storage, creation checks, trial tickets.

One Optuna study in an RDB storage is the single source of truth (SQLite under `runs/` by
default, PostgreSQL on a cluster). Everything a worker needs to run a trial lives in the study's
user attrs (task, model, budget, space, training settings), so workers are stateless and a
study can be resumed from its storage URL and name alone.

The trial budget is exact because it is held as *tickets*: `--trials N` puts N WAITING trials
into the study (the named methods first, then empty ones that the sampler fills in when a worker
claims them). Claiming a WAITING trial is an atomic state change in the storage, so two workers
never run the same ticket and no worker ever creates a trial of its own. A ticket ends as
COMPLETE / PRUNED (it counts) or FAIL; a failed ticket is replaced (a dead worker's trial by the
heartbeat's `RetryFailedTrialCallback` with the same parameters, an evaluator failure by a fresh
ticket), so COMPLETE + PRUNED reaches N exactly and never passes it. Every step that counts the
tickets and then adds some runs under the study's driver lock (`driver_lock`), so drivers started
together on one study, or a driver and a worker replacing a failed trial, never fill one gap twice.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import logging
import math
import os
import time
import warnings
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import optuna
from optuna.trial import TrialState

from unipetl.evaluators.reporting import RUNG_EXAMPLES
from unipetl.evaluators.trial import setting_type
from unipetl.evaluators.trial import settings as trial_settings
from unipetl.reports.load import mask_url
from unipetl.reports.objectives import COSTS, parse_objectives
from unipetl.reports.objectives import DEFAULT as DEFAULT_OBJECTIVES
from unipetl.search import optuna_ext
from unipetl.search.locks import study_lock
from unipetl.search.mo_asha import LEGACY_ORDER, Rungs, check_order, stored_rungs
from unipetl.search.mo_asha import ORDER as RUNG_ORDER
from unipetl.spaces.registry import UnipetlError, did_you_mean
from unipetl.spaces.search_space import SpaceConfig, feasible_methods, parse_budget, size_preset
from unipetl.spaces.shapes import ModelShape, resolve_shape, shape_from_config

logger = logging.getLogger(__name__)

Mode = Literal["budget", "frontier"]
# the repository's studies/ folder, installed as the package `unipetl.studies`
STUDIES_DIR = Path(str(importlib.resources.files("unipetl.studies")))
DEFAULT_STORAGE = "sqlite:///runs/unipetl.db"
# the training settings a study file's `train:` block (and `unipetl search` flags) may set: TrialConfig's
TRAIN_KEYS = tuple(f.name for f in trial_settings())
FILE_KEYS = ("task", "model", "budget", "mode", "trials", "study", "storage", "data_dir", "with_full", "pruner", "sampler", "max_failures", "space", "train", "seeds",
             "objectives", "reduction_factor", "rung_examples", "rung_order")
PRUNERS = ("median", "hyperband", "none", "mo-asha")  # mo-asha: frontier mode (search.mo_asha); the others: budget mode
SCHEMES = ("sqlite", "postgresql", "mysql")
MAX_STUDY_FILE = 1_000_000  # bytes; larger study files are refused before parsing (hostile or wrong file)
STATES = ("COMPLETE", "FAIL", "PRUNED", "RUNNING", "WAITING")
# the attrs that make two studies "the same search": a study name that exists with other values is refused
IDENTITY = ("task", "model", "mode", "budget_fraction", "space", "objectives")
# how a trial is run and judged: a continued study keeps its stored values, so a different value asked
# for is refused rather than silently ignored (older studies lacking a key keep its stored meaning)
SETTINGS = ("train", "pruner", "sampler", "with_full", "reduction_factor", "rung_examples", "rung_order")
# the MO-ASHA settings a StudySpec leaves None when not asked for, each with what its absence from an older study
# means (the worker runs it so), in words: only a value asked for is compared, with the stored or the legacy one
HEARTBEAT_ATTR = "heartbeat_interval"  # study user attr: the longest heartbeat interval (s) of any process that opened the study
LEGACY_SETTINGS = {"rung_order": (LEGACY_ORDER, "created before the order was a setting"),
                   "rung_examples": (None, "its rungs rank the main metric: created before rungs measured the dev loss")}


@dataclass(kw_only=True)
class StudySpec:
    task: str
    model: str
    budget: str = "0.5%"
    mode: Mode = "budget"
    trials: int = 12
    study: str | None = None
    storage: str = DEFAULT_STORAGE
    data_dir: str | None = None
    with_full: bool = False
    pruner: str = "median"  # budget mode: median | hyperband | none; frontier mode: none | mo-asha (median means none there)
    sampler: str = "tpe"  # tpe | random
    max_failures: int | None = None  # replacement tickets for failed trials (default: trials)
    seeds: int = 3  # seeds per frontier point and named method (1 = no re-runs); extra seeds are trials of their own
    # whether the user asked for `seeds` (a flag, their own study file): a continued study keeps its stored seeds unless
    # asked, takes a larger number, and refuses a smaller one (its points already re-run would keep more seeds than the rest)
    seeds_asked: bool = True
    objectives: str | list[str] | None = None  # frontier mode: what the front trades (reports.objectives); None: metric, params
    reduction_factor: int = 3  # mo-asha: keep the top 1/η at each rung
    # mo-asha: a rung ranks the dev loss on this many dev examples (evaluators.reporting) and orders the designs inside
    # one front by rung_order (mo_asha.ORDERS); None: not asked for — a new study gets RUNG_EXAMPLES / mo_asha.ORDER, a
    # continued one keeps what it runs with, and an older study lacking the setting refuses only a value asked for
    rung_examples: int | None = None
    rung_order: str | None = None
    space: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if self.mode not in ("budget", "frontier"):
            raise UnipetlError(f"`mode` must be 'budget' or 'frontier', got {self.mode!r}.{did_you_mean(str(self.mode), ['budget', 'frontier'])}")
        if isinstance(self.trials, bool) or not isinstance(self.trials, int) or self.trials <= 0:
            raise UnipetlError(f"`trials` should be a positive integer, got {self.trials!r}.")
        if isinstance(self.seeds, bool) or not isinstance(self.seeds, int) or not 1 <= self.seeds <= 20:
            raise UnipetlError(f"`seeds` should be an integer in 1..20, got {self.seeds!r}.")
        first = self.train.get("seed", 0) if isinstance(self.train, dict) else 0
        if isinstance(first, int) and not isinstance(first, bool) and first + self.seeds - 1 >= 2**32:  # extra seeds train at seed + i
            raise UnipetlError(f"`train.seed` {first} leaves no room for {self.seeds} seeds (seed + {self.seeds - 1} must stay below 2**32).")
        if self.pruner not in PRUNERS:
            raise UnipetlError(f"`pruner` must be one of {', '.join(PRUNERS)}, got {self.pruner!r}.{did_you_mean(str(self.pruner), PRUNERS)}")
        if self.pruner == "mo-asha":
            if self.mode != "frontier":
                raise UnipetlError("`pruner` mo-asha prunes frontier-mode studies; budget mode uses median or hyperband.")
            if not self.train.get("eval_every"):
                raise UnipetlError("`pruner` mo-asha needs `train.eval_every` (the first rung, in optimizer steps; rungs at eval_every · η^k).")
            Rungs(self.train["eval_every"], self.reduction_factor)
        if self.rung_order is not None:
            check_order(self.rung_order)
        if self.rung_examples is not None and (isinstance(self.rung_examples, bool) or not isinstance(self.rung_examples, int) or self.rung_examples < 1):
            raise UnipetlError(f"`rung_examples` (dev examples a MO-ASHA rung's loss is measured on) should be a positive integer, got {self.rung_examples!r}.")
        if self.objectives is not None:
            if self.mode != "frontier":
                raise UnipetlError(f"`objectives` {self.objectives!r} applies to frontier mode; budget mode maximises the metric under the budget.")
            parse_objectives(self.objectives)
        if self.sampler not in ("tpe", "random"):
            raise UnipetlError(f"`sampler` must be tpe or random, got {self.sampler!r}.")
        if not isinstance(self.train, dict):
            raise UnipetlError(f"`train` must be a mapping, got {type(self.train).__name__}.")
        for key in self.train:
            if key not in TRAIN_KEYS:
                raise UnipetlError(f"Unknown key {key!r} in train.{did_you_mean(str(key), TRAIN_KEYS)}")
        check_storage_url(self.storage)


# study-file keys whose values are names / text: YAML keeps them as written (`study: 2024` → '2024', `task: no` → 'no')
TEXT_KEYS = ("task", "model", "budget", "mode", "study", "storage", "data_dir", "pruner", "sampler", "space.attention_methods", "space.ffn_methods",
             "space.functions", "space.compositions", "space.placements", "space.presets",
             *(f"train.{f.name}" for f in trial_settings() if setting_type(f) is str))


def load_study_file(path: str | Path) -> dict[str, Any]:
    """A YAML study file → a dict of StudySpec fields (safe loader; unknown keys refused).

    Names are read as the text written (see TEXT_KEYS); every bad value is one UnipetlError that
    names the file, the key and the value."""
    from unipetl.evaluators.tasks import load_yaml
    from unipetl.spaces.files import read_text_file

    where = f"study file {str(path)!r}"
    text = read_text_file(path, "study file", limit=MAX_STUDY_FILE)
    data = load_yaml(text, "study file", path, text_keys=TEXT_KEYS) or {}  # safe loader: python tags are refused, never run
    if not isinstance(data, dict):
        raise UnipetlError(f"{where} must hold a mapping, got {type(data).__name__}.")
    for key in data:
        if key not in FILE_KEYS:
            raise UnipetlError(f"Unknown key {key!r} in {where}.{did_you_mean(str(key), FILE_KEYS)}")
    for key in ("task", "model", "budget", "mode", "study", "storage", "data_dir", "pruner", "sampler"):
        if key in data and not (isinstance(data[key], str) and data[key].strip()) and not (data[key] is None and key in ("study", "data_dir")):
            raise UnipetlError(f"{where}: `{key}` must be text, got {data[key]!r}.")
    if "with_full" in data and not isinstance(data["with_full"], bool):
        raise UnipetlError(f"{where}: `with_full` must be true or false, got {data['with_full']!r}.")
    for key in ("trials", "max_failures", "seeds"):
        v = data.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
            raise UnipetlError(f"{where}: `{key}` should be an integer, got {v!r}.")
    for key in ("space", "train"):
        if key in data and not isinstance(data[key], dict):
            raise UnipetlError(f"{where}: `{key}` must be a mapping, got {data[key]!r}.")
    return data


def bundled_study_file(task: str, model: str) -> Path | None:
    """studies/{task}-{model}.yaml, whose defaults (train caps) apply when no file is given."""
    path = STUDIES_DIR / f"{task}-{model}.yaml"
    return path if path.is_file() else None


# --- storage ------------------------------------------------------------------------------


def check_storage_url(url: str) -> str:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        scheme = make_url(url).get_backend_name()
    except ArgumentError:
        raise UnipetlError(f"`storage` must be a database URL like sqlite:///runs/unipetl.db or postgresql://host/db, got {url!r}.") from None
    if scheme not in SCHEMES:
        raise UnipetlError(f"`storage` scheme {scheme!r} is not supported; use one of {list(SCHEMES)}.{did_you_mean(scheme, SCHEMES)}")
    return scheme


def make_storage(url: str, *, heartbeat_interval: int = 10, grace_period: int | None = None) -> optuna.storages.RDBStorage:
    """RDB storage with heartbeats: a trial whose worker stops beating for `grace_period`
    seconds is marked FAIL and re-queued with the same parameters (RetryFailedTrialCallback)."""
    scheme = check_storage_url(url)
    engine_kwargs: dict[str, Any] = {}
    if scheme == "sqlite":
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs["connect_args"] = {"timeout": 120}  # writers wait for the file lock instead of failing
    else:
        engine_kwargs["pool_pre_ping"] = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return _rdb(url, engine_kwargs, heartbeat_interval, grace_period)


# what a process sees when another one is creating the same empty database's schema at that moment
# (SQLite and PostgreSQL wording): opening again finds the schema complete
_CREATION_RACE = ("already exists", "unique constraint", "duplicate key", "database is locked")


def _rdb(url: str, engine_kwargs: dict[str, Any], heartbeat_interval: int, grace_period: int | None, attempts: int = 6) -> optuna.storages.RDBStorage:
    """Open the storage; several workers starting together on a new database race to create its
    tables, and the losers open it again (up to `attempts` times) instead of failing."""
    from sqlalchemy.exc import SQLAlchemyError

    for attempt in range(attempts):
        try:
            return _open_rdb(url, engine_kwargs, heartbeat_interval, grace_period)
        except SQLAlchemyError as err:
            reason = str(getattr(err, "orig", None) or err).splitlines()[0] if str(err) else type(err).__name__
            if attempt + 1 < attempts and any(s in reason.lower() for s in _CREATION_RACE):
                logger.info("storage %s: schema being created by another process (%s); opening again", mask_url(url), reason)
                time.sleep(0.25 * (attempt + 1))
                continue
            if url.startswith("sqlite"):
                raise UnipetlError(f"`storage` {url.split('///', 1)[-1]!r} is not a readable SQLite database ({reason}).") from None
            raise UnipetlError(f"`storage` {mask_url(url)!r} cannot be opened: {mask_url(reason, url)}.") from None
    raise AssertionError("unreachable: the last attempt returns or raises")


def _open_rdb(url: str, engine_kwargs: dict[str, Any], heartbeat_interval: int, grace_period: int | None) -> optuna.storages.RDBStorage:
    return optuna.storages.RDBStorage(
        url,
        engine_kwargs=engine_kwargs,
        heartbeat_interval=heartbeat_interval,
        grace_period=grace_period or 3 * heartbeat_interval,
        heartbeat_stale_trial_callback=retry_callback(),
    )


def retry_callback(max_retry: int | None = 3) -> Any:
    """Re-queue a trial with the same parameters and user attrs (Optuna's heartbeat retry)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)


def study_names(storage: optuna.storages.BaseStorage) -> list[str]:
    return [s.study_name for s in storage.get_all_studies()]


# --- study creation ----------------------------------------------------------------------


def model_shape(model: str) -> ModelShape:
    """The shape used for budgets: the card for packaged / hub models, the config for tiny ones and
    local directories (a directory named like a card is not that card: its own config.json counts)."""
    from unipetl.evaluators.models import resolve

    spec = resolve(model)
    if spec.source == "tiny":
        from unipetl.spaces.testing import tiny_config

        return shape_from_config(tiny_config(spec.ref), name=spec.name)
    if spec.source == "packaged":
        return resolve_shape(spec.name)
    if Path(spec.ref).is_dir():
        return resolve_shape(str(Path(spec.ref).resolve()))
    return resolve_shape(spec.ref.split("/")[-1] if spec.ref.split("/")[-1] in _card_names() else spec.ref)


def _card_names() -> list[str]:
    from unipetl.spaces.shapes import CARDS

    return CARDS.names(aliases=True)


def study_attrs(spec: StudySpec) -> dict[str, Any]:
    """Validate everything (no storage touched) and return the study's user attrs."""
    from unipetl.evaluators.tasks import get_task

    spec.validate()
    task = get_task(spec.task)
    shape = model_shape(spec.model)
    fraction = parse_budget(spec.budget, shape)
    space = SpaceConfig.from_dict(spec.space)
    if spec.mode == "frontier" and "budget_use" not in spec.space:
        space = dataclasses.replace(space, budget_use=(0.02, 1.0))  # spread the front over [2 %, 100 %] of the budget
    feasible_methods(shape, fraction, space)  # raises when the budget fits no non-empty variant
    from unipetl.evaluators.trial import TrialConfig
    from unipetl.spaces.variant import Variant

    TrialConfig.from_dict({**spec.train, "task": spec.task, "model": spec.model, "variant": Variant(), "data_dir": spec.data_dir})  # checks train values
    return {
        "task": spec.task, "model": spec.model, "mode": spec.mode, "budget_fraction": fraction, "budget": spec.budget,
        "budget_params": shape.base_params and int(round(fraction * shape.base_params)), "space": space.to_dict(),
        "main_metric": task.main_metric, "higher_is_better": bool(task.higher_is_better), "trials": spec.trials,
        "train": dict(spec.train), "data_dir": spec.data_dir, "with_full": spec.with_full, "pruner": spec.pruner,
        "sampler": spec.sampler, "max_failures": spec.max_failures if spec.max_failures is not None else spec.trials,
        "seeds": spec.seeds,
        # stored only when not the default (older studies lack them and mean the default)
        **({"objectives": list(parse_objectives(spec.objectives))} if spec.objectives is not None
           and parse_objectives(spec.objectives) != DEFAULT_OBJECTIVES else {"objectives": None}),
        # mo-asha: a rung ranks the dev loss and the costs this study's frontier trades (search.mo_asha)
        **({"reduction_factor": spec.reduction_factor, "rung_examples": RUNG_EXAMPLES if spec.rung_examples is None else spec.rung_examples,
            "rung_order": spec.rung_order or RUNG_ORDER,
            "rung_costs": list(parse_objectives(spec.objectives)[1:])} if spec.pruner == "mo-asha" else {}),
    }


def objectives_of(attrs: dict[str, Any]) -> tuple[str, ...]:
    """What a frontier-mode study trades (reports.objectives); the default for older studies."""
    return tuple(attrs.get("objectives") or DEFAULT_OBJECTIVES)


def objective_values(attrs: dict[str, Any], record: dict[str, Any]) -> list[float] | None:
    """The values a finished trial tells the study: [metric] in budget mode, the metric and each
    chosen cost in frontier mode; None when the record lacks one (the trial cannot be placed)."""
    if attrs["mode"] == "budget":
        return [float(record["metric"])]
    values = [float(record["metric"])] + [COSTS[o].of_record(record) for o in objectives_of(attrs)[1:]]
    return None if any(v is None or not math.isfinite(v) for v in values) else values


def directions(attrs: dict[str, Any]) -> list[str]:
    metric_dir = "maximize" if attrs["higher_is_better"] else "minimize"
    return [metric_dir] if attrs["mode"] == "budget" else [metric_dir] + ["minimize"] * (len(objectives_of(attrs)) - 1)


def make_sampler(attrs: dict[str, Any], seed: int | None = None) -> optuna.samplers.BaseSampler:
    """TPE (constant liar) by default; random search when asked. Under MO-ASHA, TPE that models
    the COMPLETE trials and sees each PRUNED one as RUNNING, i.e. among the worse
    (`optuna_ext.CompleteOnlyTPE`): Optuna's TPE cannot read the PRUNED trials of a
    multi-objective study (it asks for a single direction and raises). Its startup phase then
    counts completed trials, of which MO-ASHA leaves a few: 3, TPE's own minimum here."""
    if attrs.get("sampler") == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if attrs.get("pruner") == "mo-asha":
        return optuna_ext.CompleteOnlyTPE(n_startup_trials=3, seed=seed)  # constant liar always: it places the pruned trials
    # constant_liar: parallel workers do not all sample the same point while trials run
    return optuna.samplers.TPESampler(n_startup_trials=max(3, min(10, attrs["trials"] // 3)), constant_liar=True, seed=seed)


def make_pruner(attrs: dict[str, Any]) -> optuna.pruners.BasePruner:
    if attrs["mode"] != "budget" or attrs.get("pruner") == "none":
        return optuna.pruners.NopPruner()  # Optuna does not prune multi-objective studies
    if attrs.get("pruner") == "hyperband":
        return optuna.pruners.HyperbandPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)


def load(storage_url: str, name: str, *, heartbeat_interval: int = 10, grace_period: int | None = None, seed: int | None = None) -> optuna.Study:
    storage = make_storage(storage_url, heartbeat_interval=heartbeat_interval, grace_period=grace_period)
    if name not in study_names(storage):
        raise UnipetlError(f"`study` {name!r} does not exist in the storage.{did_you_mean(name, study_names(storage)) if study_names(storage) else ''}")
    probe = optuna.load_study(study_name=name, storage=storage)
    attrs = probe.user_attrs
    if not is_complete(attrs):
        raise UnipetlError(f"`study` {name!r} was never fully created (the creating process stopped); run the same `unipetl search` again to recreate it.")
    if attrs.get("mode") == "frontier" and attrs.get("pruner") == "mo-asha":  # a bad stored rung setting: one error here, not a FAIL per trial
        try:
            stored_rungs(attrs)
        except UnipetlError as err:
            raise UnipetlError(f"`study` {name!r} has a stored MO-ASHA setting it cannot run with: {err}") from None
    # a trial is stale after 3 beats of the slowest worker that ever opened the study, not of this process's own interval:
    # a driver with a shorter one failed live trials of slower workers as stale (and re-ran them)
    slowest = int(attrs.get(HEARTBEAT_ATTR) or 0)  # loading writes nothing: each worker notes its own (note_heartbeat)
    grace = grace_period or 3 * heartbeat_interval
    if grace < 3 * slowest:
        storage = make_storage(storage_url, heartbeat_interval=heartbeat_interval, grace_period=3 * slowest)
    return optuna.load_study(study_name=name, storage=storage, sampler=make_sampler(attrs, seed), pruner=make_pruner(attrs))


def note_heartbeat(study: optuna.Study, heartbeat_interval: int) -> None:
    """Store a worker's heartbeat interval with the study when it is the longest yet (HEARTBEAT_ATTR),
    so every process that loads the study later waits 3 of that worker's beats before calling a trial stale."""
    with driver_lock(study):  # read, compare, write: two workers starting together keep the larger
        if heartbeat_interval > int(study.user_attrs.get(HEARTBEAT_ATTR) or 0):
            study.set_user_attr(HEARTBEAT_ATTR, heartbeat_interval)


def create_or_check(spec: StudySpec, *, heartbeat_interval: int = 10, grace_period: int | None = None) -> optuna.Study:
    """Create the study with its tickets, or continue an existing one with the same search.

    Every check runs before anything is written, so a refused study stays untouched."""
    attrs = study_attrs(spec)
    name = spec.study or default_study_name(spec)
    storage = make_storage(spec.storage, heartbeat_interval=heartbeat_interval, grace_period=grace_period)
    with study_lock(storage.url, name):  # a second driver starting together waits, then continues the study
        return _create_or_continue(spec, name, attrs, storage, heartbeat_interval, grace_period)


def _create_or_continue(spec: StudySpec, name: str, attrs: dict[str, Any], storage: optuna.storages.BaseStorage, heartbeat_interval: int,
                        grace_period: int | None) -> optuna.Study:
    if name in study_names(storage) and not _drop_unfinished(storage, name):
        existing = optuna.load_study(study_name=name, storage=storage).user_attrs
        for key in IDENTITY:
            if existing.get(key) != attrs[key]:
                raise UnipetlError(
                    f"study {name!r} exists with {key}={_short(existing.get(key))}, not {_short(attrs[key])}; "
                    "choose another --study name (the existing study was not changed)."
                )
        for key in SETTINGS:
            stored, asked, words = existing.get(key), attrs.get(key), ""
            if key in LEGACY_SETTINGS and key in attrs:  # None in the spec (not asked for): the study runs with what it has
                asked = getattr(spec, key)
                if stored is None:  # an older study lacking it: the worker runs it with the legacy meaning
                    stored, words = LEGACY_SETTINGS[key][0], f" ({LEGACY_SETTINGS[key][1]})"
                if asked is None or asked == stored:
                    continue
            elif key not in existing or _as_stored(asked) == stored:
                continue
            raise UnipetlError(
                f"study {name!r} exists with {key}={_short(stored)}{words}, not {_short(asked)}; its trials are run with the "
                "stored settings: continue it with `unipetl resume` or the same options, or choose another --study name (the existing study was not changed)."
            )
        _check_data_dir(name, existing.get("data_dir"), spec.data_dir)
        stored_seeds = int(existing.get("seeds", 1))
        if spec.seeds_asked and spec.seeds < stored_seeds:
            raise UnipetlError(f"study {name!r} exists with seeds={stored_seeds}, not {spec.seeds}: fewer seeds would leave the points already "
                               "re-run with more than the rest; continue it without --seeds (or the study file's `seeds`), or choose another "
                               "--study name (the existing study was not changed).")
        study = load(spec.storage, name, heartbeat_interval=heartbeat_interval, grace_period=grace_period)
        if spec.trials > existing.get("trials", 0):
            study.set_user_attr("trials", spec.trials)
        if spec.seeds_asked and spec.seeds > stored_seeds:
            study.set_user_attr("seeds", spec.seeds)
        if spec.max_failures is not None and spec.max_failures != existing.get("max_failures"):  # how many replacements: the user's to change
            study.set_user_attr("max_failures", spec.max_failures)
        top_up(study)
        return study
    study = optuna.create_study(study_name=name, storage=storage, directions=directions(attrs), sampler=make_sampler(attrs), pruner=make_pruner(attrs))
    for key, value in attrs.items():  # "trials" last: its presence marks a fully created study
        if key != "trials":
            study.set_user_attr(key, value)
    study.set_user_attr("trials", attrs["trials"])
    enqueue_presets(study, attrs)
    top_up(study)
    logger.info("created study %s with %d tickets", name, attrs["trials"])
    return study


def _check_data_dir(name: str, stored: str | None, asked: str | None) -> None:
    """A continued study reads the data it was created with: a data directory not asked for keeps
    it; the same folder written another way (relative, a symlink) is the same; another folder, or
    a folder for a study whose workers read UNIPETL_DATA_DIR, is refused (it would be ignored)."""
    if asked is None or (stored is not None and os.path.realpath(stored) == os.path.realpath(asked)):
        return
    how = repr(stored) if stored is not None else "no data directory (each worker reads UNIPETL_DATA_DIR, else the hub)"
    raise UnipetlError(f"study {name!r} exists with data_dir {how}, not {asked!r}; its trials read the stored data: continue it without "
                       "--data-dir, or choose another --study name (the existing study was not changed).")


def driver_lock(study: optuna.Study) -> AbstractContextManager[None]:
    """The study's driver lock (`search/locks.py`): held by every step that reads which tickets
    the study holds and then adds some (create, top up, extra seeds, a failed trial's
    replacement, re-queueing stale trials)."""
    return study_lock(optuna_ext.database_url(study), study.study_name)


def is_complete(attrs: dict[str, Any]) -> bool:
    """A study whose creation finished: its user attrs are written before any ticket, "trials" last."""
    return "trials" in attrs


def _drop_unfinished(storage: optuna.storages.BaseStorage, name: str) -> bool:
    """A study whose creating process died before all its attrs were written holds no work (no
    ticket was ever enqueued), so it is deleted and created again; returns True when it was."""
    study = optuna.load_study(study_name=name, storage=storage)
    if is_complete(study.user_attrs):
        return False
    if study.get_trials(deepcopy=False):  # pragma: no cover - tickets come after the attrs
        raise UnipetlError(f"study {name!r} has trials but no `trials` attribute; it was not made by unipetl search.")
    logger.warning("study %s was left half-created by a stopped process; creating it again", name)
    optuna.delete_study(study_name=name, storage=storage)
    return True


def _as_stored(value: Any) -> Any:
    """`value` as a study user attribute reads back (JSON: tuples become lists)."""
    return json.loads(json.dumps(value))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) < 80 else text[:77] + "..."


def default_study_name(spec: StudySpec) -> str:
    return f"{spec.task}-{spec.model.replace('/', '_')}-{spec.mode}-{spec.budget.replace('%', 'pct')}"


def preset_shares(attrs: dict[str, Any], n: int) -> list[float]:
    """Share of the budget each of n named methods is sized to.

    Budget mode: all at the budget. Frontier mode: spread geometrically over the space's
    `budget_use` range, largest first (e.g. 6 methods over [2 %, 100 %]: 1, 0.46, 0.21, 0.10,
    0.04, 0.02), so the seeds already span the front instead of stacking at one fraction."""
    lo, hi = attrs["space"].get("budget_use", (1.0, 1.0)) if attrs.get("mode") == "frontier" else (1.0, 1.0)
    if n < 2 or lo >= hi:
        return [hi] * n
    return [hi * (lo / hi) ** (i / (n - 1)) for i in range(n)]


def enqueue_presets(study: optuna.Study, attrs: dict[str, Any]) -> list[str]:
    """The named methods, each at the largest size within its share of the budget (all of it in
    budget mode, a geometric spread in frontier mode), as the first tickets; full fine-tuning
    once when asked (it counts in the trial budget too)."""
    shape = model_shape(attrs["model"])
    presets: list[str] = []
    names = list(attrs["space"]["presets"])
    shares = preset_shares(attrs, len(names))
    for name, share in zip(names, shares, strict=True):
        variant = None
        for s in [share] + sorted(x for x in set(shares) if x > share):  # too small at its share: the next larger one
            variant = size_preset(name, shape, attrs["budget_fraction"] * s)
            if variant is not None:
                break
        if variant is None:
            logger.warning("preset %s does not fit a budget of %s; not enqueued", name, attrs["budget"])
            continue
        if (variant.name or name) not in presets:
            presets.append(variant.name or name)
    if attrs.get("with_full"):
        presets.append("full")
    presets = presets[: attrs["trials"]]
    for p in presets:
        study.enqueue_trial({}, user_attrs={"preset": p})
    return presets


NAMED_TRIES = 2  # failed trials of one named method before a sampled design takes its place


def named_retry_due(trials: list[optuna.trial.FrozenTrial], preset: str) -> bool:
    """Whether a named method (`preset`) that failed gets its ticket once more: fewer than
    NAMED_TRIES of its design trials failed (a Ctrl-C is not a failure). One rule for the workers'
    replacement (search.worker) and the Tune driver (search.tune_backend)."""
    return sum(1 for t in trials if t.state == TrialState.FAIL and t.user_attrs.get("preset") == preset and not is_seed_trial(t)
               and not t.user_attrs.get("interrupted")) < NAMED_TRIES


def is_seed_trial(trial: optuna.trial.FrozenTrial) -> bool:
    """An extra seed of an earlier trial (user attr `parent`), not a new design point."""
    return trial.user_attrs.get("parent") is not None


def state_counts(study: optuna.Study, *, design_only: bool = False) -> dict[str, int]:
    out = dict.fromkeys(STATES, 0)
    for t in study.get_trials(deepcopy=False):
        if design_only and is_seed_trial(t):
            continue
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def target(study: optuna.Study) -> int:
    """COMPLETE + PRUNED trials the study ends with: the design trials plus the extra seeds enqueued so far."""
    return int(study.user_attrs["trials"]) + int(study.user_attrs.get("seed_trials", 0))


def top_up(study: optuna.Study) -> int:
    """Add empty tickets so the design trials' COMPLETE + PRUNED + RUNNING + WAITING equals the
    trial budget (extra seeds are topped up by `enqueue_seed_trials`).

    Called by drivers only (search / resume), never by workers, under the study's driver lock, so
    two drivers cannot both fill the same gap."""
    with driver_lock(study):
        return _top_up(study)


def _top_up(study: optuna.Study) -> int:
    c = state_counts(study, design_only=True)
    missing = study.user_attrs["trials"] - (c["COMPLETE"] + c["PRUNED"] + c["RUNNING"] + c["WAITING"])
    for _ in range(max(0, missing)):
        study.enqueue_trial({})
    return max(0, missing)


def finished(study: optuna.Study) -> int:
    c = state_counts(study)
    return c["COMPLETE"] + c["PRUNED"]


def seed_candidates(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Design trials that get extra seeds: every named method and every point of the Pareto front
    the study trades (metric and paper fraction; in frontier mode the costs of its `objectives`,
    e.g. latency), among COMPLETE trials whose metric clears the trivial baseline (a point at
    chance is not worth more seeds). Full fine-tuning is the 100 % reference and is not re-run.
    Distinct designs tied on the front all get seeds; a design the sampler proposed again (the
    same variant and learning rates) gets them once, at its first trial."""
    from unipetl.reports.frontier import nondominated
    from unipetl.reports.stats import beats_baseline

    attrs = study.user_attrs
    higher = bool(attrs.get("higher_is_better", True))
    costs = objectives_of(attrs)[1:] if attrs.get("mode") == "frontier" else DEFAULT_OBJECTIVES[1:]
    done, seen = [], set()
    for t in sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.number):
        rec = t.user_attrs.get("record") or {}
        if is_seed_trial(t) or not isinstance(rec, dict) or rec.get("metric") is None or rec.get("paper_fraction") is None:
            continue
        design = json.dumps([rec.get("variant"), rec.get("lr")], sort_keys=True, default=str)
        if design in seen:
            continue
        seen.add(design)
        if t.user_attrs.get("preset") == "full" or (rec.get("variant") or {}).get("full_finetune"):
            continue
        if beats_baseline(rec["metric"], rec.get("baseline_metric"), rec.get("eval_examples"), higher=higher) is False:
            continue
        values = [COSTS[c].of_record(rec) for c in costs]
        if any(v is None for v in values):  # a cost not measured: not a point of this front (named methods still get seeds)
            if t.user_attrs.get("preset"):
                done.append((t, float(rec["metric"]), None))
            continue
        done.append((t, float(rec["metric"]), values))
    placed = [d for d in done if d[2] is not None]
    mask = nondominated([[m for _, m, _ in placed], *([v[i] for _, _, v in placed] for i in range(len(costs)))], [higher] + [False] * len(costs))
    front = {t.number for (t, _, _), on in zip(placed, mask, strict=True) if on}
    return [t for t, _, _ in done if t.number in front or t.user_attrs.get("preset")]


def enqueue_seed_trials(study: optuna.Study) -> int:
    """Tickets for seeds 1 … K−1 of every `seed_candidates` trial (K = the study's `seeds`).

    Each is an ordinary trial with the parent's parameters (so the same variant and lr scale),
    user attrs `parent` (the parent's number) and `seed_index`; the worker trains it with seed
    `train.seed + seed_index`. Idempotent: a (parent, seed_index) pair that is COMPLETE, PRUNED,
    RUNNING or WAITING is not enqueued again, so a driver killed half-way and run again adds no
    duplicates, and two drivers at once take turns (the study's driver lock). Sets the study's
    `seed_trials` to the pairs wanted; returns the tickets added."""
    with driver_lock(study):
        return _enqueue_seed_trials(study)


def _enqueue_seed_trials(study: optuna.Study) -> int:
    k = int(study.user_attrs.get("seeds", 1))
    if k < 2:
        return 0
    have: set[tuple[int, int]] = set()
    for t in study.get_trials(deepcopy=False):
        if is_seed_trial(t) and t.state != TrialState.FAIL:
            have.add((int(t.user_attrs["parent"]), int(t.user_attrs.get("seed_index", 0))))
    wanted: set[tuple[int, int]] = set()
    added = 0
    for parent in seed_candidates(study):
        for i in range(1, k):
            wanted.add((parent.number, i))
            if (parent.number, i) in have:
                continue
            attrs = {"parent": parent.number, "seed_index": i}
            if parent.user_attrs.get("preset"):
                attrs["preset"] = parent.user_attrs["preset"]
            study.enqueue_trial(dict(parent.params), user_attrs=attrs, skip_if_exists=False)
            added += 1
    # pairs that exist stay counted even if a later result changed the front, and every pair wanted now is added to them
    # (counting only the larger of the two left a new front point's tickets WAITING while the study reported itself done)
    study.set_user_attr("seed_trials", max(len(have | wanted), int(study.user_attrs.get("seed_trials", 0))))
    if added:
        logger.info("study %s: %d extra-seed tickets (seeds per point: %d)", study.study_name, added, k)
    return added


__all__ = ["StudySpec", "TrialState", "load_study_file", "make_storage", "create_or_check", "load", "state_counts", "top_up", "finished",
           "target", "seed_candidates", "enqueue_seed_trials", "is_seed_trial", "driver_lock"]
