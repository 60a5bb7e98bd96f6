"""Plots of one (task, model) group, and the label placement that report.html's SVG shares.

PNG figures (matplotlib, Agg backend; bytes, so HTML can embed them): metric vs paper fraction
(log x; every trial by state, the frontier line with its points labelled, full fine-tuning as a
horizontal line, the budget as a vertical one), hypervolume vs trial number, and the
per-dimension comparison at matched budgets. In report.html the frontier PNG is the static
fallback of the interactive SVG (`reports/html.py`).

`place_labels` puts one box per anchor so that no two boxes intersect: searches push designs
up against the budget, so frontier points crowd there and labels written at a fixed offset
overlap. It is a greedy pass in anchor order over a fixed list of candidate spots, so the same
points always get the same layout.
"""

from __future__ import annotations

import io
import itertools
import logging
import math
from collections.abc import Iterator, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import polars as pl  # noqa: E402

from unipetl.reports.frontier import FRACTION_FLOOR, display_name, eligible  # noqa: E402

logger = logging.getLogger(__name__)

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 with x0 <= x1, y0 <= y1
COVER_COST = 30.0  # a label may move this many pixels farther out to keep one more marker (or line sample) uncovered


def overlaps(a: Box, b: Box, gap: float = 0.0) -> bool:
    """Whether two boxes come closer than `gap` (touching edges do not overlap at gap 0)."""
    return a[0] < b[2] + gap and b[0] < a[2] + gap and a[1] < b[3] + gap and b[1] < a[3] + gap


def _inside(box: Box, bounds: Box) -> bool:
    return box[0] >= bounds[0] and box[1] >= bounds[1] and box[2] <= bounds[2] and box[3] <= bounds[3]


def _spots(x: float, y: float, w: float, h: float, r: float) -> Iterator[Box]:
    """Candidate boxes around (x, y): the eight next to it, then ever farther up and down beside it."""
    for dx, dy in ((r, -r - h), (r, r), (-r - w, -r - h), (-r - w, r), (-w / 2, -r - h), (-w / 2, r), (r, -h / 2), (-r - w, -h / 2)):
        yield (x + dx, y + dy, x + dx + w, y + dy + h)
    k = 1
    while True:
        for dx in (r, -r - w):
            for sign in (-1, 1):
                y0 = y - h / 2 + sign * k * h / 2
                yield (x + dx, y0, x + dx + w, y0 + h)
        k += 1


def place_labels(anchors: Sequence[tuple[float, float]], sizes: Sequence[tuple[float, float]], bounds: Box, *,
                 obstacles: Sequence[Box] = (), avoid: Sequence[tuple[float, float]] = (), gap: float = 2.0, radius: float = 5.0,
                 reach: int = 48) -> list[Box]:
    """One box of size `sizes[i]` near each `anchors[i]`; no two boxes and no box and obstacle
    come closer than `gap`. Among the first candidates of each label (`_spots`, `reach` rows each
    way) inside `bounds` it takes the nearest, where each `avoid` point (a plotted marker, a
    sample of a line) the box covers counts as `COVER_COST` pixels farther; when none fits
    inside it keeps going out until one is free, so every label gets a box. Works in any
    axis-aligned frame (SVG y down, matplotlib y up)."""
    if len(anchors) != len(sizes):
        raise ValueError(f"`sizes` should have one entry per anchor ({len(anchors)}), got {len(sizes)}")
    placed: list[Box] = []
    blocked = list(obstacles)
    for (x, y), (w, h) in zip(anchors, sizes, strict=True):
        best: tuple[tuple[float, int], Box] | None = None
        fallback: Box | None = None
        for i, box in enumerate(_spots(x, y, w, h, radius)):
            if i >= 8 + 4 * reach and (best is not None or fallback is not None):
                break
            if any(overlaps(box, b, gap) for b in blocked):
                continue
            if not _inside(box, bounds):
                fallback = fallback or box
                continue
            covered = sum(box[0] - radius / 2 <= px <= box[2] + radius / 2 and box[1] - radius / 2 <= py <= box[3] + radius / 2
                          for px, py in avoid)
            dist = math.hypot((box[0] + box[2]) / 2 - x, (box[1] + box[3]) / 2 - y)
            key = (covered * COVER_COST + dist, i)
            if best is None or key < best[0]:
                best = (key, box)
        chosen = best[1] if best is not None else fallback
        assert chosen is not None
        placed.append(chosen)
        blocked.append(chosen)
    return placed


