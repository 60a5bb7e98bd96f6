"""Task data through `datasets`: find the split files, check them, cap, tokenize, pad per batch.

Where data comes from, in order: an explicit file of a task file; the data directory
(`--data-dir`, else env `UNIPETL_DATA_DIR`) laid out as `<task dir>/<split>.<ext>` (JSONL, JSON,
CSV, TSV, Parquet); the hub dataset (`load_dataset("nyu-mll/glue", "sst2")` …) when a hub is
reachable. Offline with none of these: one UnipetlError that lists every path looked at.

Rows are checked before any training: every declared field present, no empty split, every
label inside the declared classes. Caps take a fixed-seed shuffled subset (data seed 0, not
the trial seed) so that all trials of a search see the same examples.

Text is text: a text field whose values look numeric ("1000", "007") stays the text written
(CSV cells are read as strings; a JSON / Parquet number becomes its decimal text); a missing,
null or empty text cell is an error that names the file, the row and the field. Labels are
matched as written: with `labels:` by name, else integers 0..n-1 or their decimal text ("1").
A text file that is not UTF-8 is refused with the offset of its first bad byte.

Tokenized splits are cached in-process (a search worker runs many trials on the same data),
keyed by everything that produced them: the whole task spec, each split file's path, size,
mtime and content digest, the caps, the length limit and the tokenizer's own content. On disk
the `datasets` caches are keyed by the file's content digest too (see `_load_file`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unipetl.evaluators.tasks import EXTENSIONS, Task
from unipetl.spaces.files import bad_utf8
from unipetl.spaces.registry import UnipetlError

log = logging.getLogger(__name__)

DATA_SEED = 0  # the subset chosen by --max-*-examples is the same for every trial
_CACHE: dict[tuple[Any, ...], Any] = {}
_CACHE_SIZE = 8
HASH_LIMIT = 256 << 20  # bytes; files up to this size are identified by a digest of their content
TEXT_FORMATS = ("jsonl", "json", "csv", "tsv")
_INT_TEXT = re.compile(r"[+-]?[0-9]+")


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


# --- identity: what a cached value was made from ------------------------------------------------


def task_fingerprint(task: Task) -> str:
    """A digest of the whole task spec: any field that changes (label field, text fields, label
    names, files, generation limits, …) gives another fingerprint."""
    spec = json.dumps(dataclasses.asdict(task), sort_keys=True, default=repr)
    return hashlib.sha256(spec.encode()).hexdigest()


def file_identity(path: Path) -> tuple[str, int, int, str]:
    """(resolved path, size, mtime_ns, content digest) of a data file.

    The digest (BLAKE2b of the bytes) catches an edit that keeps size and mtime (two writes
    within one timestamp tick); files over HASH_LIMIT are identified by size and mtime only."""
    st = path.stat()
    if st.st_size > HASH_LIMIT:
        return str(path.resolve()), st.st_size, st.st_mtime_ns, f"mtime:{st.st_mtime_ns}:ino:{st.st_ino}"
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return str(path.resolve()), st.st_size, st.st_mtime_ns, h.hexdigest()


def split_identity(task: Task, role: str, data_dir: str | None) -> tuple[Any, ...]:
    """What `load_split(task, role, data_dir)` would read: the file's identity, or the hub split."""
    path = find_split_file(task, role, resolve_data_dir(data_dir), [])
    if path is not None:
        return (role, *file_identity(path))
    if task.hub and role in task.hub_splits and not hub_offline():
        return (role, "hub", *task.hub, task.hub_splits[role])
    return (role, None)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A digest of a tokenizer's content (vocabulary, normalizer, templates, special tokens,
    truncation / padding sides), not of its name or object id: two tokenizers that split text
    the same way share it, a retrained or edited one does not."""
    h = hashlib.sha256(type(tokenizer).__qualname__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        for state in ("truncation", "padding"):  # set by the last call (`truncation=True, max_length=…`), not part of what it is
            spec.pop(state, None)
        h.update(json.dumps(spec).encode())  # to_str() writes in a fixed order (vocab by id)
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    settings = {k: getattr(tokenizer, k, None) for k in ("padding_side", "truncation_side", "model_max_length", "model_input_names")}
    settings["special"] = getattr(tokenizer, "special_tokens_map", None)
    h.update(json.dumps(settings, sort_keys=True, default=repr).encode())
    return h.hexdigest()


# --- reading one split file ------------------------------------------------------------------


def check_utf8(task: Task, role: str, path: Path) -> None:
    """A text data file must be UTF-8: else one line with the offset and line of the first bad byte."""
    offset, line, carry = 0, 1, b""
    with open(path, "rb") as fh:
        while True:
            chunk = fh.read(1 << 20)
            data = carry + chunk
            if not data:
                return
            try:
                data.decode("utf-8")
                carry = b""
            except UnicodeDecodeError as err:
                if chunk and err.reason == "unexpected end of data" and len(data) - err.start < 4:
                    carry = data[err.start:]  # a character cut by the chunk boundary
                    data = data[:err.start]
                else:
                    raise UnipetlError(f"task {task.name!r}: {role} data {str(path)!r} is not UTF-8: {bad_utf8(data, err, offset=offset, line=line)}; "
                                       f"re-save it as UTF-8 (e.g. iconv -f latin1 -t utf-8).") from None
            offset += len(data)
            line += data.count(b"\n")


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """No `datasets` progress bars off a terminal, and none of its log lines while a file is read:
    a file it cannot read becomes one UnipetlError here, not a log line plus an error."""
    import datasets

    bars = datasets.is_progress_bar_enabled()
    if bars and not sys.stderr.isatty():
        datasets.disable_progress_bars()
    lib = logging.getLogger("datasets")
    level = lib.level
    lib.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        lib.setLevel(level)
        if bars and not datasets.is_progress_bar_enabled():
            datasets.enable_progress_bars()


def _root_cause(err: BaseException) -> BaseException:
    """`datasets` wraps the reader's error (UnicodeDecodeError, ParserError, …) in DatasetGenerationError."""
    seen = {id(err)}
    while (inner := err.__cause__ or err.__context__) is not None and id(inner) not in seen:
        seen.add(id(inner))
        err = inner
    return err


