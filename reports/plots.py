"""PNG plots of one (task, model) group (matplotlib, Agg backend; bytes, so HTML can embed them).

Three figures per group: metric vs paper fraction (log x; every trial by state, the frontier
line, named methods labelled, full fine-tuning as a horizontal line), hypervolume vs trial
number, and the per-dimension comparison at matched budgets.
"""

from __future__ import annotations

import io
import logging
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import polars as pl  # noqa: E402

from unipetl.reports.frontier import FRACTION_FLOOR, display_name, eligible  # noqa: E402

logger = logging.getLogger(__name__)

def _png(fig: plt.Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def frontier_plot(group: pl.DataFrame, front: pl.DataFrame, full_ft: float | None, title: str, metric: str, budget: float | None = None) -> bytes:
    """Metric vs paper fraction (log x): every trial with a metric, the frontier, presets, full FT."""
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    pts = group.with_row_index("_row").filter(pl.col("metric").is_not_null() & pl.col("paper_fraction").is_not_null() & ~pl.col("full_finetune"))
    ok_ids = set(eligible(pts)["_row"].to_list()) if not pts.is_empty() else set()
    in_front = pl.col("_row").is_in(list(ok_ids))
    layers = [("eligible", in_front, "o", "tab:blue"),
              ("complete, not eligible (partial / over budget)", (pl.col("state") == "COMPLETE") & ~in_front, "s", "gray"),
              ("pruned", pl.col("state") == "PRUNED", "v", "tab:orange"), ("failed", pl.col("state") == "FAIL", "x", "tab:red")]
    for label, cond, marker, color in layers:
        s = pts.filter(cond)
        if not s.is_empty():
            x = [max(f, FRACTION_FLOOR) for f in s["paper_fraction"].to_list()]
            ax.scatter(x, s["metric"].to_list(), marker=marker, color=color, alpha=0.55, s=28, label=f"{label} ({s.height})")
    if not front.is_empty():
        x = [max(f, FRACTION_FLOOR) for f in front["paper_fraction"].to_list()]
        ax.step(x, front["metric"].to_list(), where="post", color="black", lw=1.4, label="frontier")
        ax.scatter(x, front["metric"].to_list(), marker="D", facecolor="none", edgecolor="black", s=60, zorder=3)
    named = pts.filter(pl.col("named") & in_front)
    for row in named.iter_rows(named=True):
        name = (row["preset"] or "").split(":")[0]
        ax.annotate(display_name(name), (max(row["paper_fraction"], FRACTION_FLOOR), row["metric"]), textcoords="offset points",
                    xytext=(4, 5), fontsize=8, color="dimgray")
    if full_ft is not None:
        ax.axhline(full_ft, color="tab:green", ls="--", lw=1.2, label=f"full fine-tuning ({full_ft:.4g})")
    if budget is not None:
        ax.axvline(budget, color="tab:red", ls=":", lw=1.0, label=f"budget ({budget * 100:.3g}%)")
    if not pts.is_empty() or full_ft is not None:
        ax.set_xscale("log")
    ax.set_xlabel("paper parameter fraction (log scale)")
    ax.set_ylabel(metric)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.25)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best")
    else:
        ax.text(0.5, 0.5, "no finished trial yet", ha="center", va="center", transform=ax.transAxes)
    return _png(fig)


def hypervolume_plot(history: list[tuple[int, float]], title: str) -> bytes:
    fig, ax = plt.subplots(figsize=(6, 3.4))
    if history:
        ax.step([n for n, _ in history], [h for _, h in history], where="post", color="tab:purple")
        ax.set_xlim(0.5, max(n for n, _ in history) + 0.5)
    else:
        ax.text(0.5, 0.5, "no trials", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("trials (in trial-number order)")
    ax.set_ylabel("hypervolume")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.25)
    return _png(fig)


def effects_plot(eff: pl.DataFrame, title: str, metric: str) -> bytes:
    """One panel per dimension: best metric per choice, grouped by budget bin, trial counts on bars."""
    dims = list(dict.fromkeys(eff["dimension"].to_list())) if not eff.is_empty() else []
    n = max(len(dims), 1)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.6), squeeze=False)
    if not dims:
        axes[0][0].text(0.5, 0.5, "no finished trial yet", ha="center", va="center", transform=axes[0][0].transAxes)
    for ax, dim in zip(axes[0], dims, strict=False):
        sub = eff.filter(pl.col("dimension") == dim)
        budgets = list(dict.fromkeys(sub["budget"].to_list()))
        choices = sorted(set(sub["choice"].to_list()))
        width = 0.8 / max(len(choices), 1)
        for j, choice in enumerate(choices):
            cells = {r["budget"]: r for r in sub.filter(pl.col("choice") == choice).iter_rows(named=True)}
            xs = [i + (j - (len(choices) - 1) / 2) * width for i, b in enumerate(budgets) if b in cells]
            ys = [cells[b]["best_metric"] for b in budgets if b in cells]
            bars = ax.bar(xs, ys, width=width * 0.95, label=choice)
            for bar, b in zip(bars, [b for b in budgets if b in cells], strict=True):
                ax.annotate(f"n={cells[b]['trials']}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                            va="bottom", fontsize=7)
        ys_all = sub["best_metric"].to_list()
        lo, hi = min(ys_all), max(ys_all)
        pad = (hi - lo) * 0.25 or abs(hi) * 0.05 or 0.05
        if all(math.isfinite(v) for v in (lo, hi)):
            ax.set_ylim(lo - pad, hi + pad)
        ax.set_xticks(range(len(budgets)))
        ax.set_xticklabels(budgets, fontsize=7, rotation=20)
        ax.set_title(dim, fontsize=9)
        ax.set_ylabel(f"best {metric}", fontsize=8)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return _png(fig)
