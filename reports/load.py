"""Load trial records from Optuna studies or record files into one polars table.

Reports read the trial record of the shared contract (the search stores it in each Optuna
trial's user attribute "record"; `unipetl run` writes it as record.json) and nothing else, so
this module never imports torch. Trials without a record (running, waiting, or failed before
the evaluator wrote one) still get a row: the report shows every state of a partial study.

The variant is flattened into one column per design dimension (see `variant_columns`) so that
frontier and effect tables are plain polars group-bys.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import polars as pl

from unipetl.reports.objectives import COSTS
from unipetl.spaces.kinds import get_kind
from unipetl.spaces.registry import UnipetlError
from unipetl.spaces.variant import ATTN_SITES, Variant

logger = logging.getLogger(__name__)

# the table's columns, in order, with their polars types (rows from any source fill all of them)
SCHEMA: dict[str, Any] = {
    "task": pl.Utf8, "model": pl.Utf8, "study": pl.Utf8, "source": pl.Utf8, "trial": pl.Int64,
    "state": pl.Utf8, "status": pl.Utf8, "error": pl.Utf8, "fidelity": pl.Utf8,
    "preset": pl.Utf8, "named": pl.Boolean, "full_finetune": pl.Boolean, "description": pl.Utf8,
    "attn_method": pl.Utf8, "ffn_method": pl.Utf8, "kind": pl.Utf8, "site": pl.Utf8,
    "insertion": pl.Utf8, "function": pl.Utf8, "composition": pl.Utf8, "sizes": pl.Utf8,
    "attn_size": pl.Int64, "ffn_size": pl.Int64, "scale": pl.Float64, "bitfit": pl.Boolean,
    "prompt_length": pl.Int64, "paper_params": pl.Int64, "trainable_params": pl.Int64,
    "head_params": pl.Int64, "base_params": pl.Int64, "paper_fraction": pl.Float64,
    "trainable_fraction": pl.Float64, "budget_fraction": pl.Float64, "mode": pl.Utf8,
    "main_metric": pl.Utf8, "higher_is_better": pl.Boolean, "metric": pl.Float64,
    "best_step": pl.Int64, "metrics_json": pl.Utf8, "wall_seconds": pl.Float64,
    "train_tokens_per_second": pl.Float64, "step_seconds": pl.Float64,
    "peak_memory_bytes": pl.Int64, "peak_memory_growth_bytes": pl.Int64, "device": pl.Utf8, "seed": pl.Int64, "variant_json": pl.Utf8,
    # how the number was obtained: the design this run is an extra seed of, its learning rates,
    # the trivial baseline on the same eval set and that set's size
    "representation": pl.Utf8, "parent": pl.Int64, "lr_scale": pl.Float64, "lr_json": pl.Utf8,
    "baseline_metric": pl.Float64, "baseline": pl.Utf8, "eval_examples": pl.Int64, "weights_step": pl.Int64,
    # inference latency of the trained variant (ms per example; LoRA merged when it can be): batch 1 and the eval batch
    "latency_ms": pl.Float64, "latency_batch_ms": pl.Float64,
    # the same relative to the pristine backbone timed in pairs on the same inputs (1 = no added latency)
    "latency_ratio": pl.Float64, "latency_batch_ratio": pl.Float64,
    # their 95 % distribution-free intervals (of the median over the paired passes; null with too few pairs)
    "latency_ratio_lo": pl.Float64, "latency_ratio_hi": pl.Float64, "latency_batch_ratio_lo": pl.Float64, "latency_batch_ratio_hi": pl.Float64,
    # how the study screened its trials before the end (multi-fidelity; null: every trial trained to the end)
    "screening": pl.Utf8,
    # how the trial was trained, in words (`setup_text` of the record's train_settings)
    "setup": pl.Utf8,
}

STATES = ("COMPLETE", "FAIL", "PRUNED", "RUNNING", "WAITING")
RDB_SCHEMES = ("sqlite", "postgresql", "postgres", "mysql", "mariadb", "oracle", "mssql")


def mask_url(text: str, url: str | None = None) -> str:
    """`text` (a storage URL, or a message that quotes one) with every password replaced by ***.

    The one masker: whatever prints, logs or writes a storage URL goes through it. A password in
    `//user:password@host` form is masked even when it holds '@'; with `url` given, that URL's
    password is also masked wherever else it appears (drivers quote the DSN as `password=…`)."""
    out = re.sub(r"(//[^:/@\s]+:)[^/\s]*@", r"\1***@", str(text))
    if url:
        from sqlalchemy.engine import make_url

        try:
            password = make_url(url).password
        except Exception:  # noqa: BLE001 - not a URL: nothing more to mask
            password = None
        if password:
            out = out.replace(str(password), "***")
    return out


def _mixed(values: Iterable[str]) -> str | None:
    vals = sorted(set(values))
    if not vals:
        return None
    return vals[0] if len(vals) == 1 else "mixed"


def variant_columns(variant: Variant) -> dict[str, Any]:
    """Flatten a variant into one value per design dimension.

    A dimension whose modules disagree (e.g. MAM: gated prefix + scaled adapter) is "mixed";
    one that does not apply is null. `insertion` looks at adapter modules only: prefix, MH PA
    and LoRA are parallel by construction, so counting them would confound insertion with the
    kind of module (the paper's comparison is sequential vs parallel *adapters*).
    """
    attn = [m for m in variant.modules if m.site in ATTN_SITES]
    ffn = [m for m in variant.modules if m.site == "ffn"]
    comp = {"add": "add", "scaled": "scaled", "learned_scale": "scaled", "gated": "gated"}
    site = None
    if attn or ffn:
        site = "both" if attn and ffn else ("attention" if attn else "ffn")
    # the representation modified, with head-wise attention (prefix, MH PA) apart from the rest
    representation = _mixed(get_kind(m.kind).representation(m) for m in variant.modules)
    sizes = [f"{get_kind(m.kind).size_letter}={m.size}@{'attn' if m.site in ATTN_SITES else 'ffn'}" for m in variant.modules]
    if variant.prompt_length:
        sizes.append(f"prompt={variant.prompt_length}")
    scaled = [m.scale for m in variant.modules if m.composition in ("scaled", "learned_scale")]
    return {
        "full_finetune": variant.full_finetune,
        "description": variant.describe(),
        "attn_method": " + ".join(m.describe() for m in attn) or None,
        "ffn_method": " + ".join(m.describe() for m in ffn) or None,
        "kind": _mixed(m.kind for m in variant.modules),
        "site": site,
        "representation": representation,
        "insertion": _mixed(m.insertion for m in variant.modules if get_kind(m.kind).insertion_varies),
        "function": _mixed(m.function for m in variant.modules),
        "composition": _mixed(comp[m.composition] for m in variant.modules),
        "sizes": ", ".join(sizes) or None,
        "attn_size": max((m.size for m in attn), default=None),
        "ffn_size": max((m.size for m in ffn), default=None),
        "scale": max(scaled) if scaled else None,
        "bitfit": variant.bitfit,
        "prompt_length": variant.prompt_length,
        "variant_json": variant.to_json(sort_keys=True),
    }


# mo_asha.ORDERS in words
ORDER_WORDS = {"hv": "hypervolume contribution", "eps-net": "the ε-net order from the lowest rung value", "crowding": "NSGA-II crowding distance"}


def screening_text(attrs: dict[str, Any]) -> str | None:
    """How a study's trials were screened before the end, in words, from its stored settings (search.study_attrs):
    MO-ASHA's rungs, what they rank and the order inside a front (search.mo_asha); None for a study that trains
    every trial to the end. Older studies lacking a setting are described as they ran (the legacy default)."""
    if attrs.get("mode") != "frontier" or attrs.get("pruner") != "mo-asha":
        return None
    first = (attrs.get("train") or {}).get("eval_every")
    eta = int(attrs.get("reduction_factor") or 3)
    examples = attrs.get("rung_examples")
    value = f"dev loss on {examples} fixed dev examples" if examples else f"{attrs.get('main_metric') or 'the metric'} on the dev set"
    costs = "; ".join(COSTS[c].label if c in COSTS else str(c) for c in attrs.get("rung_costs") or ["params"])
    order = attrs.get("rung_order") or "hv"  # absent: a study from before the order was a setting (search.mo_asha.LEGACY_ORDER)
    return (f"MO-ASHA (Schmucker et al. 2021): rungs at {first}·{eta}^k training steps, the top 1/{eta} of the trials at a rung continue, "
            f"by non-dominated rank over ({value}; {costs}), within a front by {ORDER_WORDS.get(order, order)}; "
            "named methods and extra seeds train to the end")


def setup_text(settings: Any) -> str | None:
    """A record's training set-up in words (its `train_settings`: evaluators.trial), e.g. "4000
    training examples, 125 steps of batch 32, max length 64, linear schedule, warm-up 0.06";
    None when the record does not say. Seeds and learning rates are reported per design apart."""
    if not isinstance(settings, dict):
        return None
    parts = []
    if settings.get("train_examples") is not None:
        parts.append(f"{settings['train_examples']} training examples")
    if settings.get("steps") is not None:
        batch, accum = settings.get("batch_size"), settings.get("grad_accum") or 1
        parts.append(f"{settings['steps']} steps" + (f" of batch {batch}" + (f"×{accum}" if accum != 1 else "") if batch else ""))
    if settings.get("max_length"):
        parts.append(f"max length {settings['max_length']}")
    if settings.get("scheduler"):
        warmup = settings.get("warmup_ratio")
        parts.append(f"{settings['scheduler']} schedule" + (f", warm-up {warmup:g}" if isinstance(warmup, int | float) else ""))
    return ", ".join(parts) or None


def record_row(record: dict[str, Any], *, study: str | None = None, source: str = "", trial: int | None = None,
               state: str = "COMPLETE", preset: str | None = None, study_attrs: dict[str, Any] | None = None) -> dict[str, Any]:
    """One table row from one trial record (the contract's dict); unknown keys are ignored."""
    if not isinstance(record, dict):
        raise UnipetlError(f"trial record in {source or 'input'} must be a JSON object, got {type(record).__name__}.")
    attrs = study_attrs or {}
    row: dict[str, Any] = dict.fromkeys(SCHEMA)
    row.update(study=study, source=source, trial=trial, state=state, mode=attrs.get("mode"), budget_fraction=attrs.get("budget_fraction"),
               screening=screening_text(attrs))
    for key in ("task", "model", "status", "error", "fidelity", "paper_params", "trainable_params", "head_params", "base_params",
                "paper_fraction", "trainable_fraction", "main_metric", "higher_is_better", "metric", "best_step", "wall_seconds",
                "train_tokens_per_second", "step_seconds", "peak_memory_bytes", "peak_memory_growth_bytes", "device", "seed", "parent", "baseline_metric", "baseline",
                "eval_examples", "weights_step"):
        row[key] = record.get(key)
    latency = record.get("latency")
    if isinstance(latency, dict):
        row["latency_ms"], row["latency_batch_ms"] = latency.get("batch1_ms"), latency.get("batch_ms_per_example")
        row["latency_ratio"], row["latency_batch_ratio"] = latency.get("batch1_ratio"), latency.get("batch_ratio")
        for part, col in (("batch1_ratio_ci", "latency_ratio"), ("batch_ratio_ci", "latency_batch_ratio")):
            ci = latency.get(part)
            if isinstance(ci, list | tuple) and len(ci) == 2 and all(isinstance(v, int | float) for v in ci):
                row[f"{col}_lo"], row[f"{col}_hi"] = float(ci[0]), float(ci[1])
    row["setup"] = setup_text(record.get("train_settings"))
    lr = record.get("lr")
    if isinstance(lr, dict):
        row["lr_json"] = json.dumps(lr, sort_keys=True, default=str)
        row["lr_scale"] = lr.get("scale") if lr.get("source") != "override" else None
    row["task"] = row["task"] or attrs.get("task")
    row["model"] = row["model"] or attrs.get("model")
    row["main_metric"] = row["main_metric"] or attrs.get("main_metric")
    if row["higher_is_better"] is None:
        row["higher_is_better"] = attrs.get("higher_is_better", True)
    if row["paper_fraction"] is None and record.get("paper_percent") is not None:
        row["paper_fraction"] = float(record["paper_percent"]) / 100.0
    row["preset"] = preset or record.get("preset")
    if isinstance(record.get("metrics"), dict):
        row["metrics_json"] = json.dumps(record["metrics"], sort_keys=True, default=str)
    variant_data = record.get("variant")
    if isinstance(variant_data, dict):
        try:
            variant = Variant.from_dict(variant_data)
        except UnipetlError as err:
            logger.warning("trial %s of %s: unreadable variant (%s)", trial, study or source, err)
        else:
            row.update(variant_columns(variant))
            row["preset"] = row["preset"] or variant.name
    if not row["description"] and record.get("variant_description"):
        row["description"] = str(record["variant_description"])
    row["named"] = row["preset"] is not None
    if row["full_finetune"] is None:
        row["full_finetune"] = False
    return row


def _boolean(v: Any) -> bool:
    """A record's boolean: JSON true / false, 0 / 1, or the strings "true" / "false" (bool("false") would be True)."""
    if isinstance(v, str):
        low = v.strip().lower()
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
        raise ValueError(v)
    return bool(v)


def frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    """Rows → the typed table (values that do not fit their column type become null)."""
    clean = []
    for r in rows:
        out = {}
        for key, dtype in SCHEMA.items():
            v = r.get(key)
            if v is not None:
                try:
                    v = {pl.Utf8: str, pl.Int64: int, pl.Float64: float, pl.Boolean: _boolean}[dtype](v)
                except (TypeError, ValueError):
                    v = None
            out[key] = v
        clean.append(out)
    return pl.DataFrame(clean, schema=SCHEMA)


# --- Optuna studies ---------------------------------------------------------------------------
def open_storage(url: str) -> Any:
    """An Optuna storage for `url`: an RDB URL (sqlite, postgresql, mysql) or journal:///PATH."""
    import optuna

    scheme = str(url).split(":", 1)[0].split("+", 1)[0].lower() if ":" in str(url) else ""
    if scheme == "journal":
        path = re.sub(r"^journal:(//)?", "", url)
        if not Path(path).is_file():
            raise UnipetlError(f"`--storage`: journal file {path!r} does not exist.")
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(path))
    if scheme not in RDB_SCHEMES:
        raise UnipetlError(f"`--storage`: unknown storage scheme {scheme or url!r} in {mask_url(url)!r}; use sqlite:///FILE, postgresql://…, mysql://… or journal:///FILE.")
    if scheme == "sqlite":
        path = url.split(":///", 1)[-1]
        if path and path != ":memory:" and not Path(path).is_file():
            raise UnipetlError(f"`--storage`: SQLite file {path!r} does not exist.")
    url = _with_driver(url)
    try:
        return optuna.storages.RDBStorage(url, skip_compatibility_check=False)
    except Exception as err:  # noqa: BLE001 - driver errors vary by backend; one line for the user
        msg = mask_url(str(err).splitlines()[0]) if str(err) else type(err).__name__
        raise UnipetlError(f"`--storage`: cannot open {mask_url(url)!r}: {msg}") from None


def _with_driver(url: str) -> str:
    """postgresql://… → postgresql+psycopg2://… when only psycopg2 is installed.

    SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; the project depends on psycopg2-binary.
    """
    import importlib.util

    if re.match(r"postgres(ql)?://", url) and importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
        return re.sub(r"^postgres(ql)?://", "postgresql+psycopg2://", url)
    return url


def study_names(storage: Any) -> list[str]:
    import optuna

    return [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]


def load_studies(url: str, names: list[str] | None = None) -> tuple[pl.DataFrame, dict[str, dict[str, Any]]]:
    """Every trial of the named studies (default: all studies in the storage) → (table, study attrs)."""
    import optuna

    storage = open_storage(url)
    available = study_names(storage)
    wanted = names or available
    for name in wanted:
        if name not in available:
            from unipetl.spaces.registry import did_you_mean

            raise UnipetlError(f"`--study`: no study {name!r} in {mask_url(url)}.{did_you_mean(name, available) if available else ' The storage has no studies.'}")
    rows: list[dict[str, Any]] = []
    attrs_by_study: dict[str, dict[str, Any]] = {}
    for name in wanted:
        study = optuna.load_study(study_name=name, storage=storage)
        attrs_by_study[name] = dict(study.user_attrs)
        rows += study_rows(study, mask_url(url))
    logger.info("loaded %d trials from %d studies in %s", len(rows), len(wanted), mask_url(url))
    return frame(rows), attrs_by_study


def study_rows(study: Any, source: str = "") -> list[dict[str, Any]]:
    """One table row per trial of an open Optuna study (what `load_studies` reads per study;
    `unipetl status` uses it too, so both see the same design points and frontier)."""
    name = study.study_name
    attrs = dict(study.user_attrs)
    rows: list[dict[str, Any]] = []
    for t in study.get_trials(deepcopy=False):
        state = t.state.name
        record = t.user_attrs.get("record")
        preset = t.user_attrs.get("preset")
        if isinstance(record, str):
            try:
                record = json.loads(record)
            except json.JSONDecodeError:
                record = None
        if isinstance(record, dict):
            row = record_row(record, study=name, source=source, trial=t.number, state=state, preset=preset, study_attrs=attrs)
            # a failed trial's record may be partial; the search set the counts on the trial before training
            for key in ("paper_fraction", "paper_params"):
                if row[key] is None:
                    row[key] = t.user_attrs.get(key)
            row["description"] = row["description"] or t.user_attrs.get("variant_description")
            if row["parent"] is None:
                row["parent"] = t.user_attrs.get("parent")
            if attrs.get("budget_params") and row["base_params"]:  # the budget on this trial's own backbone count (tiny models'
                row["budget_fraction"] = attrs["budget_params"] / row["base_params"]  # vocabularies follow the data)
        else:  # running / waiting / failed before a record existed
            row = record_row({}, study=name, source=source, trial=t.number, state=state, preset=preset, study_attrs=attrs)
            row["status"] = {"FAIL": "failed", "PRUNED": "pruned"}.get(state)
            row["error"] = t.user_attrs.get("error") or t.system_attrs.get("fail_reason")
            row["paper_fraction"] = t.user_attrs.get("paper_fraction")
            row["paper_params"] = t.user_attrs.get("paper_params")
            row["description"] = t.user_attrs.get("variant_description")
            row["parent"] = t.user_attrs.get("parent")
        if row["seed"] is None and isinstance(attrs.get("train"), dict):  # the seed it ran with (search.worker), so a retried seed is not counted as failed
            row["seed"] = int(attrs["train"].get("seed") or 0) + int(t.user_attrs.get("seed_index", 0))
        rows.append(row)
    return rows


# --- record files -----------------------------------------------------------------------------
def _records_in(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UnipetlError(f"`--records`: cannot read {str(path)!r}: {getattr(err, 'strerror', None) or err}.") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = []
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                data.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise UnipetlError(f"`--records`: {str(path)!r} line {i} is not JSON ({err.msg}).") from None
    records = data if isinstance(data, list) else [data]
    for r in records:
        if not isinstance(r, dict) or "status" not in r:
            raise UnipetlError(f"`--records`: {str(path)!r} holds something that is not a trial record (no 'status').")
    return records


def load_records(paths: list[str]) -> pl.DataFrame:
    """record.json files, JSONL / JSON-list files, or directories searched for record.json."""
    rows: list[dict[str, Any]] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            files = sorted(path.rglob("record.json"))
            if not files:
                raise UnipetlError(f"`--records`: directory {p!r} holds no record.json.")
        elif path.is_file():
            files = [path]
        else:
            raise UnipetlError(f"`--records`: {p!r} does not exist.")
        for f in files:
            for i, rec in enumerate(_records_in(f)):
                status = rec.get("status")
                state = {"ok": "COMPLETE", "failed": "FAIL", "pruned": "PRUNED"}.get(status, "COMPLETE")
                rows.append(record_row(rec, study=rec.get("study"), source=str(f), trial=rec.get("trial", i), state=state))
    return frame(rows)