def _csv_header(path: Path, delimiter: str) -> list[str]:
    import csv

    with open(path, encoding="utf-8-sig", newline="") as fh:
        return next(csv.reader(fh, delimiter=delimiter), [])


def _load_file(task: Task, role: str, path: Path) -> Any:
    """One split file through `datasets`. CSV / TSV cells are read as the strings written (no
    "NA" → null, no "007" → 7); the builder's cache is named after the file's content digest, so
    an edited file is read again even when its mtime did not move."""
    import datasets

    if path.stat().st_size < 4096 and not path.read_bytes().strip():
        raise UnipetlError(f"task {task.name!r}: the {role} split {str(path)!r} is empty.")  # datasets cannot even infer a schema
    ext = path.suffix.lstrip(".")
    builder = {"jsonl": "json", "json": "json", "csv": "csv", "tsv": "csv", "parquet": "parquet"}.get(ext, "json")
    if ext in TEXT_FORMATS:
        check_utf8(task, role, path)
    kwargs: dict[str, Any] = {}
    if builder == "csv":
        delimiter = "\t" if ext == "tsv" else ","
        columns = _csv_header(path, delimiter)
        # every cell as the text written ("NA", "null", "007" stay text); only an empty cell is null; never the first column as an index
        kwargs = {"delimiter": delimiter, "converters": dict.fromkeys(range(len(columns)), str), "keep_default_na": False, "na_values": [""],
                  "index_col": False}
    digest = file_identity(path)[3]
    try:
        with _quiet_datasets():
            return datasets.load_dataset(builder, name=f"unipetl-{digest[:32].replace(':', '-')}", data_files={"data": str(path)}, split="data", **kwargs)
    except Exception as err:  # noqa: BLE001 - malformed file: name it, with the reader's own reason
        cause = _root_cause(err)
        if "corresponds to no data" in str(cause):
            raise UnipetlError(f"task {task.name!r}: the {role} split {str(path)!r} has no rows.") from None
        reason = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
        raise UnipetlError(f"task {task.name!r}: cannot read {role} data {str(path)!r}: {type(cause).__name__}: {reason}") from None