def step_samples(xy: Sequence[tuple[float, float]], every: float = 6.0) -> list[tuple[float, float]]:
    """Points every `every` pixels along the frontier's post-step line (across, then up or down to
    the next point), for `place_labels` to keep labels off the line as it keeps them off markers."""
    out: list[tuple[float, float]] = []
    for (xa, ya), (xb, yb) in itertools.pairwise(xy):
        n = max(1, math.ceil(abs(xb - xa) / every))
        out += [(xa + (xb - xa) * k / n, ya) for k in range(1, n + 1)]  # across, the corner included
        n = max(1, math.ceil(abs(yb - ya) / every))
        out += [(xb, ya + (yb - ya) * k / n) for k in range(1, n)]  # up to the next point, itself left out
    return out


def short_name(row: dict[str, Any]) -> str:
    """A frontier point's label: trial number and its named method, or the nearest one with "-like"."""
    preset = (row.get("preset") or "").split(":")[0]
    if preset:
        name = display_name(preset)
    elif row.get("nearest"):
        name = f"{display_name(row['nearest'])}-like"
    else:
        name = "custom"
    return f"#{row.get('trial')} {name}"


def _png(fig: plt.Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def trial_layers(group: pl.DataFrame) -> tuple[pl.DataFrame, list[tuple[str, str, pl.Expr]]]:
    """Plotted trials (a metric and a fraction, not full fine-tuning) and the state layers they fall in."""
    pts = group.with_row_index("_row").filter(pl.col("metric").is_finite() & pl.col("paper_fraction").is_finite() & ~pl.col("full_finetune"))
    ok_ids = eligible(pts)["_row"].to_list() if not pts.is_empty() else []
    ok = pl.col("_row").is_in(ok_ids)
    layers = [("eligible", "eligible", ok), ("other", "complete, not eligible (partial / over budget)", (pl.col("state") == "COMPLETE") & ~ok),
              ("pruned", "pruned", pl.col("state") == "PRUNED"), ("failed", "failed", pl.col("state") == "FAIL")]
    return pts, layers


MPL_STYLE = {"eligible": ("o", "tab:blue"), "other": ("s", "gray"), "pruned": ("v", "tab:orange"), "failed": ("x", "tab:red")}


def frontier_figure(group: pl.DataFrame, front: pl.DataFrame, full_ft: float | None, title: str, metric: str,
                    budget: float | None = None) -> plt.Figure:
    """Metric vs paper fraction (log x): every trial with a metric, the frontier (points labelled
    by `place_labels`), full FT, the budget. The legend sits outside the axes, clear of labels."""
    fig, ax = plt.subplots(figsize=(8.6, 4.6))
    pts, layers = trial_layers(group)
    for key, label, cond in layers:
        s = pts.filter(cond)
        if not s.is_empty():
            marker, color = MPL_STYLE[key]
            x = [max(f, FRACTION_FLOOR) for f in s["paper_fraction"].to_list()]
            ax.scatter(x, s["metric"].to_list(), marker=marker, color=color, alpha=0.55, s=28, label=f"{label} ({s.height})")
    fx = [max(f, FRACTION_FLOOR) for f in front["paper_fraction"].to_list()] if not front.is_empty() else []
    if fx:
        ax.step(fx, front["metric"].to_list(), where="post", color="black", lw=1.4, label="frontier")
        ax.scatter(fx, front["metric"].to_list(), marker="D", facecolor="none", edgecolor="black", s=60, zorder=3)
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
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    else:
        ax.text(0.5, 0.5, "no finished trial yet", ha="center", va="center", transform=ax.transAxes)
    if fx:
        _label_frontier(fig, ax, front, fx, pts)
    return fig


def _label_frontier(fig: plt.Figure, ax: plt.Axes, front: pl.DataFrame, fx: list[float], pts: pl.DataFrame) -> None:
    """Label every frontier point without overlaps: measure each text, place boxes in display pixels."""
    fig.canvas.draw()
    ax.set_xlim(ax.get_xlim())  # freeze the limits: the labels must not move the axes they were placed in
    ax.set_ylim(ax.get_ylim())
    renderer = fig.canvas.get_renderer()
    to_px = ax.transData.transform
    anchors = [tuple(to_px((x, y))) for x, y in zip(fx, front["metric"].to_list(), strict=True)]
    avoid = [tuple(to_px((max(f, FRACTION_FLOOR), m))) for f, m in zip(pts["paper_fraction"].to_list(), pts["metric"].to_list(), strict=True)]
    texts = [ax.annotate(short_name(r), (x, y), xytext=(0, 0), textcoords="offset points", fontsize=8, color="dimgray", ha="left",
                         va="bottom", gid="frontier-label", annotation_clip=False, zorder=4,
                         bbox={"boxstyle": "square,pad=0", "facecolor": "white", "edgecolor": "none", "alpha": 0.8})
             for r, x, y in zip(front.iter_rows(named=True), fx, front["metric"].to_list(), strict=True)]
    sizes = []
    for t in texts:
        ext = t.get_window_extent(renderer)
        sizes.append((ext.width + 2, ext.height + 1))
    b = ax.bbox
    # 8 px: clear of the 60 pt² diamond at 100 dpi
    boxes = place_labels(anchors, sizes, (b.x0, b.y0, b.x1, b.y1), avoid=avoid + anchors + step_samples(anchors), radius=8.0)
    per_point = 72.0 / fig.dpi
    to_data = ax.transData.inverted().transform
    for t, (x, y), box in zip(texts, anchors, boxes, strict=True):
        t.xyann = ((box[0] + 1 - x) * per_point, (box[1] - y) * per_point)
        near = (min(max(x, box[0]), box[2]), min(max(y, box[1]), box[3]))
        if math.hypot(near[0] - x, near[1] - y) > 8:  # moved away from its point: a leader line says whose it is
            (x0, y0), (x1, y1) = to_data((x, y)), to_data(near)
            ax.plot([x0, x1], [y0, y1], color="silver", lw=0.6, zorder=1)


def frontier_plot(group: pl.DataFrame, front: pl.DataFrame, full_ft: float | None, title: str, metric: str, budget: float | None = None) -> bytes:
    return _png(frontier_figure(group, front, full_ft, title, metric, budget))


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
    """One panel per dimension: the best design point's seed mean per choice (95 % interval as an
    error bar where it has one), grouped by budget bin, the choice's design-point count on each bar."""
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
            lows = [cells[b]["best_metric"] - cells[b]["best_lo"] if cells[b]["best_lo"] is not None else 0.0 for b in budgets if b in cells]
            highs = [cells[b]["best_hi"] - cells[b]["best_metric"] if cells[b]["best_hi"] is not None else 0.0 for b in budgets if b in cells]
            bars = ax.bar(xs, ys, width=width * 0.95, label=choice, yerr=[lows, highs], capsize=2, error_kw={"lw": 0.8})
            for bar, b in zip(bars, [b for b in budgets if b in cells], strict=True):
                ax.annotate(f"n={cells[b]['designs']}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                            va="bottom", fontsize=7)
        ys_all = sub["best_metric"].to_list() + sub["best_lo"].drop_nulls().to_list() + sub["best_hi"].drop_nulls().to_list()
        lo, hi = min(ys_all), max(ys_all)
        pad = (hi - lo) * 0.25 or abs(hi) * 0.05 or 0.05
        if all(math.isfinite(v) for v in (lo, hi)):
            ax.set_ylim(lo - pad, hi + pad)
        ax.set_xticks(range(len(budgets)))
        ax.set_xticklabels(budgets, fontsize=7, rotation=20)
        ax.set_title(dim, fontsize=9)
        ax.set_ylabel(f"best {metric} (seed mean)", fontsize=8)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return _png(fig)
