"""What drives the frontier: the best metric of each design choice at matched budgets.

For each design dimension (insertion, modified representation, composition, functional form,
kind of module) the eligible trials of a (task, model) group are split into bins of paper
fraction; inside a bin the choices compete on the same budget, so "parallel beats sequential"
is read off one row. Each cell says how many design points and seeds support it. `findings` turns the paper's
lessons (He et al. 2022, §4) into paired comparisons over seeds with an interval and one of
holds / reversed / inconclusive on the user's task.
"""

from __future__ import annotations

import logging
from typing import Any

import polars as pl

from unipetl.reports.frontier import _higher, _seeds, counted, design_points
from unipetl.reports.stats import paired_verdict

logger = logging.getLogger(__name__)

# (column, what the paper calls it); values come from reports.load.variant_columns
DIMENSIONS = (
    ("insertion", "insertion form (adapters)"),
    ("site", "modified representation"),
    ("representation", "modified representation (head-wise attention apart)"),
    ("composition", "composition"),
    ("function", "functional form"),
    ("kind", "kind of module"),
)
# matched budgets: half-decade bins of paper fraction (upper edges inclusive)
BIN_EDGES = (0.0, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)


def _pct(x: float) -> str:
    return f"{x * 100:g}%"


def budget_bin(fraction: float) -> str:
    """The label of the bin holding `fraction`, e.g. '0.1%–0.3%'."""
    for lo, hi in zip(BIN_EDGES, BIN_EDGES[1:], strict=False):
        if fraction <= hi:
            return f"{_pct(lo)}–{_pct(hi)}"
    return f">{_pct(BIN_EDGES[-1])}"


def effects(group: pl.DataFrame) -> pl.DataFrame:
    """One row per (dimension, budget bin, choice): its best design point (by seed mean, with the
    95 % interval and seed count) and how many design points and seeds the choice has there.

    Over design points that beat the trivial baseline, as the frontier: the best single seed
    would favour whichever choice ran more seeds. Design points where a dimension does not
    apply (e.g. insertion for a LoRA-only variant) are left out of that dimension; "mixed" is a
    choice of its own (e.g. MAM's gated + scaled).
    """
    higher = _higher(group)
    pts = counted(design_points(group))
    pts = pts.with_columns(pl.col("paper_fraction").map_elements(budget_bin, return_dtype=pl.Utf8).alias("budget")) if not pts.is_empty() else pts
    rows: list[dict[str, Any]] = []
    for col, title in DIMENSIONS:
        sub = pts.filter(pl.col(col).is_not_null()) if not pts.is_empty() else pts
        for (budget, choice), g in (sub.group_by(["budget", col], maintain_order=True) if not sub.is_empty() else []):
            best = g.sort(["metric", "trial"], descending=[higher, False]).row(0, named=True)
            rows.append({
                "dimension": col, "title": title, "budget": budget, "choice": choice, "best_metric": best["metric"],
                "best_lo": best["metric_lo"], "best_hi": best["metric_hi"], "best_seeds": best["n_seeds"],
                "designs": g.height, "seeds": int(g["n_seeds"].sum()), "best_trial": best["trial"], "best_description": best["description"],
            })
    schema = {"dimension": pl.Utf8, "title": pl.Utf8, "budget": pl.Utf8, "choice": pl.Utf8, "best_metric": pl.Float64,
              "best_lo": pl.Float64, "best_hi": pl.Float64, "best_seeds": pl.Int64, "designs": pl.Int64, "seeds": pl.Int64,
              "best_trial": pl.Int64, "best_description": pl.Utf8}
    out = pl.DataFrame(rows, schema=schema)
    if out.is_empty():
        return out
    order = {c: i for i, (c, _) in enumerate(DIMENSIONS)}
    bins = {budget_bin(hi): i for i, hi in enumerate(BIN_EDGES[1:])}
    return (out.with_columns(pl.col("dimension").replace_strict(order, return_dtype=pl.Int64).alias("_d"),
                             pl.col("budget").replace_strict(bins, default=99, return_dtype=pl.Int64).alias("_b"))
            .sort(["_d", "_b", "best_metric"], descending=[False, False, higher]).drop(["_d", "_b"]))


def compare(eff: pl.DataFrame, dimension: str, a: str, b: str, higher: bool = True) -> dict[str, Any]:
    """Bins where choices `a` and `b` of `dimension` both have design points: wins of `a`, of `b`
    (by the best seed mean in the bin), and support (the design points of both in those bins)."""
    sub = eff.filter(pl.col("dimension") == dimension)
    wins_a = wins_b = ties = 0
    support = 0
    bins: list[str] = []
    for budget in dict.fromkeys(sub["budget"].to_list()):
        cell = {r["choice"]: r for r in sub.filter(pl.col("budget") == budget).iter_rows(named=True)}
        if a in cell and b in cell:
            bins.append(budget)
            support += cell[a]["designs"] + cell[b]["designs"]
            ma, mb = cell[a]["best_metric"], cell[b]["best_metric"]
            if ma == mb:
                ties += 1
            elif (ma > mb) == higher:
                wins_a += 1
            else:
                wins_b += 1
    return {"dimension": dimension, "a": a, "b": b, "bins": bins, "wins_a": wins_a, "wins_b": wins_b, "ties": ties, "designs": support}


