"""`python -m unipetl …` is the `unipetl` command."""

from __future__ import annotations

from unipetl.search.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
