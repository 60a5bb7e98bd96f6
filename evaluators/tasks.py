"""Tasks: what a trial trains on and how it is scored, declared once per task.

A `Task` states its kind (classification / regression / seq2seq), the data fields, where its
splits live (local files under a data directory, and the hub dataset id for users with a hub),
its metrics, the main metric and direction, and for generation the decoding set-up of the paper
(beam 6 for XSum, beam 5 for en-ro). Built-in GLUE / XSum / WMT16 tasks sit in
the `TASKS` registry; a *generic local task* comes from a small YAML or JSON file so users can
bring their own data without writing code (`load_task_file`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from unipetl.evaluators.metrics import METRICS
from unipetl.spaces.files import read_text_file
from unipetl.spaces.registry import Registry, UnipetlError, did_you_mean

log = logging.getLogger(__name__)

TaskKind = Literal["classification", "regression", "seq2seq"]
SplitRole = Literal["train", "eval"]
EXTENSIONS = ("jsonl", "json", "csv", "tsv", "parquet")


@dataclass(frozen=True, slots=True, kw_only=True)
class Generation:
    """Decoding for seq2seq evaluation (and the length limits used when tokenizing)."""

    num_beams: int = 4
    max_source_length: int = 512
    max_target_length: int = 128  # tokens of the reference kept for training
    max_new_tokens: int = 128  # generation limit at evaluation
    min_new_tokens: int = 0
    no_repeat_ngram_size: int = 0
    length_penalty: float = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Task:
    name: str
    kind: TaskKind
    text_fields: tuple[str, ...]  # 1 (single sentence / source) or 2 (sentence pair)
    label_field: str | None = None  # classification / regression
    target_field: str | None = None  # seq2seq
    num_labels: int = 2  # classification; 1 for regression
    label_names: tuple[str, ...] = ()  # string labels in the data map to their index here
    metrics: tuple[str, ...] = ("accuracy",)
    main_metric: str = "accuracy"
    # local layout under the data dir: candidate directories and file stems per split role
    dirs: tuple[str, ...] = ()
    files: dict[str, tuple[str, ...]] = field(default_factory=dict)  # role → file stems, first found wins
    extra_eval: dict[str, tuple[str, ...]] = field(default_factory=dict)  # name → stems (e.g. mnli mismatched)
    data_files: dict[str, str] = field(default_factory=dict)  # generic tasks: role → explicit path
    hub: tuple[str, str | None] | None = None  # load_dataset(path, name)
    hub_splits: dict[str, str] = field(default_factory=dict)  # role / extra name → hub split
    generation: Generation | None = None
    # seq2seq: (source, target) language, e.g. ("en", "ro"); a multilingual model with language codes (mBART) is told them
    # (evaluators.models.set_languages), any other model ignores them
    languages: tuple[str, str] | None = None
    max_length: int = 128  # input tokens for classification / regression
    note: str = ""  # caveats shown in logs and the record (e.g. XSum: only test documents here)

    def __post_init__(self) -> None:
        where = f"task {self.name!r}"
        if self.kind not in ("classification", "regression", "seq2seq"):
            raise UnipetlError(f"{where}: `kind` must be classification, regression or seq2seq, got {self.kind!r}.")
        if not self.text_fields or len(self.text_fields) > 2 or not all(isinstance(f, str) and f for f in self.text_fields):
            raise UnipetlError(f"{where}: `text_fields` must name 1 or 2 fields, got {list(self.text_fields)!r}.")
        if self.kind == "seq2seq":
            if not self.target_field:
                raise UnipetlError(f"{where}: a seq2seq task needs `target_field`.")
            if len(self.text_fields) != 1:
                raise UnipetlError(f"{where}: a seq2seq task has one source field, got {list(self.text_fields)}.")
            object.__setattr__(self, "generation", self.generation or Generation())
            langs = self.languages
            if langs is not None:
                if not isinstance(langs, list | tuple) or len(langs) != 2 or not all(isinstance(x, str) and x.strip() for x in langs):
                    raise UnipetlError(f"{where}: `languages` must be [source, target] language names (e.g. [en, ro]), got {langs!r}.")
                object.__setattr__(self, "languages", tuple(langs))
        elif self.languages is not None:
            raise UnipetlError(f"{where}: `languages` is for seq2seq tasks (a {self.kind} task has no target language), got {self.languages!r}.")
        elif not self.label_field:
            raise UnipetlError(f"{where}: a {self.kind} task needs `label_field`.")
        if self.kind == "regression":
            object.__setattr__(self, "num_labels", 1)
        if self.label_names:
            object.__setattr__(self, "num_labels", len(self.label_names))
        if self.kind == "classification" and (isinstance(self.num_labels, bool) or not isinstance(self.num_labels, int) or self.num_labels < 2):
            raise UnipetlError(f"{where}: `num_labels` must be an integer >= 2, got {self.num_labels!r}.")
        keys: list[str] = []
        for m in self.metrics:
            spec = METRICS.get(m)  # unknown metric → did-you-mean
            if spec.kind == "text" and self.kind != "seq2seq" or spec.kind != "text" and self.kind == "seq2seq":
                raise UnipetlError(f"{where}: metric {m!r} does not fit a {self.kind} task.")
            if spec.kind == "label" and self.kind == "regression":
                raise UnipetlError(f"{where}: metric {m!r} needs class labels; a regression task uses pearsonr / spearmanr.")
            keys += spec.keys
        if self.main_metric not in keys:
            raise UnipetlError(f"{where}: `main_metric` {self.main_metric!r} is not produced by its metrics.{did_you_mean(self.main_metric, keys)}")

    @property
    def higher_is_better(self) -> bool:
        for m in self.metrics:
            spec = METRICS.get(m)
            if self.main_metric in spec.keys:
                return spec.higher_is_better
        raise AssertionError(self.main_metric)  # checked in __post_init__

    @property
    def fields(self) -> tuple[str, ...]:
        """Every field a data row must have."""
        return self.text_fields + tuple(f for f in (self.label_field, self.target_field) if f)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


TASKS: Registry[Task] = Registry("task")

_GLUE_SPLITS = {"train": ("train", "train_subset"), "eval": ("dev", "validation", "dev_matched")}


def _glue(name: str, fields: tuple[str, ...], *, metrics: tuple[str, ...] = ("accuracy",), main: str = "accuracy", num_labels: int = 2,
          kind: TaskKind = "classification", files: dict[str, tuple[str, ...]] | None = None, aliases: tuple[str, ...] = (), note: str = "",
          extra_eval: dict[str, tuple[str, ...]] | None = None, hub_splits: dict[str, str] | None = None) -> None:
    TASKS.register(
        name,
        Task(
            name=name, kind=kind, text_fields=fields, label_field="label", num_labels=num_labels, metrics=metrics, main_metric=main,
            dirs=(name, f"glue/{name}"), files=files or _GLUE_SPLITS, extra_eval=extra_eval or {}, hub=("nyu-mll/glue", name),
            hub_splits=hub_splits or {"train": "train", "eval": "validation"}, note=note,
        ),
        aliases=aliases,
    )


_glue("sst2", ("sentence",), aliases=("sst-2",))
_glue(
    "mnli", ("premise", "hypothesis"), num_labels=3, aliases=("mnli-m", "multinli"),
    files={"train": ("train", "train_subset"), "eval": ("dev_matched", "validation_matched")},
    extra_eval={"mismatched": ("dev_mismatched", "validation_mismatched", "dev_mismatched_1k_sample")},
    hub_splits={"train": "train", "eval": "validation_matched", "mismatched": "validation_mismatched"},
    note="mismatched dev is evaluated where it exists (the shared data has only a 1k sample of it)",
)
_glue("cola", ("sentence",), metrics=("matthews_correlation", "accuracy"), main="matthews_correlation")
_glue("mrpc", ("sentence1", "sentence2"), metrics=("f1", "accuracy"), main="f1")
_glue("rte", ("sentence1", "sentence2"))
_glue("qnli", ("question", "sentence"))
_glue("qqp", ("question1", "question2"), metrics=("f1", "accuracy"), main="f1",
      files={"train": ("train", "train_subset"), "eval": ("dev", "validation", "dev_1k_sample")})
_glue("stsb", ("sentence1", "sentence2"), kind="regression", metrics=("pearsonr", "spearmanr"), main="pearsonr", aliases=("sts-b",))
_glue("wnli", ("sentence1", "sentence2"))

# XSum (BART set-up of the paper: beam 6, no-repeat trigram, summaries of 10..60 tokens)
TASKS.register(
    "xsum",
    Task(
        name="xsum", kind="seq2seq", text_fields=("document",), target_field="summary", metrics=("rouge",), main_metric="rouge2",
        dirs=("xsum",), files={"train": ("train", "test"), "eval": ("validation", "test_extra")},
        hub=("EdinburghNLP/xsum", None), hub_splits={"train": "train", "eval": "validation"},
        generation=Generation(num_beams=6, max_source_length=512, max_target_length=64, max_new_tokens=60, min_new_tokens=10, no_repeat_ngram_size=3),
        note="without train / validation files the local XSum uses official-test documents: test.jsonl (1,000) to train, test_extra.jsonl (287) to evaluate",
    ),
)
# WMT16 en→ro (mBART set-up of the paper: beam 5, 150-token limits)
TASKS.register(
    "wmt16-en-ro",
    Task(
        name="wmt16-en-ro", kind="seq2seq", text_fields=("en",), target_field="ro", metrics=("sacrebleu",), main_metric="bleu",
        dirs=("wmt16_en_ro", "wmt16-en-ro"), files={"train": ("train",), "eval": ("validation", "dev")},
        hub=("wmt/wmt16", "ro-en"), hub_splits={"train": "train", "eval": "validation"},
        generation=Generation(num_beams=5, max_source_length=150, max_target_length=150, max_new_tokens=150), languages=("en", "ro"),
        note="evaluated on newsdev2016 (validation); the local train split is the first 10k Europarl pairs",
    ),
    aliases=("wmt16", "en-ro", "wmt16_en_ro"),
)


_TASK_FILE_KEYS = ("name", "kind", "data_files", "text_fields", "label_field", "target_field", "labels", "num_labels", "metrics", "main_metric", "generation",
                   "max_length", "languages")
# keys whose values are names the user wrote: YAML keeps them as that text (`labels: [no, yes]` stays ['no', 'yes'], not booleans)
_TASK_TEXT_KEYS = ("name", "kind", "data_files", "text_fields", "label_field", "target_field", "labels", "metrics", "main_metric", "languages")

# --- reading the files users write (task files here; study files in unipetl.search.study) ----------
# (the bytes → text step, shared with variant files, is unipetl.spaces.files)


def load_yaml(text: str, what: str, path: str | Path, *, text_keys: Collection[str] = ()) -> Any:
    """Safe-load YAML (python tags are refused, never run); one UnipetlError naming the file on bad YAML.

    Plain scalars under `text_keys` (dotted paths such as "labels" or "space.presets") are kept
    as the text the user wrote: YAML 1.1 would turn `no` / `yes` / `on` into booleans, `1.10`
    into 1.1 and `2024-01-01` into a date, and names must stay names."""
    import yaml

    where = f"{what} {str(path)!r}"
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _keep_text(node, frozenset(text_keys), "")
        return loader.construct_document(node)
    except yaml.YAMLError as err:
        raise UnipetlError(f"{where} is not valid YAML: {str(err).splitlines()[0]}.") from None
    except RecursionError:
        raise UnipetlError(f"{where} is nested too deeply to be a {what}.") from None
    finally:
        loader.dispose()


_YAML = "tag:yaml.org,2002:"
_TYPED_SCALARS = frozenset(_YAML + t for t in ("bool", "int", "float", "timestamp"))


def _keep_text(node: Any, keys: frozenset[str], prefix: str) -> None:
    import yaml

    if not isinstance(node, yaml.MappingNode):
        return
    for k, v in node.value:
        if not isinstance(k, yaml.ScalarNode):
            continue
        path = prefix + str(k.value)
        if path in keys:
            _as_text(v)
        elif any(key.startswith(path + ".") for key in keys):
            _keep_text(v, keys, path + ".")


def _as_text(node: Any) -> None:
    import yaml

    if isinstance(node, yaml.ScalarNode):
        if node.tag in _TYPED_SCALARS:  # the constructor then builds a str from the scalar's own text
            node.tag = _YAML + "str"
    elif isinstance(node, yaml.SequenceNode):
        for child in node.value:
            _as_text(child)
    elif isinstance(node, yaml.MappingNode):
        for _, child in node.value:
            _as_text(child)


# --- task files ------------------------------------------------------------------------------


def _name(value: Any, key: str, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
        raise UnipetlError(f"{where}: `{key}` must be a name (text), got {value!r}.")
    return str(value)


def _names(value: Any, key: str, where: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, (str, int)) and not isinstance(value, bool) else value
    if not isinstance(items, list):
        raise UnipetlError(f"{where}: `{key}` must be a name or a list of names, got {value!r}.")
    return tuple(_name(v, f"{key}[{i}]", where) for i, v in enumerate(items))


def _positive_int(value: Any, key: str, where: str, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UnipetlError(f"{where}: `{key}` should be an integer >= {minimum}, got {value!r}.")
    return value


def _label_names(value: Any, where: str) -> tuple[str, ...]:
    """`labels:` as the user wrote them (YAML keeps them as text; a JSON number is its decimal text)."""
    if not isinstance(value, list):
        raise UnipetlError(f"{where}: `labels` must be a list of label names, got {value!r}.")
    names: list[str] = []
    for i, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, (str, int, float)) or isinstance(v, str) and not v.strip():
            raise UnipetlError(f"{where}: `labels[{i}]` must be a label name (text), got {v!r}; write it in quotes.")
        if str(v) in names:
            raise UnipetlError(f"{where}: `labels` lists {str(v)!r} twice.")
        names.append(str(v))
    return tuple(names)


def _generation(value: Any, where: str) -> Generation | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise UnipetlError(f"{where}: `generation` must be a mapping, got {value!r}.")
    known = [f.name for f in dataclasses.fields(Generation)]
    for key, v in value.items():
        if key not in known:
            raise UnipetlError(f"{where}: Unknown key {key!r} in generation.{did_you_mean(str(key), known)}")
        if key == "length_penalty":
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise UnipetlError(f"{where}: `generation.length_penalty` should be a number, got {v!r}.")
        else:
            _positive_int(v, f"generation.{key}", where, minimum=0 if key in ("min_new_tokens", "no_repeat_ngram_size") else 1)
    return Generation(**value)


def load_task_file(path: str | Path) -> Task:
    """A generic local task from YAML / JSON: data files (relative to the file), fields, metric.

    Example (YAML):  name: reviews / kind: classification / data_files: {train: train.csv, eval: dev.csv}
    / text_fields: [text] / label_field: stars / labels: [bad, good] / metrics: [accuracy, f1]

    Names (fields, labels, metrics, files) are read as the text written: `labels: [no, yes]` are
    the strings 'no' and 'yes'. Every bad value is one UnipetlError naming the file and the key.
    """
    p = Path(path)
    where = f"task file {str(p)!r}"
    text = read_text_file(p, "task file")
    if p.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise UnipetlError(f"{where} is malformed JSON: {err.msg} at line {err.lineno} column {err.colno}.") from None
        except RecursionError:
            raise UnipetlError(f"{where} is nested too deeply to be a task file.") from None
    else:
        data = load_yaml(text, "task file", p, text_keys=_TASK_TEXT_KEYS)
    if not isinstance(data, dict):
        raise UnipetlError(f"{where} must hold a mapping, got {type(data).__name__}.")
    for key in data:
        if key not in _TASK_FILE_KEYS:
            raise UnipetlError(f"Unknown key {key!r} in {where}.{did_you_mean(str(key), _TASK_FILE_KEYS)}")
    files = data.get("data_files")
    if not isinstance(files, dict) or "train" not in files or "eval" not in files:
        raise UnipetlError(f"{where}: `data_files` must map train and eval to files, got {files!r}.")
    for role, f in files.items():
        if not isinstance(f, str) or not f.strip():
            raise UnipetlError(f"{where}: `data_files.{role}` must be a file path, got {f!r}.")
    kind = _name(data.get("kind", "classification"), "kind", where)
    default_metrics = {"classification": ["accuracy"], "regression": ["pearsonr", "spearmanr"], "seq2seq": ["rouge"]}.get(kind, ["accuracy"])
    metrics = _names(data.get("metrics") or default_metrics, "metrics", where)
    first = METRICS.get(metrics[0]).keys[0] if metrics else "accuracy"
    optional = {k: _name(data[k], k, where) if data.get(k) is not None else None for k in ("label_field", "target_field")}
    return Task(
        name=_name(data.get("name") or p.stem, "name", where), kind=kind,  # type: ignore[arg-type] # checked in Task.__post_init__
        text_fields=_names(data.get("text_fields") or [], "text_fields", where),
        label_field=optional["label_field"], target_field=optional["target_field"],
        num_labels=_positive_int(data.get("num_labels", 2), "num_labels", where),
        label_names=_label_names(data["labels"], where) if data.get("labels") is not None else (),
        metrics=metrics, main_metric=_name(data.get("main_metric", first), "main_metric", where),
        data_files={str(role): str((p.parent / f).resolve()) for role, f in files.items()},
        generation=_generation(data.get("generation"), where), max_length=_positive_int(data.get("max_length", 128), "max_length", where),
        languages=_names(data["languages"], "languages", where) if data.get("languages") is not None else None,  # type: ignore[arg-type] # checked in Task.__post_init__
    )


def get_task(name: str) -> Task:
    """A registered task by name / alias, or a task file (.yaml / .yml / .json)."""
    if name.endswith((".yaml", ".yml", ".json")) or Path(name).is_file():
        return load_task_file(name)
    return TASKS.get(name)
