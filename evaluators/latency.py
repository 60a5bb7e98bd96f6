"""Inference latency of a trained variant, measured the same way for every method.

Practitioners choose between methods by what they cost at inference, not only by how many
parameters they train: an unmerged adapter or prefix adds work to every forward pass, while a
LoRA with add / scaled composition folds into the base weights (W + s·BA, Hu et al. 2022 §4.1)
and adds none, and so do (IA)³ vectors (l ⊙ W x = (l ⊙ W) x, Liu et al. 2022 §3.3). So a trial
measures, after training, on a copy of its model with every module folded that folds exactly
(`Realized.merge`, `realize.merge_plan`: add / scaled LoRA and its variants, (IA)³ vectors);
the rest — gated / learned-scale LoRA, adapters, prefixes, prompts — is measured as trained:

- `batch1_ms`: median wall milliseconds of one forward pass over one example (the first
  `n_single` examples of the eval split, after `warmup` untimed passes);
- `batch_ms_per_example`: median wall milliseconds of one forward over `batch_size` examples
  (the first `n_batches` batches of the split, after a warm-up on an eighth of one), divided by
  the batch size;
- `batch1_ratio_ci` / `batch_ratio_ci`: the 95 % distribution-free interval of that median
  ([x_(k), x_(n+1−k)] of the paired ratios, `reports.stats.median_interval`: [2nd, 9th] of the
  default 10 batch-1 pairs, coverage 97.9 %); None with fewer than 6 pairs (the default single
  eval batch, `TrialConfig.latency_batches`; a study trading `latency_batch` times 6) — that
  figure is then one pair, with no interval;
- `merged`: how many modules were folded for the measurement (LoRA modules + (IA)³ vectors; 0:
  nothing to fold).

Forward passes only (for seq2seq: encoder + teacher-forced decoder over the reference, a fixed
amount of work; generation length would confound the method with what it learned to write).
Wall times depend on the machine and its load: compare trials of one study (one machine), or
ratios to full fine-tuning's latency measured alongside.

The cost of a forward pass depends on the variant's structure, not on its trained values, so each
design is measured once (`reuse_or_measure`): another seed or learning rate of the same variant on
the same backbone, eval split, length limit, batch size, device and thread count gets the same
figures back, marked `reused: true` in its record — in the process that measured it, or in any
worker that runs an extra seed of it (`remember` takes the parent trial's record; the search
worker does this before each extra seed).
"""

from __future__ import annotations

import copy
import hashlib
import json
import statistics
import time
from typing import Any

import torch

from unipetl.evaluators.tasks import Task
from unipetl.reports.stats import median_interval

# what the timed model is: bump when it changes, so a latency measured under an earlier rule (kept
# in a study's records and `remember`ed for an extra seed) is never reused for a new measurement.
# 2: every exactly foldable module folded (`Realized.merge`); 1 (unmarked): LoRA only, all or none
PROCEDURE = 2


def mergeable_copy(realized: Any) -> tuple[Any, int]:
    """A deep copy of the realized model with every module that folds exactly folded into the
    base weights (`Realized.merge`); returns (model, modules folded). The trained model itself is
    not touched."""
    twin = copy.deepcopy(realized)
    return twin.model, twin.merge()


