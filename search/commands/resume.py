"""`unipetl resume`: continue a study to its trial budget (after a crash, Ctrl-C or failures)."""

from __future__ import annotations

import argparse

from unipetl.search.commands.search import add_worker_arguments, check_workers, drive

NAME = "resume"
HELP = "continue a study to its trial budget with fresh workers"
EPILOG = """examples:
  unipetl resume --study sst2-minilm-budget-0.5pct
  unipetl resume --storage postgresql+psycopg2://user@db/unipetl --study mnli-05 --workers 4
Trials of dead workers are failed once their heartbeat is older than the grace period and
re-queued with the same parameters; failed tickets are replaced so the study ends with exactly
its --trials COMPLETE + PRUNED trials. A study made with --backend tune is continued by restoring
its interrupted Tune experiment (Tuner.restore), then new Tune rounds for any tickets still open."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from unipetl.search.study import DEFAULT_STORAGE

    p.add_argument("--storage", default=DEFAULT_STORAGE, help="database URL (default sqlite:///runs/unipetl.db)")
    p.add_argument("--study", required=True, help="study name")
    p.add_argument("--trials", type=int, default=None, help="raise the trial budget to this many")
    add_worker_arguments(p)


def run(args: argparse.Namespace) -> int:
    from unipetl.search import study as studies
    from unipetl.spaces.registry import UnipetlError

    check_workers(args)
    if args.trials is not None and args.trials <= 0:
        raise UnipetlError(f"`trials` should be a positive integer, got {args.trials}.")
    study = studies.load(args.storage, args.study, heartbeat_interval=args.heartbeat_interval, grace_period=args.grace_period)
    if args.trials is not None and args.trials > study.user_attrs["trials"]:
        study.set_user_attr("trials", args.trials)
    # the study's own backend continues it (a Tune study restores its interrupted experiment first);
    # stale trials are re-queued and missing tickets topped up by `unipetl.search.backends.run_study`
    return drive(args.storage, args.study, args)
