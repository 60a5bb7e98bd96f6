"""The efficiency frontier per (task, model): Pareto set, hypervolume, nearest named method.

Objectives: paper fraction (minimize) and the task's main metric (maximize, or minimize when the
metric says `higher_is_better: false`). Non-dominated sorting and hypervolume come from
`moocore` (public, documented, O(n log n) in 2-D); Optuna's equivalents live in private
modules (`optuna._hypervolume`, `optuna.study._multi_objective`) that may change without notice.

Hypervolume reference point (stated in every report): paper fraction 1.0 (100 % of the backbone,
what full fine-tuning stores) and, for higher-is-better metrics, the trivial baseline when the
records carry one (group_summary: a point at chance adds nothing), else metric 0 (accuracy,
BLEU, ROUGE all start at 0). The fraction axis is log10 with fractions floored at 1e-6, so that
every decade of budget weighs the same; HV / 6 is then the best metric's margin over the
reference, averaged over budgets spread log-uniformly between 1e-6 and 1 (a budget below the
cheapest trial reaches nothing).
Lower-is-better metrics have no natural worst value; their reference is the worst completed
value of the group, and the report says so.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from dataclasses import dataclass
from typing import Any

import moocore
import numpy as np
import polars as pl

from unipetl.reports.objectives import DEFAULT as DEFAULT_OBJECTIVES
from unipetl.reports.objectives import cost_columns
from unipetl.reports.stats import beats_baseline, paired_verdict, summarize, unpaired_significant
from unipetl.spaces.kinds import get_kind
from unipetl.spaces.presets import PRESETS
from unipetl.spaces.variant import Module, Variant

logger = logging.getLogger(__name__)

FRACTION_FLOOR = 1e-6
REF_FRACTION = 1.0
REF_METRIC_HIGHER = 0.0
DECADES = math.log10(REF_FRACTION / FRACTION_FLOOR)
GROUP = ("task", "model")
# how named methods are written in reports
DISPLAY = {"mam": "MAM", "lora": "LoRA", "lora-ffn": "LoRA (FFN)", "unipelt": "UniPELT", "bitfit": "BitFit", "houlsby": "Houlsby adapter",
           "pfeiffer": "Pfeiffer adapter", "prefix": "prefix tuning", "prompt": "prompt tuning", "pa-attn": "PA (attn)", "pa-ffn": "PA (FFN)",
           "sa-attn": "SA (attn)", "sa-ffn": "SA (FFN)", "mh-pa": "MH PA", "scaled-pa": "scaled PA", "full": "full fine-tuning", "probe": "linear probe"}


def display_name(preset: str) -> str:
    """A named method as reports write it: DISPLAY, else the kind file's preset display, else the name."""
    if preset in DISPLAY:
        return DISPLAY[preset]
    p = PRESETS.get(preset) if preset in PRESETS else None
    return (p.display if p is not None else None) or preset


# --- eligibility -------------------------------------------------------------------------------
def eligible(df: pl.DataFrame, *, full: bool = False) -> pl.DataFrame:
    """Trials that may enter a frontier: complete, status ok, final fidelity, a metric, within budget.

    Full fine-tuning is the 100 % reference line, not a frontier point. A trial over its
    study's budget (infeasible; normally never trained) is excluded too. `full=True`: the full
    fine-tuning trials that may serve as that reference instead (the budget does not apply).
    """
    done = ((pl.col("state") == "COMPLETE") & (pl.col("status") == "ok") & (pl.col("fidelity").is_null() | (pl.col("fidelity") == "final"))
            & pl.col("metric").is_not_null() & pl.col("metric").is_finite() & pl.col("paper_fraction").is_not_null())
    if full:
        return df.filter(done & pl.col("full_finetune"))
    return df.filter(done & ~pl.col("full_finetune")
                     & (pl.col("budget_fraction").is_null() | (pl.col("paper_fraction") <= pl.col("budget_fraction") * (1 + 1e-9))))


