"""Is a trial's recorded peak memory the trial's own? Six short trials in one process, as a worker runs them.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/peak_memory.py            # SST-2 / MiniLM, 512 sentences, 8 steps each
    .venv/bin/python benchmarks/peak_memory.py --quick                       # CI smoke: tiny-bert, 2 steps

A search worker runs many trials in one process, so `peak_memory_bytes` (the `memory` frontier
objective) must not depend on what ran before. Two arms, each in a fresh process, run the same
sequence — LoRA, scaled PA, prefix, LoRA, PA, LoRA — and print per trial the resident memory when
its loop began, its recorded peak and the growth between them (`peak_memory_growth_bytes`, the
`memory` objective):

- `recorded`: what every trial does (`evaluators.memory.start`: garbage collection, glibc
  malloc_trim(0), then the peak reset);
- `no_release`: the peak reset alone (what the loop did before 2026-12-06's second fix; the first
  fix added the reset — before it, the figure was the process's lifetime peak).

The same design must record the same figure in one arm; the spread of the three LoRA trials is
the number to read.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import DATA_DIR, OUT_DIR, header_block, markdown_table, write_results  # noqa: E402

SEQUENCE = ("lora:r=12,s=2", "scaled-pa:r=3,s=4", "prefix:l=3", "lora:r=12,s=2", "pa:r=8", "lora:r=12,s=2")
ARMS = ("recorded", "no_release")
MiB = 2**20


def run_arm(arm: str, quick: bool) -> list[dict[str, Any]]:
    """The sequence in this process; per trial: design, RSS at the loop's start, recorded peak (bytes)."""
    from unipetl.evaluators import memory
    from unipetl.evaluators.trial import TrialConfig, run_trial
    from unipetl.spaces.presets import parse_preset

    if arm == "no_release":
        memory.release_free_memory = lambda: False  # instrumentation of this script only
    caps = ({"model": "tiny-bert", "max_train_examples": 32, "max_steps": 2, "batch_size": 8, "max_eval_examples": 16, "max_length": 32} if quick
            else {"model": "minilm", "max_train_examples": 512, "max_steps": 8, "batch_size": 32, "max_eval_examples": 128, "max_length": 64})
    out = []
    for design in SEQUENCE:
        rec = run_trial(TrialConfig(task="sst2", variant=parse_preset(design), data_dir=str(DATA_DIR), **caps))
        peak, growth = rec["peak_memory_bytes"], rec["peak_memory_growth_bytes"]
        out.append({"design": design, "start_bytes": peak - growth, "peak_bytes": peak, "growth_bytes": growth, "kind": rec["peak_memory_kind"]})
    return out


def render(arms: dict[str, list[dict[str, Any]]], command: list[str], caps: dict[str, Any]) -> str:
    lines = ["## Peak memory per trial: six trials in one process", "", header_block(command, caps), ""]
    head = ["#", "design"] + [f"{arm}: start / peak / growth (MiB)" for arm in arms]
    body = [[i, SEQUENCE[i], *(f"{a[i]['start_bytes'] / MiB:,.0f} / {a[i]['peak_bytes'] / MiB:,.0f} / {(a[i]['peak_bytes'] - a[i]['start_bytes']) / MiB:,.0f}"
                              for a in arms.values())] for i in range(len(SEQUENCE))]
    md = "\n".join(lines) + markdown_table(head, body) + "\n"
    for arm, rows in arms.items():
        for field in ("peak_bytes", "growth_bytes"):
            lora = [r[field] / MiB for r in rows if r["design"] == SEQUENCE[0]]
            md += (f"\n{arm}: the three trials of {SEQUENCE[0]} recorded a {field.split('_')[0]} of {', '.join(f'{v:,.0f}' for v in lora)} MiB "
                   f"(spread {max(lora) - min(lora):,.0f} MiB).\n")
    return md


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke size: tiny-bert, 2 steps per trial")
    ap.add_argument("--arm", choices=ARMS, help=argparse.SUPPRESS)  # the child process of one arm
    ap.add_argument("--out", type=Path, default=OUT_DIR)
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.arm:
        print(json.dumps(run_arm(args.arm, args.quick)))
        return 0
    arms = {}
    for arm in ARMS:  # a fresh process per arm: neither inherits the other's heap
        proc = subprocess.run([sys.executable, __file__, "--arm", arm, *(["--quick"] if args.quick else [])], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr[-3000:])
            return proc.returncode
        arms[arm] = json.loads(proc.stdout.strip().splitlines()[-1])
    command = [".venv/bin/python", "benchmarks/peak_memory.py", *(argv if argv is not None else sys.argv[1:])]
    caps = {"sequence": list(SEQUENCE), "quick": args.quick}
    args.out.mkdir(parents=True, exist_ok=True)
    md = render(arms, command, caps)
    write_results("peak_memory_quick" if args.quick else "peak_memory", {"arms": arms, **caps}, md, args.out)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
