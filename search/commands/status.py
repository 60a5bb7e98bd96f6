"""`unipetl status`: trials per state, best so far and a Pareto summary of a study (read-only)."""

from __future__ import annotations

import argparse
import json
from typing import Any

NAME = "status"
HELP = "show a study's trials per state, best trial and Pareto front"
EPILOG = """examples:
  unipetl status --study sst2-minilm-budget-0.5pct
  unipetl status --storage postgresql+psycopg2://user@db/unipetl --study mnli-05 --json"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from unipetl.search.study import DEFAULT_STORAGE

    p.add_argument("--storage", default=DEFAULT_STORAGE, help="database URL (default sqlite:///runs/unipetl.db)")
    p.add_argument("--study", required=True, help="study name")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _point(row: dict[str, Any]) -> dict[str, Any]:
    return {"number": row["trial"], "metric": row["metric"], "metric_lo": row.get("metric_lo"), "metric_hi": row.get("metric_hi"),
            "n_seeds": row.get("n_seeds"), "n_failed": row.get("n_failed"), "paper_params": row["paper_params"], "paper_fraction": row["paper_fraction"],
            "variant": row["description"], "preset": row["preset"], "vs_cheaper": row.get("vs_cheaper")}


def summary(study: Any) -> dict[str, Any]:
    """States, the best design point and the Pareto front of one study — the report's own
    design points (a trial and its extra seeds as one mean with its interval) and frontier, so
    `status` and `report` never disagree."""
    import polars as pl

    from unipetl.reports.frontier import counted as frontier_counted
    from unipetl.reports.frontier import design_points, frontier_of
    from unipetl.reports.load import frame, study_rows
    from unipetl.search.study import state_counts

    attrs = study.user_attrs
    hib = attrs.get("higher_is_better", True)
    df = frame(study_rows(study)).filter(pl.col("task").is_not_null() & pl.col("model").is_not_null())
    pts = design_points(df) if not df.is_empty() else None
    counted = frontier_counted(pts) if pts is not None else None
    best = None
    if counted is not None and not counted.is_empty():
        best = _point(counted.sort("metric", descending=hib).row(0, named=True))
    front = [_point(r) for r in frontier_of(df).iter_rows(named=True)] if pts is not None else []
    return {"study": study.study_name, "task": attrs.get("task"), "model": attrs.get("model"), "mode": attrs.get("mode"),
            "budget_fraction": attrs.get("budget_fraction"), "trials": attrs.get("trials"), "seed_trials": attrs.get("seed_trials", 0),
            "main_metric": attrs.get("main_metric"), "higher_is_better": hib, "states": state_counts(study), "best": best, "pareto": front}


def run(args: argparse.Namespace) -> int:
    import optuna

    from unipetl.search import study as studies

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from unipetl.reports.summary import interval as _value

    study = studies.load(args.storage, args.study)
    s = summary(study)
    if args.json:
        print(json.dumps(s))
        return 0
    st = s["states"]
    print(f"study {s['study']}: task {s['task']}, model {s['model']}, mode {s['mode']}, budget {100 * (s['budget_fraction'] or 0):.4g} %, trials {s['trials']}")
    print("  " + "  ".join(f"{k} {v}" for k, v in st.items()))
    if s["best"]:
        b = s["best"]
        print(f"best: trial {b['number']} {s['main_metric']} {_value(b)}  {b['variant']}  ({100 * b['paper_fraction']:.4f} %)")
    if s["pareto"]:
        print("pareto front (paper % → seed-mean metric; points at chance left out):")
        for p in s["pareto"]:
            print(f"  {100 * p['paper_fraction']:9.4f} %  {_value(p)}  #{p['number']} {p['preset'] or ''} {p['variant']}")
    return 0