def failed_runs(df: pl.DataFrame) -> pl.DataFrame:
    """Trials that ran and produced no usable metric: FAIL, or COMPLETE with status failed or a
    missing / non-finite metric (a diverged run). Pruned and unfinished trials are not failures."""
    return df.filter((pl.col("state") == "FAIL")
                     | ((pl.col("state") == "COMPLETE") & ((pl.col("status") == "failed") | pl.col("metric").is_null() | ~pl.col("metric").is_finite())))


def full_point(group: pl.DataFrame, higher: bool = True) -> dict[str, Any] | None:
    """The best full fine-tuning design point of the group (its seed mean, interval and seeds, as
    `design_points`), None when there is none. The reference is a mean like every PETL point:
    the best single seed would favour whichever side ran more seeds."""
    pts = design_points(group, full=True)
    return pts.sort("metric", descending=higher).row(0, named=True) if not pts.is_empty() else None


def full_reference(group: pl.DataFrame, higher: bool = True) -> float | None:
    """The seed mean of the best full fine-tuning design point (`full_point`; None when there is none)."""
    p = full_point(group, higher)
    return None if p is None else float(p["metric"])


# --- Pareto set and hypervolume ---------------------------------------------------------------------
def pareto_mask(fractions: Any, metrics: Any, higher: bool = True) -> np.ndarray:
    """True for points not dominated in (fraction ↓, metric ↑/↓). Exact duplicates (two designs
    with the same cost and the same metric) are all kept: which one shows must not depend on the
    order the trials were listed in."""
    return nondominated([fractions, metrics], [False, higher])


def nondominated(columns: list[Any], maximise: list[bool]) -> np.ndarray:
    """True for points not dominated over any number of objectives (one array per objective,
    `maximise[i]` its direction); exact duplicates are all kept (`pareto_mask`)."""
    pts = np.column_stack([np.asarray(c, dtype=float) for c in columns]) if columns and len(columns[0]) else np.zeros((0, len(columns)))
    if len(pts) == 0:
        return np.zeros(0, dtype=bool)
    return np.asarray(moocore.is_nondominated(pts, maximise=maximise, keep_weakly=True), dtype=bool)


def reference_metric(metrics: Any, higher: bool = True) -> float:
    if higher:
        return REF_METRIC_HIGHER
    vals = np.asarray(metrics, dtype=float)
    return float(vals.max()) if len(vals) else 0.0


def hypervolume(fractions: Any, metrics: Any, higher: bool = True, ref_metric: float | None = None) -> float:
    """Area dominated in (log10 fraction, metric) up to the reference point (log10 1.0, ref_metric)."""
    f = np.asarray(fractions, dtype=float)
    m = np.asarray(metrics, dtype=float)
    if len(f) == 0:
        return 0.0
    ref = reference_metric(m, higher) if ref_metric is None else ref_metric
    x = np.log10(np.clip(f, FRACTION_FLOOR, None))
    keep = (x < math.log10(REF_FRACTION)) & ((m > ref) if higher else (m < ref))
    if not keep.any():
        return 0.0
    pts = np.column_stack([x[keep], m[keep]])
    return float(moocore.hypervolume(pts, ref=[math.log10(REF_FRACTION), ref], maximise=[False, higher]))