def _as_text(value: Any) -> str | None:
    """A text cell as text: strings as written, numbers as their decimal text, null stays null."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return None if math.isnan(value) else repr(value)
    raise TypeError(type(value).__name__)


def text_columns(task: Task, role: str, ds: Any, source: str) -> Any:
    """Text and target columns typed as strings: a column that `datasets` read as numbers (JSON
    numbers, Parquet ints) or as mixed JSON becomes the values' text; a list / object is an error."""
    import datasets

    changed = {}
    for f in task.text_fields + ((task.target_field,) if task.target_field else ()):
        feature = ds.features.get(f)
        if feature is None or isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
            continue
        values = column(ds, f)
        out: list[str | None] = []
        for i, v in enumerate(values):
            try:
                out.append(_as_text(v))
            except TypeError:
                raise UnipetlError(f"task {task.name!r}: {role} data {source!r} row {i}: field {f!r} holds {type(v).__name__} {str(v)[:40]!r}, not text.") from None
        changed[f] = out
    for f, out in changed.items():
        ds = ds.remove_columns(f).add_column(f, out, feature=datasets.Value("string"))
    return ds


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
    ds = text_columns(task, role, _flatten_translation(ds, task), source)
    check_split(task, role, ds, source)
    return ds, source


def column(ds: Any, name: str) -> list[Any]:
    """One column of a Dataset as a Python list. A plain value or class-label column is read
    through Arrow in one call (honours a `select` / `shuffle`; `ds[name]` iterates row by row in
    datasets ≥ 4, ~10× slower); any other feature (e.g. `Json`, stored encoded) goes through
    `ds[name]`, which decodes it."""
    import datasets

    if not isinstance(ds.features.get(name), (datasets.Value, datasets.ClassLabel)):
        return list(ds[name])
    return ds.with_format("arrow")[:][name].to_pylist()


def token_lengths(ds: Any, name: str = "input_ids") -> list[int]:
    """Length of every row's token list in column `name` (Arrow's list lengths, one call)."""
    import pyarrow.compute as pc

    return pc.list_value_length(ds.with_format("arrow")[:][name]).to_pylist()


def check_split(task: Task, role: str, ds: Any, source: str) -> None:
    """Declared fields present, split not empty, text present in every row, labels inside the declared classes."""
    if len(ds) == 0:
        raise UnipetlError(f"task {task.name!r}: the {role} split {source!r} is empty.")
    for f in task.fields:
        if f not in ds.column_names:
            raise UnipetlError(f"task {task.name!r}: {role} data {source!r} has no field {f!r} (fields: {', '.join(ds.column_names)}).")
    for f in task.text_fields + ((task.target_field,) if task.target_field else ()):
        null, empty = _missing_text(ds, f)
        if null is not None:
            what = "an empty CSV cell" if source.endswith((".csv", ".tsv")) else "null"
            raise UnipetlError(f"task {task.name!r}: {role} data {source!r} row {null}: field {f!r} is missing ({what}); every row needs text in {f!r}.")
        if empty:
            log.warning("task %s: %s data %s: %d row(s) with empty text in %r (first: row %d); kept as written", task.name, role, source, len(empty), f, empty[0])
    if task.kind != "seq2seq":
        labels = column(ds, task.label_field)
        if None in labels:
            raise UnipetlError(f"task {task.name!r}: {role} data {source!r} row {labels.index(None)}: the label field {task.label_field!r} is missing (null).")
    if task.kind == "classification":
        for i, y in enumerate(labels):
            if label_index(task, y) is None:
                shown = list(task.label_names) or f"0..{task.num_labels - 1}"
                hint = "; declare string labels with `labels: [...]` in the task file" if isinstance(y, str) and not task.label_names else ""
                raise UnipetlError(f"task {task.name!r}: {role} data {source!r} row {i}: label {y!r} is outside the declared classes {shown}{hint}.")
    elif task.kind == "regression":
        for i, y in enumerate(labels):
            if _number(y) is None:
                raise UnipetlError(f"task {task.name!r}: {role} data {source!r} row {i}: label {y!r} is not a number.")


