"""Task data through `datasets`: find the split files, check them, cap, tokenize, pad per batch.

Where data comes from, in order: an explicit file of a task file; the data directory
(`--data-dir`, else env `UNIPETL_DATA_DIR`) laid out as `<task dir>/<split>.<ext>` (JSONL, JSON,
CSV, TSV, Parquet); the hub dataset (`load_dataset("nyu-mll/glue", "sst2")` …) when a hub is
reachable. Offline with none of these: one UnipetlError that lists every path looked at.

Rows are checked before any training: every declared field present, no empty split, every
label inside the declared classes. Caps take a fixed-seed shuffled subset (data seed 0, not
the trial seed) so that all trials of a search see the same examples. Tokenized splits are
cached in-process (a search worker runs many trials on the same data) and on disk by the
`datasets` map cache.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unipetl.evaluators.tasks import EXTENSIONS, Task
from unipetl.spaces.registry import UnipetlError

log = logging.getLogger(__name__)

DATA_SEED = 0  # the subset chosen by --max-*-examples is the same for every trial
_CACHE: dict[tuple[Any, ...], Any] = {}


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes") or os.environ.get("HF_DATASETS_OFFLINE", "0").lower() in ("1", "true", "yes")


def resolve_data_dir(data_dir: str | None) -> Path | None:
    chosen = data_dir or os.environ.get("UNIPETL_DATA_DIR")
    if not chosen:
        return None
    p = Path(chosen).expanduser()
    if not p.is_dir():
        raise UnipetlError(f"`data_dir` {str(p)!r} is not a directory.")
    return p


def find_split_file(task: Task, role: str, data_dir: Path | None, looked: list[str]) -> Path | None:
    """The first existing `<dir>/<stem>.<ext>` for a split role (or an extra eval split name)."""
    if role in task.data_files:
        p = Path(task.data_files[role])
        looked.append(str(p))
        return p if p.is_file() else None
    if data_dir is None:
        return None
    stems = task.files.get(role) or task.extra_eval.get(role, ())
    for d in task.dirs:
        for stem in stems:
            for ext in EXTENSIONS:
                p = data_dir / d / f"{stem}.{ext}"
                looked.append(str(p))
                if p.is_file():
                    return p
    return None


def _load_file(task: Task, role: str, path: Path) -> Any:
    import datasets

    if path.stat().st_size < 4096 and not path.read_bytes().strip():
        raise UnipetlError(f"task {task.name!r}: the {role} split {str(path)!r} is empty.")  # datasets cannot even infer a schema
    ext = path.suffix.lstrip(".")
    builder = {"jsonl": "json", "json": "json", "csv": "csv", "tsv": "csv", "parquet": "parquet"}.get(ext, "json")
    kwargs = {"delimiter": "\t"} if ext == "tsv" else {}
    try:
        return datasets.load_dataset(builder, data_files={"data": str(path)}, split="data", **kwargs)
    except Exception as err:  # noqa: BLE001 - malformed file: name it
        raise UnipetlError(f"task {task.name!r}: cannot read {role} data {str(path)!r}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from None


def _flatten_translation(ds: Any, task: Task) -> Any:
    """Hub WMT16 rows are {"translation": {"en": …, "ro": …}}; the task reads flat fields."""
    if "translation" in ds.column_names and not set(task.fields) <= set(ds.column_names):
        return ds.map(lambda row: dict(row["translation"]), remove_columns=["translation"])
    return ds


def load_split(task: Task, role: str, data_dir: str | None = None) -> tuple[Any, str]:
    """(Dataset, where it came from) of one split role: "train", "eval" or an extra eval name."""
    looked: list[str] = []
    d = resolve_data_dir(data_dir)
    path = find_split_file(task, role, d, looked)
    if path is not None:
        ds, source = _load_file(task, role, path), str(path)
    elif task.hub and not hub_offline() and role in task.hub_splits:
        import datasets

        source = f"hub:{task.hub[0]}/{task.hub[1] or ''}:{task.hub_splits[role]}"
        try:
            ds = datasets.load_dataset(task.hub[0], task.hub[1], split=task.hub_splits[role])
        except Exception as err:  # noqa: BLE001 - no hub / no such dataset: say where we looked
            where = ", ".join(looked[:6]) if looked else "no data directory given"
            raise UnipetlError(f"task {task.name!r}: no local {role} data (looked in: {where}) and the hub dataset {source} failed: "
                               f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}; set --data-dir or UNIPETL_DATA_DIR.") from None
    else:
        where = ", ".join(looked[:6]) + (f" and {len(looked) - 6} more" if len(looked) > 6 else "") if looked else "no data directory given"
        hub = f"; hub dataset {task.hub[0]} not tried (HF_HUB_OFFLINE)" if task.hub and hub_offline() else ""
        raise UnipetlError(f"task {task.name!r}: no {role} data found (looked in: {where}{hub}); set --data-dir or UNIPETL_DATA_DIR.")
    ds = _flatten_translation(ds, task)
    check_split(task, role, ds, source)
    return ds, source


def check_split(task: Task, role: str, ds: Any, source: str) -> None:
    """Declared fields present, split not empty, labels inside the declared classes."""
    if len(ds) == 0:
        raise UnipetlError(f"task {task.name!r}: the {role} split {source!r} is empty.")
    for f in task.fields:
        if f not in ds.column_names:
            raise UnipetlError(f"task {task.name!r}: {role} data {source!r} has no field {f!r} (fields: {', '.join(ds.column_names)}).")
    if task.kind == "classification":
        labels = ds[task.label_field]
        allowed = set(range(task.num_labels)) | set(task.label_names)
        for i, y in enumerate(labels):
            if isinstance(y, bool) or y not in allowed:
                shown = list(task.label_names) or f"0..{task.num_labels - 1}"
                raise UnipetlError(f"task {task.name!r}: {role} data {source!r} row {i}: label {y!r} is outside the declared classes {shown}.")
    elif task.kind == "regression":
        for i, y in enumerate(ds[task.label_field]):
            if isinstance(y, bool) or not isinstance(y, (int, float)) or y != y:
                raise UnipetlError(f"task {task.name!r}: {role} data {source!r} row {i}: label {y!r} is not a number.")


def cap(ds: Any, n: int | None) -> Any:
    if n is None or n >= len(ds):
        return ds
    if n <= 0:
        raise UnipetlError(f"`max_examples` should be a positive integer, got {n!r}.")
    return ds.shuffle(seed=DATA_SEED).select(range(n))


def _label_id(task: Task, y: Any) -> Any:
    if task.kind == "regression":
        return float(y)
    if isinstance(y, str):
        return task.label_names.index(y)
    return int(y)


def tokenize(task: Task, ds: Any, tokenizer: Any, max_length: int | None) -> Any:
    """Token ids (+ labels); dynamic padding happens later, per batch, in the collator."""
    src = task.text_fields
    if task.kind == "seq2seq":
        gen = task.generation
        assert gen is not None
        src_len = max_length or gen.max_source_length

        def fn(batch: dict[str, list[Any]]) -> dict[str, Any]:
            enc = tokenizer(batch[src[0]], truncation=True, max_length=src_len)
            enc["labels"] = tokenizer(text_target=batch[task.target_field], truncation=True, max_length=gen.max_target_length)["input_ids"]
            return enc
    else:
        length = max_length or task.max_length

        def fn(batch: dict[str, list[Any]]) -> dict[str, Any]:
            enc = tokenizer(*[batch[f] for f in src], truncation=True, max_length=length)
            enc["labels"] = [_label_id(task, y) for y in batch[task.label_field]]
            return enc

    keep = [task.target_field] if task.kind == "seq2seq" else []
    return ds.map(fn, batched=True, remove_columns=[c for c in ds.column_names if c not in keep], desc=f"tokenize {task.name}")


@dataclass
class TaskData:
    train: Any  # tokenized Dataset
    eval: dict[str, Any]  # "eval" and extra eval names → tokenized Dataset (seq2seq keeps the reference text column)
    sources: dict[str, str]


def raw_splits(task: Task, data_dir: str | None, max_train: int | None, max_eval: int | None) -> tuple[dict[str, Any], dict[str, str]]:
    """The capped raw splits: "train", "eval" and any extra eval split that exists."""
    splits: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for role in ("train", "eval"):
        ds, sources[role] = load_split(task, role, data_dir)
        splits[role] = cap(ds, max_train if role == "train" else max_eval)
    for extra in task.extra_eval:
        try:
            ds, sources[extra] = load_split(task, extra, data_dir)
        except UnipetlError as err:
            if "no " + extra not in str(err):
                raise
            log.info("task %s: no %s split here; skipped", task.name, extra)
            continue
        splits[extra] = cap(ds, max_eval)
    if task.note and "test" in str(sources.get("train", "")):
        log.warning("task %s: %s", task.name, task.note)
    return splits, sources


def prepare(task: Task, tokenizer: Any, *, data_dir: str | None, max_train: int | None, max_eval: int | None, max_length: int | None,
            model_key: str) -> TaskData:
    """Load, check, cap and tokenize every split of a task (cached in-process per model/tokenizer)."""
    key = (task.name, tuple(sorted(task.data_files.items())), str(resolve_data_dir(data_dir)), max_train, max_eval, max_length, model_key)
    if key in _CACHE:
        return _CACHE[key]
    splits, sources = raw_splits(task, data_dir, max_train, max_eval)
    train = tokenize(task, splits["train"], tokenizer, max_length)
    evals = {name: tokenize(task, ds, tokenizer, max_length) for name, ds in splits.items() if name != "train"}
    data = TaskData(train=train, eval=evals, sources=sources)
    if len(_CACHE) > 8:
        _CACHE.pop(next(iter(_CACHE)))
    _CACHE[key] = data
    return data


def training_text(task: Task, data_dir: str | None, max_train: int | None) -> list[str]:
    """Raw text of the (capped) training split: every text field and the target."""
    ds, _ = load_split(task, "train", data_dir)
    ds = cap(ds, max_train)
    out: list[str] = []
    for f in task.text_fields + ((task.target_field,) if task.target_field else ()):
        out += [str(x) for x in ds[f] if x is not None]
    return out