def hypervolume_history(group: pl.DataFrame, higher: bool = True, ref_metric: float | None = None) -> list[tuple[int, float]]:
    """(n, hypervolume had the group stopped after its first n trials) for n = 1 … all trials, in
    trial-number order. Each value is what `group_summary` reports for those n trials: over design
    points (seed means), without the points that do not beat the trivial baseline, against
    `ref_metric` (default: `reference_metric` of all counted points) — so the curve ends at the
    reported hypervolume. An extra seed can lower its design's mean, so the curve may step down."""
    g = group.with_row_index("_order").sort(["trial", "_order"], nulls_last=True).drop("_order").with_row_index("_n")
    if ref_metric is None:
        ref_metric = reference_metric(counted(design_points(g))["metric"].to_numpy(), higher)
    ok = eligible(g).with_columns(pl.coalesce("parent", "trial").alias("_design"))
    design_of = {r["_n"]: tuple(r[k] for k in DESIGN_KEY) for r in ok.select("_n", *DESIGN_KEY).iter_rows(named=True)}
    rows: dict[tuple[Any, ...], list[int]] = {}
    points: dict[tuple[Any, ...], tuple[float, float] | None] = {}  # design → (fraction, seed mean) while it counts
    out: list[tuple[int, float]] = []
    hv = 0.0
    for n in range(g.height):
        key = design_of.get(n)
        if key is not None:  # only an eligible trial changes a design point: refold that one design
            rows.setdefault(key, []).append(n)
            p = counted(design_points(g[rows[key]].drop("_n")))
            points[key] = (p["paper_fraction"][0], p["metric"][0]) if not p.is_empty() else None
            kept = [v for v in points.values() if v is not None]
            hv = hypervolume([f for f, _ in kept], [m for _, m in kept], higher, ref_metric)
        out.append((n + 1, hv))
    return out


# --- nearest named method ------------------------------------------------------------------------
def _signature(m: Module) -> tuple[str, ...]:
    return get_kind(m.kind).signature(m)


MODULE_COST = 5  # an unmatched module differs in all five dimensions


def design_distance(a: Variant, b: Variant) -> int:
    """Distance between two variants over the design dimensions, sizes ignored.

    Each module is (site, kind, function, insertion, composition); modules of the two variants
    are paired to minimize the number of differing dimensions, an unpaired module costs 5, and
    BitFit, prompt tuning or full fine-tuning present in one variant only cost 5 each.
    """
    if a.full_finetune or b.full_finetune:
        return 0 if a.full_finetune == b.full_finetune else 100
    sa, sb = [_signature(m) for m in a.modules], [_signature(m) for m in b.modules]
    if len(sa) < len(sb):
        sa, sb = sb, sa
    best = MODULE_COST * len(sa)
    for perm in itertools.permutations(range(len(sa)), len(sb)):
        cost = sum(sum(x != y for x, y in zip(sa[i], sb[j], strict=True)) for j, i in enumerate(perm))
        cost += MODULE_COST * (len(sa) - len(sb))
        best = min(best, cost)
    extras = (a.bitfit != b.bitfit) + (bool(a.prompt_length) != bool(b.prompt_length))
    return best + MODULE_COST * extras


@dataclass(frozen=True, slots=True)
class Match:
    preset: str
    distance: int

    @property
    def label(self) -> str:
        name = display_name(self.preset)
        return name if self.distance == 0 else f"{name}-like (distance {self.distance})"


_NAMED: list[tuple[str, Variant]] = []


def named_methods() -> list[tuple[str, Variant]]:
    """Each registered preset at its default sizes (sizes do not enter the distance)."""
    if not _NAMED:
        _NAMED.extend((name, p.build()) for name, p in PRESETS.items())
    return _NAMED


def nearest_named(variant: Variant) -> Match:
    """The registered named method closest in design (ties: the earlier registered preset)."""
    best: Match | None = None
    for name, v in named_methods():
        d = design_distance(variant, v)
        if best is None or d < best.distance:
            best = Match(name, d)
    assert best is not None
    return best


# --- frontier tables ---------------------------------------------------------------------------------
def _higher(group: pl.DataFrame) -> bool:
    vals = group["higher_is_better"].drop_nulls()
    return bool(vals[0]) if len(vals) else True


SEED_MEAN_COSTS = ("latency_ms", "latency_batch_ms", "latency_ratio", "latency_batch_ratio", "step_seconds", "peak_memory_bytes",
                   "peak_memory_growth_bytes")  # memory: the max over seeds