def _missing_text(ds: Any, field: str) -> tuple[int | None, list[int]]:
    """(first row whose `field` is null, rows whose text is empty or white space).

    Null is missing text (a JSON null or absent key, a Parquet null, an empty CSV cell: CSV has
    no other way to write "no value"); an empty JSON string is the empty text and is kept (the
    shared WMT16 train set has one such pair, kept as in its source)."""
    import pyarrow.compute as pc

    col = ds.with_format("arrow")[:][field]
    first_null = pc.index(pc.is_null(col), True).as_py()
    blank = pc.fill_null(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(col)), 0), False)
    empty = pc.indices_nonzero(blank).to_pylist() if pc.any(blank).as_py() else []
    return (None if first_null < 0 else int(first_null)), empty


def _int_text(y: str) -> int | None:
    t = y.strip()
    return int(t) if _INT_TEXT.fullmatch(t) else None


def label_index(task: Task, y: Any) -> int | None:
    """The class id of a data label as the user wrote it, or None when it is no declared class.

    With `labels:` a label is looked up by its text among the names (a JSON 1 is the name "1");
    integers 0..n-1, or their decimal text ("1"), are class ids when no name looks like a number."""
    if y is None or isinstance(y, bool):
        return None
    if task.label_names:
        text = y if isinstance(y, str) else str(y) if isinstance(y, int) else None
        if text is not None and text in task.label_names:
            return task.label_names.index(text)
        if any(_int_text(n) is not None for n in task.label_names):
            return None  # numeric names: a number is only ever a name
    if isinstance(y, float) and y.is_integer():
        y = int(y)
    elif isinstance(y, str):
        y = _int_text(y)
    return y if isinstance(y, int) and 0 <= y < task.num_labels else None


def _number(y: Any) -> float | None:
    """A regression label: a finite number, or the text of one ("3.5" from a CSV cell)."""
    if isinstance(y, bool) or y is None:
        return None
    try:
        v = float(y.strip()) if isinstance(y, str) else float(y) if isinstance(y, (int, float)) else None
    except ValueError:
        return None
    return v if v is not None and math.isfinite(v) else None


def cap(ds: Any, n: int | None) -> Any:
    if n is None or n >= len(ds):
        return ds
    if n <= 0:
        raise UnipetlError(f"`max_examples` should be a positive integer, got {n!r}.")
    return ds.shuffle(seed=DATA_SEED).select(range(n))


def _label_id(task: Task, y: Any) -> Any:
    """The training target of a label that `check_split` accepted."""
    return _number(y) if task.kind == "regression" else label_index(task, y)


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
    identity: str = ""  # digest of everything the splits were made from (prepare's cache key); "" when unknown


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
    """Load, check, cap and tokenize every split of a task.

    Cached in-process under the full identity of the inputs: the whole task spec, every split's
    file (path, size, mtime, content digest) or hub split, the caps, the length limit and the
    tokenizer's content (`model_key` is kept in the key as well)."""
    roles = ("train", "eval", *task.extra_eval)
    key = (task_fingerprint(task), tuple(split_identity(task, r, data_dir) for r in roles), max_train, max_eval, max_length,
           tokenizer_fingerprint(tokenizer), model_key)
    if key in _CACHE:
        return _CACHE[key]
    splits, sources = raw_splits(task, data_dir, max_train, max_eval)
    train = tokenize(task, splits["train"], tokenizer, max_length)
    evals = {name: tokenize(task, ds, tokenizer, max_length) for name, ds in splits.items() if name != "train"}
    data = TaskData(train=train, eval=evals, sources=sources, identity=hashlib.blake2b(repr(key).encode(), digest_size=16).hexdigest())
    if len(_CACHE) >= _CACHE_SIZE:
        _CACHE.pop(next(iter(_CACHE)))
    _CACHE[key] = data
    return data


def training_text(task: Task, data_dir: str | None, max_train: int | None) -> list[str]:
    """Raw text of the (capped) training split: every text field and the target."""
    ds, _ = load_split(task, "train", data_dir)
    ds = cap(ds, max_train)
    out: list[str] = []
    for f in task.text_fields + ((task.target_field,) if task.target_field else ()):
        out += [str(x) for x in column(ds, f) if x is not None]
    return out
