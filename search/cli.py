"""`unipetl` command line: one small module per subcommand under `search/commands/`.

Every subcommand module defines `NAME`, `HELP`, `add_arguments(parser)` and `run(args) -> int`.
Bad input raises `UnipetlError`; `main` prints it as one line and exits with code 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from unipetl.spaces.registry import UnipetlError

# subcommand modules, in the order `unipetl --help` lists them
COMMANDS = ["count", "ls", "run", "report", "search", "resume", "status", "export"]


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, object]]:
    parser = argparse.ArgumentParser(
        prog="unipetl",
        description="Search the unified design space of parameter-efficient transfer learning under a parameter budget.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  unipetl count --model bart-large --preset mam:l=30,r=512,s=4 --json\n"
        "  unipetl search --task sst2 --model minilm --budget 0.5% --trials 12",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules: dict[str, object] = {}
    for name in COMMANDS:
        mod = importlib.import_module(f"unipetl.search.commands.{name}")
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP, epilog=getattr(mod, "EPILOG", None), formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
        modules[mod.NAME] = mod
    return parser, modules




def quiet_third_party(verbose: bool) -> None:
    """Without -v, the libraries' own chatter inside trials (transformers' per-load "LOAD REPORT …
    MISSING classifier" tables and weight-loading bars, datasets' map / generation bars) is
    silenced: a search prints one line per finished trial, not twelve tables. -v keeps it all.
    Errors still reach the terminal (level ERROR)."""
    if verbose:
        return
    import datasets
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.utils.logging.set_verbosity_error()
    datasets.disable_progress_bars()


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser, modules = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.command in ("run", "search", "resume"):
        quiet_third_party(args.verbose)
    if not args.command:
        parser.print_help()
        return 2
    try:
        return int(modules[args.command].run(args) or 0)  # type: ignore[attr-defined]
    except UnipetlError as err:
        print(f"unipetl {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"unipetl {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