MAX_OVER_SEEDS = ("peak_memory_bytes", "peak_memory_growth_bytes")


DESIGN_KEY = ("source", "study", "_design")  # one design point: its trial (or the trial it is an extra seed of) in its study and storage


def design_points(group: pl.DataFrame, *, full: bool = False) -> pl.DataFrame:
    """Eligible trials folded into design points: a trial and its extra seeds (trials whose
    `parent` is it, in the same study of the same source) become one row with the parent's
    columns and

    - `metric`: the mean over seeds (what the frontier uses), `metric_std`, `metric_lo` /
      `metric_hi` (Student-t 95 % interval; null with one seed), `n_seeds`;
    - `seed_values` / `seed_list`: the per-seed metrics and seeds (JSON lists, paired by seed);
    - `metric_later`: for a sampled design (not a named method), the mean over its seeds after
      the first: the search gave extra seeds to the points on its first seed's front, so that
      seed is the one that chose it, and the mean over all seeds keeps some of its luck (a
      winner's curse); null for named methods (always re-seeded) and single-seed points;
    - `n_failed`: seeds of the design that ran and gave no metric (`failed_runs`; a seed retried
      with success is not counted) — left out of the mean, so the report must say so;
    - `beats_baseline`: whether the mean clears the trivial baseline by more than the eval set's
      noise (`reports.stats.beats_baseline`; null without a baseline).

    Records read from files carry no study: their source file keeps them apart, so two runs
    never become seeds of one design by sharing a trial number. `full=True` folds the full
    fine-tuning trials (`eligible(full=True)`) instead.
    """
    ok = eligible(group, full=full).with_columns(pl.coalesce("parent", "trial").alias("_design"))
    extra = {"metric_std": pl.Float64, "metric_lo": pl.Float64, "metric_hi": pl.Float64, "n_seeds": pl.Int64, "metric_later": pl.Float64,
             "seed_values": pl.Utf8, "seed_list": pl.Utf8, "n_failed": pl.Int64, "beats_baseline": pl.Boolean}
    if ok.is_empty():
        return ok.drop("_design").with_columns([pl.lit(None, t).alias(c) for c, t in extra.items()])
    higher = _higher(group)
    failed: dict[tuple[Any, ...], list[Any]] = {}
    for r in failed_runs(group).with_columns(pl.coalesce("parent", "trial").alias("_design")).iter_rows(named=True):
        failed.setdefault(tuple(r[k] for k in DESIGN_KEY), []).append(r["seed"] if r["seed"] is not None else ("trial", r["trial"]))
    rows: list[dict[str, Any]] = []
    for key, g in ok.group_by(list(DESIGN_KEY), maintain_order=True):
        g = g.sort(["seed", "trial"], nulls_last=True)
        head = g.filter(pl.col("parent").is_null())
        base = (head if not head.is_empty() else g).row(0, named=True)
        values = [float(v) for v in g["metric"].to_list()]
        summ = summarize(values)
        row = {k: v for k, v in base.items() if k != "_design"}
        for c in SEED_MEAN_COSTS:  # a cost of the design is its mean over the seeds that measured it
            vals = [float(v) for v in g[c].to_list() if v is not None]
            row[c] = (sum(vals) / len(vals) if vals else None) if c not in MAX_OVER_SEEDS else (int(max(vals)) if vals else None)
        for c in ("latency_ratio", "latency_batch_ratio"):  # an interval is of one measurement: kept when every seed reused it
            if len({v for v in g[c].to_list() if v is not None}) > 1:
                row[f"{c}_lo"] = row[f"{c}_hi"] = None
        seeds = g["seed"].to_list()
        later = [v for v, sd in zip(values, seeds, strict=True) if sd != base["seed"]] if not base.get("named") else []
        row.update(metric=summ.mean, metric_std=summ.std, metric_lo=summ.lo, metric_hi=summ.hi, n_seeds=summ.n,
                   metric_later=sum(later) / len(later) if later else None,
                   seed_values=json.dumps(values), seed_list=json.dumps(seeds),
                   n_failed=len({s for s in failed.get(tuple(key), []) if s not in seeds}),
                   beats_baseline=beats_baseline(summ.mean, base.get("baseline_metric"), base.get("eval_examples"), higher=higher))
        rows.append(row)
    schema = {**{c: t for c, t in ok.schema.items() if c != "_design"}, **extra}
    return pl.DataFrame(rows, schema=schema, orient="row")