# the paper's lessons (He et al. 2022, §4) as (sentence, dimension, winner, loser,
# budgets): "large" = bins above 0.3 % of the backbone, "small" = bins up to 0.3 % (the paper's ≈ 0.1 %)
SMALL_BUDGET = 3e-3
LESSONS = (
    ("parallel insertion beats sequential", "insertion", "parallel", "sequential", "all"),
    ("scaled add beats simple add", "composition", "scaled", "add", "all"),
    ("modifying the FFN beats modifying attention at larger budgets", "site", "ffn", "attention", "large"),
    ("head-wise attention (prefix, MH PA) beats the FFN at a small budget", "representation", "attention heads", "ffn", "small"),
)


def _a(word: str) -> str:
    return ("an " if word[:1] in "aeiou" else "a ") + word


def _in_budget(fraction: float, which: str) -> bool:
    return which == "all" or (fraction > SMALL_BUDGET) == (which == "large")


def _best(points: pl.DataFrame, higher: bool) -> dict[str, Any] | None:
    """The best design point among those with at least two seeds, chosen on its first seed alone
    (the search's own run: design_points' `seed`), so that its other seeds are free to test it."""
    rows = points.filter(pl.col("n_seeds") >= 2).to_dicts()
    sign = -1.0 if higher else 1.0
    return min(rows, key=lambda r: (sign * _seeds(r)[r["seed"]], r["trial"]), default=None)


def findings(group: pl.DataFrame) -> list[dict[str, Any]]:
    """Each lesson as a paired comparison over seeds at matched budgets.

    In every budget bin (`budget_bin`) of the lesson's budget range and every study, the best
    design point of the winning choice meets the best of the losing one (each with ≥ 2 seeds).
    Each side's best is chosen on its first seed (`_best`) and the two are compared on their
    other seeds only, seed k of one paired with seed k of the other (same data order): choosing
    and testing on the same seeds favours the side with more designs to choose from (with no
    true difference, 10 designs against 1 "held" in 11.4 % of 1,000 simulated studies at a
    nominal 2.5 %; this rule: 2.9 % — benchmarks/findings_null.py, RESULTS §9). The per-seed differences of all such matched pairs give the effect (mean, 95 %
    t-interval) and the verdict: *holds* (interval above 0), *reversed* (below 0) or
    *inconclusive* (crosses 0, or fewer than two paired seeds — never a verdict from a single
    pair — or, with `why` saying "untested", no bin has both choices with a seed to test on).
    Points below the trivial baseline take no part.
    """
    higher = _higher(group) if not group.is_empty() else True
    pts = design_points(group) if not group.is_empty() else pl.DataFrame()
    if not pts.is_empty():
        pts = pts.filter(pl.col("beats_baseline").is_null() | pl.col("beats_baseline")).with_columns(
            pl.col("paper_fraction").map_elements(budget_bin, return_dtype=pl.Utf8).alias("budget"))
    out = []
    for sentence, dim, win, lose, budgets in LESSONS:
        pairs: list[dict[str, Any]] = []
        diffs_a: list[float] = []
        diffs_b: list[float] = []
        if not pts.is_empty():
            sub = pts.filter(pl.col(dim).is_in([win, lose]))
            for (_source, study, budget), g in sub.group_by(["source", "study", "budget"], maintain_order=True):  # seeds pair within one study
                if not _in_budget(float(g["paper_fraction"].max()), budgets):
                    continue
                a, b = _best(g.filter(pl.col(dim) == win), higher), _best(g.filter(pl.col(dim) == lose), higher)
                if a is None or b is None:
                    continue
                sa, sb = _seeds(a), _seeds(b)
                common = [k for k in sa if k in sb and k not in (a["seed"], b["seed"])]  # the seeds that chose them do not test them
                if not common:
                    continue
                pv = paired_verdict([sa[k] for k in common], [sb[k] for k in common], higher=higher)
                pairs.append({"study": study, "budget": budget, "a": a["description"], "b": b["description"], "paired": pv})
                diffs_a += [sa[k] for k in common]
                diffs_b += [sb[k] for k in common]
        if not pairs:
            out.append({"lesson": sentence, "verdict": "inconclusive", "why": "untested: no matched budget bin holds both choices with a seed beyond the one that chose them",
                        "effect": None, "lo": None, "hi": None, "pairs": 0, "bins": [],
                        "text": f"inconclusive (untested here: no {budgets if budgets != 'all' else 'matched'}-budget bin holds both {_a(win)} and {_a(lose)} design "
                                "with a seed beyond the one that chose them)"})
            continue
        pooled = paired_verdict(diffs_a, diffs_b, higher=higher)
        out.append({"lesson": sentence, "verdict": pooled.verdict, "why": "", "effect": pooled.mean, "lo": pooled.lo, "hi": pooled.hi,
                    "pairs": pooled.n, "bins": [{"study": p["study"], "budget": p["budget"], "winner_side": p["a"], "loser_side": p["b"],
                                                "verdict": p["paired"].verdict, "effect": p["paired"].mean, "lo": p["paired"].lo, "hi": p["paired"].hi}
                                               for p in pairs],
                    "text": pooled.text()})
    return out
