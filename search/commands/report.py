"""`unipetl report`: the efficiency frontier, what drives it, and a self-contained HTML report."""

from __future__ import annotations

import argparse
import logging

from unipetl.spaces.registry import UnipetlError

logger = logging.getLogger(__name__)

NAME = "report"
HELP = "build the efficiency-frontier report (report.html, frontier.csv, trials.parquet) from studies or record files"
EPILOG = """examples:
  unipetl report --storage sqlite:///runs/sst2.db --out runs/report
  unipetl report --storage postgresql://user:pw@db/test --study sst2-minilm --study mnli-minilm --out report/
  unipetl report --records runs/*/record.json --out report/
  unipetl report --storage sqlite:///runs/unipetl.db --objectives accuracy,params,latency --out runs/report-latency
prints a Markdown summary; storage passwords are masked everywhere."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", help="Optuna storage URL (sqlite:///FILE, postgresql://…, mysql://…, journal:///FILE)")
    p.add_argument("--study", action="append", default=[], metavar="NAME", help="study to include (repeatable; default: every study in the storage)")
    p.add_argument("--records", nargs="+", default=[], metavar="FILE", help="record.json / JSONL files or directories holding record.json")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (created if needed)")
    p.add_argument("--objectives", default=None, metavar="LIST",
                   help="what the frontier trades: the metric, then costs among params, latency, latency_batch, step_time, memory "
                        "(default metric,params; e.g. accuracy,params,latency)")
    p.add_argument("--quiet", action="store_true", help="do not print the Markdown summary")


def run(args: argparse.Namespace) -> int:
    import polars as pl

    from unipetl.reports.build import write_report
    from unipetl.reports.load import load_records, load_studies, mask_url
    from unipetl.reports.objectives import parse_objectives

    objectives = parse_objectives(args.objectives)  # checked before anything is read
    if not args.storage and not args.records:
        raise UnipetlError("give at least one source: --storage URL and/or --records FILE.")
    if args.study and not args.storage:
        raise UnipetlError(f"`--study` {args.study[0]!r} needs --storage URL.")
    frames, sources = [], []
    if args.storage:
        df, _ = load_studies(args.storage, args.study or None)
        frames.append(df)
        sources.append(mask_url(args.storage) + (f" (studies: {', '.join(args.study)})" if args.study else ""))
    if args.records:
        frames.append(load_records(args.records))
        sources.append(f"{len(args.records)} record file(s)")
    df = pl.concat(frames, how="vertical_relaxed")
    md, files = write_report(df, args.out, sources, objectives)
    if not args.quiet:
        print(md)
    print("wrote " + ", ".join(str(p) for p in files.values()))
    return 0
