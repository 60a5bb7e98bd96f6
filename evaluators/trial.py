"""One trial: task data → model + variant → fine-tune → metric + costs → the trial record.

`run_trial` is what `unipetl run` and every search worker call. Bad user input (unknown task or
model, missing data, a variant the model cannot take) raises UnipetlError *before* training,
so nothing is recorded for a trial that never ran; anything that goes wrong *during* training
(NaN loss, an exception) comes back as a record with status "failed" and the reason, so a
search worker survives it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unipetl.evaluators.record import make_record
from unipetl.evaluators.reporting import RungReport
from unipetl.evaluators.tasks import get_task
from unipetl.spaces import lr as lr_rules
from unipetl.spaces.registry import UnipetlError, did_you_mean
from unipetl.spaces.variant import Variant

log = logging.getLogger(__name__)

WEIGHTS_FILE = "adapter.safetensors"  # written by spaces.io.save_variant, with variant.json and unipetl.json


def _setting(default: Any, help: str) -> Any:  # noqa: A002 - argparse's word
    """A training setting: a TrialConfig field that is also a command-line flag and a study-file key."""
    return dataclasses.field(default=default, metadata={"setting": True, "help": help})


# eval batches timed for the eval-batch latency when a study's frontier trades it: the fewest pairs
# whose median has a 95 % distribution-free interval (reports.stats.median_interval)
LATENCY_BATCHES = 6


@dataclass(frozen=True, slots=True, kw_only=True)
class TrialConfig:
    task: str
    model: str
    variant: Variant
    data_dir: str | None = None  # else env UNIPETL_DATA_DIR, else the hub
    # --- training settings: each field below is also a `unipetl run` / `unipetl search` flag
    # (--max-train-examples, …) and a key of a study file's `train:` block; adding a setting is one line here
    max_train_examples: int | None = _setting(None, "train on a fixed-seed subset of N examples")
    max_eval_examples: int | None = _setting(None, "evaluate on a fixed-seed subset of N examples")
    epochs: float = _setting(1.0, "training epochs")
    max_steps: int | None = _setting(None, "optimizer steps (overrides --epochs)")
    batch_size: int = _setting(32, "examples per micro-batch")
    lr: float | None = _setting(None, "one learning rate for every trained parameter (default: method-aware, each kind's central rate × lr_scale)")
    lr_scale: float = _setting(1.0, "multiplier on every kind's central rate (unipetl.spaces.lr); what the search samples; ignored with lr")
    warmup_ratio: float = _setting(0.06, "fraction of steps with linear warm-up")
    weight_decay: float = _setting(0.0, "AdamW weight decay")
    grad_accum: int = _setting(1, "micro-batches per optimizer step")
    max_grad_norm: float | None = _setting(1.0, "gradient clipping norm")
    label_smoothing: float | None = _setting(None, "label smoothing (default 0.1 for seq2seq, the paper's XSum set-up; 0 otherwise)")
    eval_every: int | None = _setting(None, "evaluate every S optimizer steps (default: once per epoch and at the end)")
    seed: int = _setting(0, "seed of the data order, initialisation and subsets")
    max_length: int | None = _setting(None, "input token limit (default: the task's, 128 for GLUE)")
    device: str = _setting("auto", "auto | cpu | cuda[:N]")
    scheduler: str = _setting("linear", "linear | polynomial | cosine | constant_with_warmup | constant")
    max_new_tokens: int | None = _setting(None, "seq2seq: cap the task's generation length (quick runs); default keeps the paper's")
    latency_batches: int = _setting(1, "eval batches timed in pairs with the backbone for the eval-batch latency (6 or more give its median "
                                       "an interval; a study whose frontier trades latency_batch sets 6)")

    def __post_init__(self) -> None:
        if isinstance(self.variant, dict):
            object.__setattr__(self, "variant", Variant.from_dict(self.variant))
        if not isinstance(self.variant, Variant):
            raise UnipetlError(f"`variant` must be a Variant, got {type(self.variant).__name__}.")
        for name in ("max_train_examples", "max_eval_examples", "max_steps", "eval_every", "max_length", "max_new_tokens"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
                raise UnipetlError(f"`{name}` should be a positive integer, got {v!r}.")
        for name in ("batch_size", "grad_accum", "latency_batches"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise UnipetlError(f"`{name}` should be a positive integer, got {v!r}.")
        for name in ("epochs", "lr", "lr_scale"):
            v = getattr(self, name)
            if v is None and name == "lr":
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise UnipetlError(f"`{name}` should be a positive number, got {v!r}.")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:  # 2.7 trained as 2, True as 1
            raise UnipetlError(f"`seed` should be an integer in 0..2**32-1, got {self.seed!r}.")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise UnipetlError(f"`warmup_ratio` should be in [0, 1), got {self.warmup_ratio!r}.")
        if self.label_smoothing is not None and not 0.0 <= self.label_smoothing < 1.0:
            raise UnipetlError(f"`label_smoothing` should be in [0, 1), got {self.label_smoothing!r}.")
        schedulers = ("linear", "polynomial", "cosine", "constant_with_warmup", "constant")
        if self.scheduler not in schedulers:
            raise UnipetlError(f"`scheduler` must be one of {list(schedulers)}, got {self.scheduler!r}.{did_you_mean(self.scheduler, schedulers)}")
        if self.device != "auto" and not (self.device == "cpu" or self.device.startswith("cuda") or self.device == "mps"):
            raise UnipetlError(f"`device` must be auto, cpu or cuda[:N], got {self.device!r}.")

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["variant"] = self.variant.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrialConfig:
        known = [f.name for f in dataclasses.fields(cls)]
        for key in data:
            if key not in known:
                raise UnipetlError(f"Unknown key {key!r} in trial config.{did_you_mean(str(key), known)}")
        return cls(**data)

    @classmethod
    def for_trial(cls, attrs: dict[str, Any], variant: Variant) -> TrialConfig:
        """The config a search worker trains: a study's attributes (task, model, data_dir, the
        `train` settings) and the trial's variant. A frontier that trades `latency_batch` times
        LATENCY_BATCHES eval batches unless its `train` settings choose (enough pairs for an
        interval of their median). Raises UnipetlError for a bad setting."""
        train = dict(attrs["train"])
        if "latency_batch" in (attrs.get("objectives") or ()) and "latency_batches" not in train:
            train["latency_batches"] = LATENCY_BATCHES
        return cls.from_dict({**train, "task": attrs["task"], "model": attrs["model"], "variant": variant.to_dict(), "data_dir": attrs.get("data_dir")})


def settings() -> tuple[dataclasses.Field, ...]:
    """The training settings of TrialConfig (every field but task, model, variant, data_dir), in order.

    Each one is a `unipetl run` / `unipetl search` flag and a study-file `train:` key."""
    return tuple(f for f in dataclasses.fields(TrialConfig) if f.metadata.get("setting"))


def setting_type(f: dataclasses.Field) -> type:
    """The type a setting's flag parses to (int, float or str), from the field's annotation."""
    names = {part.strip() for part in str(f.type).split("|")} - {"None"}
    for typ in (int, float, str):
        if names == {typ.__name__}:
            return typ
    raise TypeError(f"setting {f.name!r} has annotation {f.type!r}; a setting is int, float or str, optionally | None")


def _device(name: str) -> Any:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UnipetlError(f"`device` {name!r} asked for, but no CUDA device is available.")
    return torch.device(name)


def fit_generation(model: Any, gen: Any, cap: int | None = None) -> Any:
    """A task's generation settings (tasks.Generation) fitted to `model`: the reference length to its
    positions, the new tokens to `cap` (`--max-new-tokens`) and to its positions less the one the
    decoder's start token holds — the task's own limit stands wherever the model has room for it
    (XSum: 60 new tokens, He et al. 2022 App. A) — and `min_new_tokens` never above the maximum."""
    wanted = gen.max_new_tokens if cap is None else min(gen.max_new_tokens, cap)
    new_tokens = _length_limit(model, wanted + 1) - 1
    return dataclasses.replace(gen, max_target_length=_length_limit(model, gen.max_target_length), max_new_tokens=new_tokens,
                               min_new_tokens=min(gen.min_new_tokens, new_tokens))


def _length_limit(model: Any, wanted: int, reserved: int = 0) -> int:
    """The tokenization limit, capped at the model's positions (tiny models have 128) less
    `reserved` positions (prompt tuning's l soft tokens share the input's position table)."""
    from unipetl.spaces.family_specs import position_offset

    cfg = model.config
    limit = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
    if limit is None:
        return wanted
    limit -= position_offset(cfg.model_type)  # RoBERTa's positions start after the padding index
    room = int(limit) - reserved
    if room < 1:
        raise UnipetlError(f"prompt length {reserved} leaves no room for input tokens in {cfg.model_type}'s {int(limit)} positions.")
    return min(wanted, room)


_BASELINE_NAME = {"classification": "majority class of the training split", "regression": "constant prediction (training mean)"}


def _baseline(task: Any, data: Any) -> float | None:
    """The main metric of a trivial predictor on the eval split, the bar a trained point must clear.

    Classification: always the training split's most frequent label (majority class; its
    accuracy is the chance level a report compares with); regression: the training mean (scores
    0 correlation). None for generation tasks (no trivial predictor with a meaningful score)."""
    from collections import Counter

    from unipetl.evaluators.data import column
    from unipetl.evaluators.metrics import compute_metrics

    if task.kind == "seq2seq" or "eval" not in data.eval or "labels" not in data.train.column_names:
        return None
    train_labels = column(data.train, "labels")
    refs = column(data.eval["eval"], "labels")
    if not refs or not train_labels:
        return None
    if task.kind == "classification":
        majority = Counter(train_labels).most_common(1)[0][0]
        preds: list[Any] = [majority] * len(refs)
    else:
        mean = float(sum(train_labels) / len(train_labels))
        preds = [mean] * len(refs)
    try:
        value = compute_metrics(task.metrics, preds, refs, num_labels=task.num_labels)[task.main_metric]
    except (KeyError, ValueError, ZeroDivisionError):
        return None
    return float(value) if value is not None and math.isfinite(value) else 0.0


def run_trial(config: TrialConfig, *, report: Callable[[int, float], bool] | None = None, out_dir: str | Path | None = None,
              progress: bool = False) -> dict[str, Any]:
    """Fine-tune `config.variant` on `config.task` and return the trial record (also written to out_dir)."""
    from unipetl.evaluators.data import prepare
    from unipetl.evaluators.models import load_model
    from unipetl.evaluators.train import LoopSettings, train_and_evaluate
    from unipetl.spaces.realize import apply_variant

    t_start = time.perf_counter()
    clock = _Clock()
    task = get_task(config.task)
    device = _device(config.device)
    loaded = load_model(config.model, task, data_dir=config.data_dir, max_train=config.max_train_examples, seed=config.seed)
    wanted = config.max_length or (task.generation.max_source_length if task.generation else task.max_length)
    max_length = _length_limit(loaded.model, wanted, reserved=config.variant.prompt_length or 0)
    if task.generation is not None:  # reference and generated lengths must fit the decoder's positions too
        task = dataclasses.replace(task, generation=fit_generation(loaded.model, task.generation, config.max_new_tokens))
    clock.lap("load_model")
    data = prepare(task, loaded.tokenizer, data_dir=config.data_dir, max_train=config.max_train_examples, max_eval=config.max_eval_examples,
                   max_length=max_length, model_key=loaded.key)
    baseline = _baseline(task, data)
    clock.lap("data")
    realized = apply_variant(loaded.model, config.variant)  # UnipetlError for a variant the model cannot take
    counts = realized.counts
    lr_plan, kinds = lr_rules.plan(realized.model, config.variant, scale=config.lr_scale, override=config.lr)
    groups = lr_rules.param_groups(realized.model, lr_plan, kinds, config.weight_decay)
    clock.lap("realize")
    latency = None
    rung = report if isinstance(report, RungReport) else None
    if rung is not None and rung.wants("latency", "latency_batch") and "eval" in data.eval:
        # the study's rungs rank latency (its frontier trades it): a forward pass costs what the structure
        # costs, not what training made of the values, so it is timed now and the record keeps this measurement
        latency = _latency(config, task, loaded, realized, data, max_length, device, batch=rung.wants("latency_batch"))
        rung.tell_costs({"latency": latency.get("batch1_ratio"), "latency_batch": latency.get("batch_ratio")})
        clock.lap("latency")
    label_smoothing = config.label_smoothing if config.label_smoothing is not None else (0.1 if task.kind == "seq2seq" else 0.0)
    settings = LoopSettings(epochs=config.epochs, max_steps=config.max_steps, batch_size=config.batch_size, lr=max(lr_plan.rates.values()), scheduler=config.scheduler,
                            warmup_ratio=config.warmup_ratio, weight_decay=config.weight_decay, grad_accum=config.grad_accum,
                            max_grad_norm=config.max_grad_norm, label_smoothing=label_smoothing, eval_every=config.eval_every, seed=config.seed)
    log.info("trial %s / %s / %s: paper %d (%.4f %%), trainable %d + head %d; %s", task.name, loaded.name, config.variant.describe(),
             counts.paper_params, counts.paper_percent, counts.trainable_params, realized.head_params, lr_plan.describe())
    try:
        res = train_and_evaluate(task, realized.model, loaded.tokenizer, data.train, data.eval, settings, device=device, report=report, progress=progress,
                                 param_groups=groups)
        status, error = res.status, res.error
    except Exception as err:  # noqa: BLE001 - a failed trial is a result, not a crash of the worker
        log.exception("trial failed")
        from unipetl.evaluators.train import LoopResult

        res, status, error = LoopResult(), "failed", f"{type(err).__name__}: {err}"
    clock.lap("loop")
    clock.laps.pop("loop")
    clock.laps.update(train=res.train_seconds, eval=res.eval_seconds)
    # a pruned trial is never on a frontier: the rest of its latency would be time for nothing
    if status == "ok" and "eval" in data.eval and (latency is None or latency.get("batch_ms_per_example") is None):
        latency = _latency(config, task, loaded, realized, data, max_length, device, part=latency)
        clock.lap("latency")
    if out_dir is not None and status != "failed":
        save_weights(realized, out_dir, loaded.name)
        clock.lap("write")
    train_settings = {k: v for k, v in config.to_dict().items() if k not in ("task", "model", "variant")}
    train_settings.update(label_smoothing=label_smoothing, max_length=max_length, steps=res.steps, train_examples=len(data.train),
                          eval_examples={k: len(v) for k, v in data.eval.items()}, data_sources=data.sources,
                          generation=dataclasses.asdict(task.generation) if task.generation else None, task_note=task.note or None)
    record = make_record(
        status=status, error=error, task=task.name, model=loaded.name, variant=config.variant.to_dict(),
        variant_description=config.variant.describe(), preset=config.variant.name,
        paper_params=counts.paper_params, trainable_params=counts.trainable_params, head_params=realized.head_params, base_params=counts.base_params,
        paper_percent=counts.paper_percent, paper_fraction=counts.paper_params / counts.base_params,
        trainable_percent=counts.trainable_percent, trainable_fraction=counts.trainable_params / counts.base_params,
        metrics=res.metrics, main_metric=task.main_metric, higher_is_better=task.higher_is_better, metric=res.metric, best_step=res.best_step,
        weights_step=res.weights_step, lr={"rates": lr_plan.rates, "source": lr_plan.source, "scale": lr_plan.scale, "principal": lr_plan.principal},
        baseline_metric=baseline, baseline=_BASELINE_NAME.get(task.kind) if baseline is not None else None, eval_examples=len(data.eval["eval"]) if "eval" in data.eval else None,
        curve=res.curve, wall_seconds=(wall := time.perf_counter() - t_start), time_breakdown=clock.breakdown(wall),
        train_tokens_per_second=res.train_tokens / res.train_seconds if res.train_seconds > 0 else 0.0,
        step_seconds=res.train_seconds / res.steps if res.steps else 0.0, peak_memory_bytes=res.peak_memory_bytes, peak_memory_kind=res.peak_memory_kind,
        peak_memory_growth_bytes=res.peak_memory_bytes - res.peak_memory_start_bytes if res.peak_memory_kind else None,
        device=str(device), seed=config.seed, train_settings=train_settings, latency=latency, fidelity="final" if status == "ok" else "partial",
    )
    if out_dir is not None:
        write_record(record, out_dir)
    return record


def _latency(config: TrialConfig, task: Any, loaded: Any, realized: Any, data: Any, max_length: int, device: Any, *, batch: bool = True,
             part: dict[str, Any] | None = None) -> dict[str, Any]:
    """The variant's latency record (evaluators.latency), timed once per design in this process.

    `batch=False`: the batch-1 part only (what a rung ranking `latency` needs before training;
    not kept for reuse). `part`: such a batch-1 part, completed with the eval-batch part."""
    import torch

    from unipetl.evaluators.data import task_fingerprint
    from unipetl.evaluators.latency import PROCEDURE as latency_procedure
    from unipetl.evaluators.latency import design_key, measure_latency, reuse_or_measure
    from unipetl.evaluators.models import backbone_identity, kept_backbone
    from unipetl.evaluators.train import eval_batch_size

    def measure() -> dict[str, Any]:
        # the pristine backbone, timed in pairs with the variant: latency ratios that a loaded machine does not move
        reference = kept_backbone(config.model, get_task(config.task), data_dir=config.data_dir, max_train=config.max_train_examples, seed=config.seed)
        single = part is None or part.get("batch1_ms") is None
        out = measure_latency(task, realized, loaded.tokenizer, data.eval["eval"], batch_size=bs, device=device, reference=reference, single=single, batch=batch,
                              n_batches=config.latency_batches)
        return out if single else {**out, **{k: part.get(k) for k in ("batch1_ms", "batch1_ratio", "batch1_ratio_ci")}}

    bs = eval_batch_size(task, config.batch_size, device)
    # another seed / lr of this design in this process: the same forward passes, timed once
    key = design_key(backbone=backbone_identity(config.model, task, data_dir=config.data_dir, max_train=config.max_train_examples),
                     variant=config.variant.to_dict(), task=task_fingerprint(task), data=data.identity or None, max_length=max_length, batch_size=bs,
                     device=str(device), threads=torch.get_num_threads(), procedure=latency_procedure, batches=config.latency_batches)
    return reuse_or_measure(key, measure, keep=batch)


PHASES = ("load_model", "data", "realize", "train", "eval", "latency", "write", "other")  # time_breakdown's keys, in order


class _Clock:
    """Wall time per phase of a trial: `lap(name)` books the time since the last lap."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = self.laps.get(name, 0.0) + now - self._t
        self._t = now

    def breakdown(self, wall: float) -> dict[str, float]:
        """Seconds per phase (PHASES; "other" is the rest of `wall`) and `outside_training`, the
        fraction of the wall not spent in training steps."""
        out = {name: round(self.laps.get(name, 0.0), 4) for name in PHASES[:-1]}
        out["other"] = round(max(0.0, wall - sum(self.laps.values())), 4)
        out["outside_training"] = round(1.0 - out["train"] / wall, 4) if wall > 0 else None
        return out


def save_weights(realized: Any, out_dir: str | Path, base_model_id: str) -> None:
    """The trained variant as `unipetl.spaces.io.save_variant` writes it (adapter.safetensors with
    the variant + head tensors only, variant.json, unipetl.json), so the directory reloads with
    `unipetl.spaces.io.load_variant` and exports with `unipetl export`."""
    from unipetl.spaces.io import save_variant

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_variant(realized, out, base_model_id=base_model_id)


def write_record(record: dict[str, Any], out_dir: str | Path) -> None:
    """DIR/record.json (the trial record, as `run_trial` returns it)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "record.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