def counted(points: pl.DataFrame) -> pl.DataFrame:
    """The design points a frontier and its hypervolume count: those not shown to sit at the trivial baseline."""
    return points.filter(pl.col("beats_baseline").is_null() | pl.col("beats_baseline"))


def _seeds(row: dict[str, Any]) -> dict[Any, float]:
    return dict(zip(json.loads(row["seed_list"] or "[]"), json.loads(row["seed_values"] or "[]"), strict=False))


def dominance(a: dict[str, Any], b: dict[str, Any], higher: bool = True) -> str:
    """Is design point `a` better than `b` beyond noise? A paired verdict over their common seeds
    when both come from one study (the same data order per seed), else Welch's t-test.
    Returns "significant", "not significant" or "untested (one seed)"."""
    sa, sb = _seeds(a), _seeds(b)
    same = all(a.get(k) == b.get(k) for k in ("source", "study"))
    common = [k for k in sa if k in sb] if same else []
    if len(common) >= 2:
        v = paired_verdict([sa[k] for k in common], [sb[k] for k in common], higher=higher)
        return "significant" if v.verdict == "holds" else "not significant"
    sig = unpaired_significant(list(sa.values()), list(sb.values()), higher=higher)
    return "untested (one seed)" if sig is None else ("significant" if sig else "not significant")


def frontier_of(group: pl.DataFrame, objectives: tuple[str, ...] = DEFAULT_OBJECTIVES) -> pl.DataFrame:
    """The frontier of one (task, model) group over design points (mean over seeds), cheapest
    first, with match and gap columns. `objectives` (reports.objectives): the metric and the
    costs it trades against (default paper params); points without a value for a chosen cost
    cannot be placed and are left out. Points that do not beat the trivial baseline are left out
    (`beats_baseline` false); `vs_cheaper` says whether each point's lead over the next cheaper
    frontier point is significant (`dominance`)."""
    higher = _higher(group)
    pts = counted(design_points(group))
    costs = cost_columns(objectives)
    pts = pts.filter(pl.all_horizontal([pl.col(c).is_not_null() for c in costs])) if costs else pts
    if pts.is_empty():
        return pts.with_columns(pl.lit(None, pl.Utf8).alias("nearest"), pl.lit(None, pl.Int64).alias("nearest_distance"),
                                pl.lit(None, pl.Utf8).alias("like"), pl.lit(None, pl.Float64).alias("gap_to_full"),
                                pl.lit(None, pl.Utf8).alias("vs_cheaper"))
    mask = nondominated([pts["metric"], *(pts[c] for c in costs)], [higher, *([False] * len(costs))])
    front = pts.filter(pl.Series(mask, dtype=pl.Boolean)).sort("paper_fraction")
    matches = [nearest_named(Variant.from_json(v)) if v else None for v in front["variant_json"].to_list()]
    full = full_reference(group, higher)
    sign = 1.0 if higher else -1.0
    rows = front.to_dicts()
    vs = [None] + [dominance(rows[i], rows[i - 1], higher) for i in range(1, len(rows))]
    return front.with_columns(
        pl.Series("nearest", [m.preset if m else None for m in matches], pl.Utf8),
        pl.Series("nearest_distance", [m.distance if m else None for m in matches], pl.Int64),
        pl.Series("like", [m.label if m else None for m in matches], pl.Utf8),
        pl.Series("gap_to_full", [None if full is None else sign * (x - full) for x in front["metric"].to_list()], pl.Float64),
        pl.Series("vs_cheaper", vs, pl.Utf8),
    )


