"""What a frontier trades: the task metric against one or more costs.

The default frontier trades the metric against paper parameters (He et al. 2022 §4, Fig. 1).
Practitioners also choose by inference latency (an unmerged adapter adds work to every forward
pass; a merged LoRA adds none), training time per step and memory, so each trial record carries
those costs (`evaluators.latency`, `step_seconds`, `peak_memory_growth_bytes`) and a frontier may trade
any of them: `--objectives metric,params,latency`. The first objective is always the metric
(its direction is the task's); every cost is minimised.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from unipetl.spaces.registry import UnipetlError, did_you_mean


@dataclass(frozen=True, slots=True)
class Objective:
    name: str
    column: str  # the report table's column (reports.load.SCHEMA)
    label: str  # axis / table label, with its unit
    record_path: tuple[str, ...]  # where a trial record holds it

    def of_record(self, record: dict[str, Any]) -> float | None:
        """The value in a trial record (None when the record lacks it)."""
        value: Any = record
        for key in self.record_path:
            value = value.get(key) if isinstance(value, dict) else None
        return None if value is None else float(value)


COSTS: dict[str, Objective] = {
    "params": Objective("params", "paper_fraction", "paper params (fraction of the model)", ("paper_fraction",)),
    # latency relative to the pristine backbone, timed in pairs (evaluators.latency): 1.0 = adds nothing; unlike
    # wall milliseconds it does not move with the machine's load, so trials of one study compare
    "latency": Objective("latency", "latency_ratio", "inference latency, batch 1 (× backbone)", ("latency", "batch1_ratio")),
    "latency_batch": Objective("latency_batch", "latency_batch_ratio", "inference latency, eval batch (× backbone)", ("latency", "batch_ratio")),
    "step_time": Objective("step_time", "step_seconds", "training time (s / optimizer step)", ("step_seconds",)),
    # growth over what was in use when training began (evaluators.memory): on CPU the peak itself depends on what the worker keeps resident
    "memory": Objective("memory", "peak_memory_growth_bytes", "training memory over the loaded model (bytes)", ("peak_memory_growth_bytes",)),
}
METRIC_NAMES = ("metric", "accuracy")  # "accuracy" reads naturally for classification; both mean the task's main metric
DEFAULT = ("metric", "params")


def parse_objectives(text: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """`metric,params,latency` → ("metric", "params", "latency"). The metric comes first (named
    `metric` or `accuracy`), then one or more distinct costs from COSTS. None → DEFAULT.

    Raises UnipetlError naming the field and the bad value."""
    if text is None:
        return DEFAULT
    items = [t.strip() for t in (text.split(",") if isinstance(text, str) else text)]
    if not items or items[0] not in METRIC_NAMES:
        raise UnipetlError(f"`objectives` must start with the metric (metric or accuracy), got {text!r}.")
    costs = items[1:]
    if not costs:
        raise UnipetlError(f"`objectives` needs at least one cost after the metric ({', '.join(COSTS)}), got {text!r}.")
    for c in costs:
        if c not in COSTS:
            raise UnipetlError(f"`objectives`: unknown cost {c!r}.{did_you_mean(c, list(COSTS))}")
    if len(set(costs)) != len(costs):
        raise UnipetlError(f"`objectives` names a cost twice: {text!r}.")
    return ("metric", *costs)


def cost_columns(objectives: tuple[str, ...]) -> list[str]:
    """The report-table columns of the costs in `objectives` (the metric excluded)."""
    return [COSTS[o].column for o in objectives[1:]]


__all__ = ["COSTS", "DEFAULT", "Objective", "cost_columns", "parse_objectives"]
