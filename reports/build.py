"""Build a whole report from the trials table: sections per (task, model), then files on disk.

`build_sections` is the computation (frontier, hypervolume history, effects, PNG plots);
`write_report` writes report.html (interactive by itself: its frontier plots are inline SVG with
hover, see `reports/html.py`), frontier.csv and trials.parquet; it returns the Markdown summary
that the CLI prints.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

import polars as pl

from unipetl.reports import effects as fx
from unipetl.reports import plots
from unipetl.reports.frontier import GROUP, _higher, group_summary, hypervolume_history
from unipetl.reports.html import render
from unipetl.reports.objectives import DEFAULT as DEFAULT_OBJECTIVES
from unipetl.reports.objectives import cost_columns
from unipetl.reports.summary import markdown

logger = logging.getLogger(__name__)

FRONTIER_COLUMNS = ["task", "model", "source", "study", "trial", "paper_fraction", "paper_params", "trainable_fraction", "main_metric", "metric",
                    "metric_std", "metric_lo", "metric_hi", "n_seeds", "metric_later", "n_failed", "seed_list", "seed_values", "vs_cheaper", "lr_scale", "lr_json",
                    "baseline_metric", "eval_examples", "setup", "description", "attn_method", "ffn_method", "preset", "nearest", "nearest_distance", "like", "gap_to_full", "variant_json"]


def build_sections(df: pl.DataFrame, *, with_plots: bool = True, objectives: tuple[str, ...] = DEFAULT_OBJECTIVES) -> list[dict[str, Any]]:
    """One section per (task, model) group, in order of first appearance."""
    sections = []
    known = df.filter(pl.col("task").is_not_null() & pl.col("model").is_not_null())
    if known.height < df.height:
        logger.warning("%d trials carry no task/model (no record and no study attributes); they are left out", df.height - known.height)
    for _, group in known.group_by(list(GROUP), maintain_order=True):
        higher = _higher(group)
        summary = group_summary(group, objectives)
        eff = fx.effects(group)
        sec: dict[str, Any] = {"summary": summary, "group": group, "effects": eff, "findings": fx.findings(group),
                               "hv_history": hypervolume_history(group, higher, summary["hv_reference"][1])}
        if with_plots:
            title = f"{summary['task']} / {summary['model']}"
            sec["png_frontier"] = plots.frontier_plot(group, summary["frontier_rows"], summary["full_ft"], title, summary["main_metric"],
                                                      summary["budget_fraction"])
            sec["png_hv"] = plots.hypervolume_plot(sec["hv_history"], title)
            sec["png_effects"] = plots.effects_plot(eff, title, summary["main_metric"])
        sections.append(sec)
    return sections


def frontier_csv_frame(sections: list[dict[str, Any]]) -> pl.DataFrame:
    def columns(s: dict[str, Any]) -> list[str]:
        extra = [c for c in cost_columns(s["summary"].get("objectives", DEFAULT_OBJECTIVES)) if c not in FRONTIER_COLUMNS]
        return FRONTIER_COLUMNS + extra

    parts = [s["summary"]["frontier_rows"].select(columns(s)) for s in sections if not s["summary"]["frontier_rows"].is_empty()]
    if parts:
        return pl.concat(parts, how="vertical_relaxed")
    return pl.DataFrame(schema=dict.fromkeys(FRONTIER_COLUMNS, pl.Utf8))


def write_report(df: pl.DataFrame, out_dir: str | Path, sources: list[str], objectives: tuple[str, ...] = DEFAULT_OBJECTIVES) -> tuple[str, dict[str, Path]]:
    """Write every output file into `out_dir`; return (Markdown summary, name → path).
    `objectives`: what the frontier trades (reports.objectives; default metric and paper params)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sections = build_sections(df, objectives=objectives)
    generated = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    files = {"report.html": out / "report.html", "frontier.csv": out / "frontier.csv", "trials.parquet": out / "trials.parquet"}
    files["report.html"].write_text(render(sections, sources, generated), encoding="utf-8")
    frontier_csv_frame(sections).write_csv(files["frontier.csv"])
    df.write_parquet(files["trials.parquet"])
    logger.info("report written to %s (%d sections)", out, len(sections))
    return markdown(sections, sources), files
