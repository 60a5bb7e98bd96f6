"""What drives the frontier: the best metric of each design choice at matched budgets.

For each design dimension (insertion, modified representation, composition, functional form,
kind of module) the eligible trials of a (task, model) group are split into bins of paper
fraction; inside a bin the choices compete on the same budget, so "parallel beats sequential"
is read off one row. Each cell says how many trials support it. `findings` turns the paper's
three lessons (DESIGN.md §3) into confirmed / refuted / untested on the user's task.
"""

from __future__ import annotations

import logging
from typing import Any

import polars as pl
from unipetl.reports.frontier import _higher, eligible

logger = logging.getLogger(__name__)

# (column, what the paper calls it); values come from reports.load.variant_columns
DIMENSIONS = (
    ("insertion", "insertion form (adapters)"),
    ("site", "modified representation"),
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
    """One row per (dimension, budget bin, choice): best metric, its trial and the trial count.

    Trials where a dimension does not apply (e.g. insertion for a LoRA-only variant) are left
    out of that dimension; "mixed" is a choice of its own (e.g. MAM's gated + scaled).
    """
    higher = _higher(group)
    ok = eligible(group).with_columns(pl.col("paper_fraction").map_elements(budget_bin, return_dtype=pl.Utf8).alias("budget"))
    rows: list[dict[str, Any]] = []
    for col, title in DIMENSIONS:
        sub = ok.filter(pl.col(col).is_not_null())
        for (budget, choice), g in sub.group_by(["budget", col], maintain_order=True):
            best = g.sort("metric", descending=higher).row(0, named=True)
            rows.append({
                "dimension": col, "title": title, "budget": budget, "choice": choice, "best_metric": best["metric"],
                "trials": g.height, "best_trial": best["trial"], "best_description": best["description"],
                "bin_lo": min(g["paper_fraction"].to_list()),
            })
    schema = {"dimension": pl.Utf8, "title": pl.Utf8, "budget": pl.Utf8, "choice": pl.Utf8, "best_metric": pl.Float64,
              "trials": pl.Int64, "best_trial": pl.Int64, "best_description": pl.Utf8, "bin_lo": pl.Float64}
    out = pl.DataFrame(rows, schema=schema)
    if out.is_empty():
        return out
    order = {c: i for i, (c, _) in enumerate(DIMENSIONS)}
    bins = {budget_bin(hi): i for i, hi in enumerate(BIN_EDGES[1:])}
    return (out.with_columns(pl.col("dimension").replace_strict(order, return_dtype=pl.Int64).alias("_d"),
                             pl.col("budget").replace_strict(bins, default=99, return_dtype=pl.Int64).alias("_b"))
            .sort(["_d", "_b", "best_metric"], descending=[False, False, higher]).drop(["_d", "_b", "bin_lo"]))


def compare(eff: pl.DataFrame, dimension: str, a: str, b: str, higher: bool = True) -> dict[str, Any]:
    """Bins where choices `a` and `b` of `dimension` both have trials: wins of `a`, of `b`, and support."""
    sub = eff.filter(pl.col("dimension") == dimension)
    wins_a = wins_b = ties = 0
    support = 0
    bins: list[str] = []
    for budget in dict.fromkeys(sub["budget"].to_list()):
        cell = {r["choice"]: r for r in sub.filter(pl.col("budget") == budget).iter_rows(named=True)}
        if a in cell and b in cell:
            bins.append(budget)
            support += cell[a]["trials"] + cell[b]["trials"]
            ma, mb = cell[a]["best_metric"], cell[b]["best_metric"]
            if ma == mb:
                ties += 1
            elif (ma > mb) == higher:
                wins_a += 1
            else:
                wins_b += 1
    return {"dimension": dimension, "a": a, "b": b, "bins": bins, "wins_a": wins_a, "wins_b": wins_b, "ties": ties, "trials": support}


# the paper's lessons (He et al. 2022, §4 and DESIGN.md §3) as (sentence, dimension, winner, loser)
LESSONS = (
    ("parallel insertion beats sequential", "insertion", "parallel", "sequential"),
    ("scaled add beats simple add", "composition", "scaled", "add"),
    ("modifying the FFN beats modifying attention", "site", "ffn", "attention"),
)


def findings(eff: pl.DataFrame, higher: bool = True) -> list[dict[str, Any]]:
    """Each lesson: confirmed (winner wins every matched bin), refuted, mixed, or untested."""
    out = []
    for sentence, dim, win, lose in LESSONS:
        c = compare(eff, dim, win, lose, higher) if not eff.is_empty() else {"bins": [], "wins_a": 0, "wins_b": 0, "ties": 0, "trials": 0}
        if not c["bins"]:
            verdict = "untested (no budget bin has both choices)"
        elif c["ties"] == len(c["bins"]):
            verdict = "tied"
        elif c["wins_a"] + c["ties"] == len(c["bins"]):
            verdict = "confirmed"
        elif c["wins_b"] + c["ties"] == len(c["bins"]):
            verdict = "refuted"
        else:
            verdict = "mixed"
        out.append({"lesson": sentence, "verdict": verdict, "bins": len(c["bins"]), "wins": c["wins_a"], "losses": c["wins_b"],
                    "ties": c["ties"], "trials": c["trials"]})
    return out
