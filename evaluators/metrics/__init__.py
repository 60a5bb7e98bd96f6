"""Task metrics through the `evaluate` API, with the metric modules shipped in this package.

`evaluate.load("rouge")` fetches a script from the hub, which these machines cannot reach; a
module directory inside the project loads offline with `evaluate.load(<dir>)`. Each metric is
declared once here with the keys it produces and whether higher is better, and everything
downstream (tasks, the trial record, the search direction) reads that.

Text metrics score every script: ROUGE tokenizes letters / marks / digits of any script (Han and
kana per character; rouge-score's own tokenizer on ASCII, so English scores are unchanged) and
BLEU segments Han references with sacreBLEU's `zh`; each module's description states its
tokenization.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from unipetl.spaces.registry import Registry

log = logging.getLogger(__name__)

METRICS_DIR = Path(__file__).parent


@dataclass(frozen=True, slots=True)
class MetricSpec:
    name: str  # module directory under evaluators/metrics/
    keys: tuple[str, ...]  # what `compute` returns
    higher_is_better: bool
    kind: str  # "label" (int predictions), "score" (float), "text" (generated strings)


METRICS: Registry[MetricSpec] = Registry("metric")
for _spec in (
    MetricSpec("accuracy", ("accuracy",), True, "label"),
    MetricSpec("f1", ("f1",), True, "label"),
    MetricSpec("matthews_correlation", ("matthews_correlation",), True, "label"),
    MetricSpec("pearsonr", ("pearsonr",), True, "score"),
    MetricSpec("spearmanr", ("spearmanr",), True, "score"),
    MetricSpec("rouge", ("rouge1", "rouge2", "rougeL", "rougeLsum"), True, "text"),
    MetricSpec("sacrebleu", ("bleu",), True, "text"),
):
    METRICS.register(_spec.name, _spec, aliases={"matthews_correlation": ("matthews", "mcc"), "sacrebleu": ("bleu",), "pearsonr": ("pearson",), "spearmanr": ("spearman",)}.get(_spec.name, ()))


def metric_key_direction(key: str) -> bool:
    """higher_is_better of a produced key (e.g. 'rouge2' → True)."""
    for _, spec in METRICS.items():
        if key in spec.keys:
            return spec.higher_is_better
    raise KeyError(key)


@cache
def load_metric(name: str) -> Any:
    """The shipped `evaluate` module for `name` (cached per process: loading builds a class)."""
    import evaluate

    spec = METRICS.get(name)
    # keep_in_memory: no arrow cache files, so concurrent workers never contend for a lock
    return evaluate.load(str(METRICS_DIR / spec.name), keep_in_memory=True)


def compute_metrics(names: tuple[str, ...] | list[str], predictions: list[Any], references: list[Any], *, num_labels: int = 2) -> dict[str, float]:
    """Run every named metric on the same predictions; returns one flat {key: value} dict.

    F1 is the positive class's F1 for two classes (GLUE's MRPC / QQP convention) and the macro
    average over classes for more (a local task with three labels, say)."""
    out: dict[str, float] = {}
    for name in names:
        canonical = METRICS.canonical(name)
        extra = {"average": "macro"} if canonical == "f1" and num_labels > 2 else {}
        result = load_metric(canonical).compute(predictions=predictions, references=references, **extra)
        out.update({k: float(v) for k, v in result.items()})
    return out
