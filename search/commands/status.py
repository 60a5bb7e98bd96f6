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


def _point(t: Any, attrs: dict[str, Any]) -> dict[str, Any]:
    rec = t.user_attrs.get("record") or {}
    return {"number": t.number, "metric": rec.get("metric", t.values[0] if t.values else None),
            "paper_params": t.user_attrs.get("paper_params"), "paper_fraction": t.user_attrs.get("paper_fraction"),
            "variant": t.user_attrs.get("variant_description"), "preset": t.user_attrs.get("preset")}


def pareto(points: list[dict[str, Any]], higher_is_better: bool) -> list[dict[str, Any]]:
    """Points not dominated in (metric better, paper fraction lower), by increasing fraction."""
    sign = 1.0 if higher_is_better else -1.0
    out: list[dict[str, Any]] = []
    for p in sorted(points, key=lambda p: (p["paper_fraction"], -sign * p["metric"])):
        if not out or sign * p["metric"] > sign * out[-1]["metric"]:
            out.append(p)
    return out


def summary(study: Any) -> dict[str, Any]:
    from optuna.trial import TrialState

    from unipetl.search.study import state_counts

    attrs = study.user_attrs
    done = [_point(t, attrs) for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    done = [p for p in done if p["metric"] is not None and p["paper_fraction"] is not None]
    hib = attrs.get("higher_is_better", True)
    best = (max if hib else min)(done, key=lambda p: p["metric"]) if done else None
    return {"study": study.study_name, "task": attrs.get("task"), "model": attrs.get("model"), "mode": attrs.get("mode"),
            "budget_fraction": attrs.get("budget_fraction"), "trials": attrs.get("trials"), "main_metric": attrs.get("main_metric"),
            "higher_is_better": hib, "states": state_counts(study), "best": best, "pareto": pareto(done, hib)}


def run(args: argparse.Namespace) -> int:
    import optuna

    from unipetl.search import study as studies

    optuna.logging.set_verbosity(optuna.logging.WARNING)
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
        print(f"best: trial {b['number']} {s['main_metric']}={b['metric']:.4f}  {b['variant']}  ({100 * b['paper_fraction']:.4f} %)")
    if s["pareto"]:
        print("pareto front (paper % → metric):")
        for p in s["pareto"]:
            print(f"  {100 * p['paper_fraction']:9.4f} %  {p['metric']:.4f}  #{p['number']} {p['preset'] or ''} {p['variant']}")
    return 0