def baseline_of(group: pl.DataFrame) -> float | None:
    """The group's trivial-baseline metric (majority class / constant), if its records carry one."""
    vals = group["baseline_metric"].drop_nulls()
    return float(vals.max()) if len(vals) else None


def frontiers(df: pl.DataFrame, objectives: tuple[str, ...] = DEFAULT_OBJECTIVES) -> pl.DataFrame:
    """Frontier rows of every (task, model) group in one table."""
    parts = [frontier_of(g, objectives) for _, g in df.group_by(list(GROUP), maintain_order=True)]
    parts = [p for p in parts if not p.is_empty()]
    return pl.concat(parts, how="vertical_relaxed") if parts else frontier_of(df.clear(), objectives)


def group_summary(group: pl.DataFrame, objectives: tuple[str, ...] = DEFAULT_OBJECTIVES) -> dict[str, Any]:
    """Counts, hypervolume, best point, full-FT reference and best named method of one group.

    Everything is over design points (means over seeds). Hypervolume is scored over the
    trivial baseline when the records carry one (a point at chance adds nothing), else over the
    fixed reference; points that do not beat the baseline are counted apart and left out."""
    higher = _higher(group)
    ok = eligible(group)
    pts = design_points(group)
    below = pts.filter(pl.col("beats_baseline") == False)  # noqa: E712 - polars expression
    kept = counted(pts)
    front = frontier_of(group, objectives)
    chance = baseline_of(group) if higher else None
    ref = chance if chance is not None else reference_metric(kept["metric"].to_numpy(), higher)
    states = {s: int(n) for s, n in group.group_by("state").len().iter_rows()}
    best = kept.sort("metric", descending=higher).row(0, named=True) if not kept.is_empty() else None
    named = kept.filter(pl.col("named"))
    best_named = named.sort("metric", descending=higher).row(0, named=True) if not named.is_empty() else None
    full = full_point(group, higher)
    return {
        "task": group["task"][0], "model": group["model"][0],
        "studies": sorted({s for s in group["study"].to_list() if s}),
        "main_metric": (group["main_metric"].drop_nulls().to_list() or ["metric"])[0], "higher_is_better": higher,
        "trials": group.height, "states": states, "eligible": ok.height, "design_points": pts.height, "frontier": front.height,
        "below_baseline": below, "baseline": chance,
        "budget_fraction": (group["budget_fraction"].drop_nulls().to_list() or [None])[0],
        "hypervolume": hypervolume(kept["paper_fraction"], kept["metric"], higher, ref), "hv_reference": (REF_FRACTION, ref),
        "hv_over": "the trivial baseline (majority class)" if chance is not None else "the fixed reference",
        "best": best, "best_named": best_named, "full_ft": None if full is None else full["metric"], "full_ft_point": full,
        "frontier_rows": front, "design_rows": pts, "objectives": objectives,
        # what the numbers rest on: each training set-up with its design points, the eval set sizes, the seeds that failed
        "setups": [(str(k), int(n)) for k, n in kept.filter(pl.col("setup").is_not_null()).group_by("setup", maintain_order=True).len().iter_rows()],
        "eval_examples": sorted({int(v) for v in kept["eval_examples"].drop_nulls().to_list()}),
        "failed_seeds": int(kept["n_failed"].sum() or 0) if not kept.is_empty() else 0,
        # how the group's multi-fidelity studies screened their trials, each with its trials stopped at a rung
        "screening": [(how, group.filter((pl.col("screening") == how) & (pl.col("state") == "PRUNED")).height)
                      for how in sorted(set(group["screening"].drop_nulls().to_list()))] if "screening" in group.columns else [],
    }