def measure_latency(task: Task, realized: Any, tokenizer: Any, ds: Any, *, batch_size: int, device: torch.device, n_single: int = 10,
                    n_batches: int = 1, warmup: int = 2, reference: Any = None, single: bool = True, batch: bool = True) -> dict[str, Any]:
    """Latency of the trained variant (see the module docstring); values are None when the split
    is empty. Units: milliseconds. Timed on a copy with every exactly foldable module folded
    (`mergeable_copy`); the rest of the variant runs as trained.

    `single` / `batch`: time the batch-1 part (batch1_ms, batch1_ratio) / the eval-batch part
    (batch_ms_per_example, batch_ratio); a part not timed is None (a MO-ASHA rung that ranks the
    batch-1 latency times that part before training and the rest only for a trial that finishes).

    `reference`: the pristine backbone (same architecture, no variant). Each timed pass of the
    variant is then paired with one of the reference on the same input, in alternating order, and
    `batch1_ratio` / `batch_ratio` are the medians of variant / reference over the pairs: the
    variant's own cost, with the machine's load (another worker training on the same cores)
    cancelled — wall milliseconds alone drift by tens of percent on a shared CPU."""
    from torch.utils.data import DataLoader

    from unipetl.evaluators.train import _collator

    if len(ds) == 0:
        return {"batch1_ms": None, "batch_ms_per_example": None, "batch_size": batch_size, "merged": 0, "batch1_ratio": None, "batch_ratio": None,
                "batch1_ratio_ci": None, "batch_ratio_ci": None}
    model, merged = mergeable_copy(realized)
    model.to(device).eval()
    ref = reference.to(device).eval() if reference is not None else None
    keep = [c for c in ds.column_names if c in ("input_ids", "attention_mask", "token_type_ids", "labels")]
    ds = ds.select_columns(keep)
    collate = _collator(task, tokenizer, model)

    def timed(net: Any, batch: dict[str, torch.Tensor]) -> float:
        batch = {k: v.to(device) for k, v in batch.items()}
        if task.kind != "seq2seq":
            batch.pop("labels", None)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        net(**batch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return (time.perf_counter() - t0) * 1000.0

    def pairs(batches: list[dict[str, torch.Tensor]]) -> tuple[list[float], list[float]]:
        """(variant ms, variant / reference) per batch; the order alternates so neither always goes first."""
        mine, ratios = [], []
        for i, b in enumerate(batches):
            if ref is None:
                mine.append(timed(model, b))
                continue
            if i % 2:
                r, v = timed(ref, b), timed(model, b)
            else:
                v, r = timed(model, b), timed(ref, b)
            mine.append(v)
            ratios.append(v / r)
        return mine, ratios

    out: dict[str, Any] = {"batch1_ms": None, "batch_ms_per_example": None, "batch_size": batch_size, "merged": merged,
                           "batch1_ratio": None, "batch_ratio": None, "batch1_ratio_ci": None, "batch_ratio_ci": None}

    def interval(ratios: list[float]) -> list[float] | None:
        ci = median_interval(ratios) if ratios else None
        return None if ci is None else [round(ci[0], 4), round(ci[1], 4)]

    with torch.no_grad():
        if single:
            singles = list(DataLoader(ds.select(range(min(len(ds), n_single + warmup))), batch_size=1, collate_fn=collate))
            pairs(singles[:warmup])
            one, one_ratio = pairs(singles[warmup:] or singles)
            out.update(batch1_ms=round(statistics.median(one), 4), batch1_ratio=round(statistics.median(one_ratio), 4) if one_ratio else None,
                       batch1_ratio_ci=interval(one_ratio))
        if batch:
            batches = list(DataLoader(ds.select(range(min(len(ds), batch_size * n_batches))), batch_size=batch_size, collate_fn=collate))
            pairs([{k: v[: max(1, len(v) // 8)] for k, v in batches[0].items()}])  # warm-up at a fraction of the batch: allocations, not the clock
            full, full_ratio = pairs(batches)
            n = [len(b["input_ids"]) for b in batches]
            out.update(batch_ms_per_example=round(statistics.median(f / k for f, k in zip(full, n, strict=True)), 4),
                       batch_ratio=round(statistics.median(full_ratio), 4) if full_ratio else None, batch_ratio_ci=interval(full_ratio))
    return out


# measured latency per design (digest of `design_key`'s parts), kept by a long-lived process
_MEASURED: dict[str, dict[str, Any]] = {}
_MEASURED_SIZE = 256


def design_key(**identity: Any) -> str | None:
    """The key of a latency measurement: a digest (BLAKE2b, 32 hex digits) of every input that
    changes what is timed (the backbone's files, the variant's full spec, the eval split's
    identity and caps, the length limit, the batch size, the device, the thread count) as
    canonical JSON. None (no reuse) when any part is None — a model with no stable identity (a
    hub name) is measured every time."""
    if any(v is None for v in identity.values()):
        return None
    return hashlib.blake2b(json.dumps(identity, sort_keys=True, default=repr).encode(), digest_size=16).hexdigest()


def reuse_or_measure(key: str | None, measure: Any, *, keep: bool = True) -> dict[str, Any]:
    """`measure()`'s latency record, or the one kept under the same `key` (`design_key`: measured
    earlier in this process, or `remember`ed from another trial of the design). The result
    carries `design` (the key) and `reused` (bool). A record with no figures (empty split), or
    any record with `keep=False` (a part of a measurement), is not kept."""
    if key is not None and key in _MEASURED:
        return {**_MEASURED[key], "design": key, "reused": True}
    out = dict(measure())
    if keep and key is not None and _complete(out):
        _keep(key, out)
    return {**out, "design": key, "reused": False}


def _complete(record: dict[str, Any]) -> bool:
    """Both parts timed: a record worth reusing (not an empty split's, not a batch-1 part alone)."""
    return record.get("batch1_ms") is not None and record.get("batch_ms_per_example") is not None


def _keep(key: str, record: dict[str, Any]) -> None:
    if key not in _MEASURED and len(_MEASURED) >= _MEASURED_SIZE:
        _MEASURED.pop(next(iter(_MEASURED)))
    _MEASURED[key] = record


def remember(latency: Any) -> bool:
    """Keep a latency record another process measured (a trial record's `latency`, e.g. the
    parent design trial of an extra seed) for `reuse_or_measure`; it is only ever found under its
    own `design` key, so a record of a different design, backbone, split or machine set-up is
    never used. Returns whether it was kept (False for a record without key or figures, or with the
    batch-1 part only: a trial stopped at a rung that ranked latency)."""
    if not isinstance(latency, dict) or not isinstance(latency.get("design"), str) or not _complete(latency):
        return False
    _keep(latency["design"], {k: v for k, v in latency.items() if k not in ("design", "reused")})
    return True


__all__ = ["PROCEDURE", "design_key", "measure_latency", "mergeable_copy", "remember", "reuse_or_measure"]
