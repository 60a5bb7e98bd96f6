"""`unipetl ls`: list presets, model cards (and tasks / models once the evaluators register them)."""

from __future__ import annotations

import argparse
import json

NAME = "ls"
HELP = "list presets, built-in model cards, tasks and models"
EPILOG = "examples:\n  unipetl ls presets\n  unipetl ls lr\n  unipetl ls cards --json"

WHAT = ("presets", "cards", "tasks", "models", "lr")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("what", nargs="?", choices=WHAT, default=None, help="what to list (default: everything)")
    p.add_argument("--json", action="store_true")


def _rows(what: str) -> list[dict[str, object]]:
    if what == "presets":
        from unipetl.spaces.presets import PRESETS

        return [{"name": n, "summary": p.summary, "defaults": p.defaults} for n, p in PRESETS.items()]
    if what == "lr":
        from unipetl.spaces.lr import LR_CENTRAL, kind_range

        return [{"name": k, "central": c, "range": kind_range(k), "summary": f"central {c:g}, searched {kind_range(k)[0]:.2g}–{kind_range(k)[1]:.2g}"}
                for k, c in LR_CENTRAL.items()]
    if what == "cards":
        from unipetl.spaces.shapes import CARDS

        return [{"name": n, "hub_id": c.hub_id, "base_params": c.base_params} for n, c in CARDS.items()]
    try:
        if what == "tasks":
            from unipetl.evaluators.tasks import TASKS as reg  # type: ignore[import-not-found]
        else:
            from unipetl.evaluators.models import MODELS as reg  # type: ignore[import-not-found]
    except ImportError:
        return []
    return [{"name": n, "summary": getattr(x, "summary", "")} for n, x in reg.items()]


def run(args: argparse.Namespace) -> int:
    whats = [args.what] if args.what else list(WHAT)
    data = {w: _rows(w) for w in whats}
    if args.json:
        print(json.dumps(data, default=str))
        return 0
    for w in whats:
        print(f"{w}:")
        for row in data[w]:
            extra = row.get("summary") or row.get("hub_id") or ""
            print(f"  {row['name']:<20} {extra}")
    return 0
