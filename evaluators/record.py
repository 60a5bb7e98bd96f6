"""The trial record: one JSON-serializable dict per trial, the same for `unipetl run` and the search.

Exactly the fields of the shared contract (schema 1); `reports/` reads only these. Both parameter
counts are always present (README, "Parameter accounting"): the paper count (what the paper reports) and the
trainable count (everything with requires_grad, the task head excluded; `head_params` apart).
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import platform
import subprocess
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SCHEMA = 1
RECORD_KEYS = (
    "schema", "status", "error", "task", "model", "variant", "variant_description", "preset", "paper_params", "trainable_params",
    "head_params", "base_params", "paper_percent", "paper_fraction", "trainable_percent", "trainable_fraction", "metrics", "main_metric",
    "higher_is_better", "metric", "best_step", "curve", "wall_seconds", "train_tokens_per_second", "step_seconds", "peak_memory_bytes",
    "device", "seed", "train_settings", "versions", "git_commit", "fidelity",
    # added with seeds / method-aware learning rates (still schema 1: readers treat missing keys as null)
    "weights_step", "lr", "baseline_metric", "baseline", "eval_examples", "parent",
    # where a trial's wall time went (seconds per phase; see evaluators.trial.PHASES)
    "time_breakdown",
    # inference cost of the trained variant (evaluators.latency): batch1_ms, batch_ms_per_example, batch_size, merged
    "latency",
    # what peak_memory_bytes counts (evaluators.memory): cuda_max_allocated, peak_rss_since_reset or max_rss_of_process;
    # the growth of memory in use over the loop's start (the `memory` frontier objective)
    "peak_memory_kind", "peak_memory_growth_bytes",
)
_PACKAGES = ("unipetl", "torch", "transformers", "datasets", "evaluate", "tokenizers", "optuna", "sacrebleu", "rouge-score", "safetensors")


@functools.lru_cache(maxsize=1)
def versions() -> dict[str, str]:
    """Package versions of this process. torch's is the running build's own `torch.__version__`
    (e.g. 2.14.1+cu130 vs 2.13.0+cpu): wheel metadata may drop the build label, which matters
    when comparing numbers across machines."""
    import sys

    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    torch = sys.modules.get("torch")
    if torch is not None and getattr(torch, "__version__", None):
        out["torch"] = str(torch.__version__)
    return out


def git_commit() -> str | None:
    """HEAD of the project's checkout (None outside a git work tree); '+dirty' when it has edits.

    Asked anew for every record (two short git calls): a cached answer would keep a long-lived
    worker stamping records with the commit / clean state it started with."""
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():  # an installed package: site-packages is not our checkout
        return None
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "") if head else None


def make_record(**fields: Any) -> dict[str, Any]:
    """A record with every contract key; missing keys are null (or empty for metrics / curve)."""
    unknown = set(fields) - set(RECORD_KEYS)
    if unknown:
        raise KeyError(f"not record fields: {sorted(unknown)}")
    rec: dict[str, Any] = dict.fromkeys(RECORD_KEYS)
    rec.update({"schema": SCHEMA, "metrics": {}, "curve": [], "train_settings": {}, "versions": versions(), "git_commit": git_commit()})
    rec.update(fields)
    return rec
