"""Per-trial cost of the named methods on SST-2 / MiniLM, and each step time as a ratio to full fine-tuning.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/trial_cost.py --data-dir ../shared/data --out runs/bench/trial_cost

Every method runs the same trial (8k training examples, 1 epoch, full dev set, batch 32) in this
one process, so the ratios compare like with like. A frozen backbone still needs the backward pass
through the activations — only the weight gradients go away — so ≈ 2/3 of the full step is the
floor a PETL step can reach. Writes OUT.json (all records, trimmed of curves) and OUT.md (the table).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

from unipetl.evaluators.trial import TrialConfig, run_trial
from unipetl.spaces.presets import parse_preset

log = logging.getLogger(__name__)

METHODS = [  # (label, preset, lr): lrs that suit each method on MiniLM
    ("linear probe", "probe", 1e-3),
    ("BitFit", "bitfit", 1e-3),
    ("LoRA r=8", "lora:r=8", 2e-3),
    ("prefix l=16", "prefix:l=16", 2e-3),
    ("MAM l=16 r=16 s=2", "mam:l=16,r=16,s=2", 2e-3),
    ("full fine-tuning", "full", 5e-5),
]


def measure(data_dir: str, max_train: int, batch_size: int, methods: list[tuple[str, str, float]]) -> list[dict[str, object]]:
    rows = []
    for label, preset, lr in methods:
        cfg = TrialConfig(task="sst2", model="minilm", variant=parse_preset(preset), data_dir=data_dir, max_train_examples=max_train,
                          epochs=1.0, batch_size=batch_size, lr=lr)
        rec = run_trial(cfg)
        log.warning("%s: %s, accuracy %s, wall %.1f s, step %.3f s", label, rec["status"], rec["metric"], rec["wall_seconds"], rec["step_seconds"])
        rows.append({"method": label, "preset": preset, "lr": lr, "status": rec["status"], "accuracy": rec["metric"],
                     "paper_params": rec["paper_params"], "paper_percent": rec["paper_percent"], "trainable_params": rec["trainable_params"],
                     "wall_seconds": rec["wall_seconds"], "step_seconds": rec["step_seconds"], "steps": rec["train_settings"]["steps"],
                     "train_tokens_per_second": rec["train_tokens_per_second"], "peak_memory_bytes": rec["peak_memory_bytes"], "device": rec["device"]})
    full = next((r["step_seconds"] for r in rows if r["preset"] == "full"), None)
    for r in rows:
        r["step_ratio_to_full"] = r["step_seconds"] / full if full else None
    return rows


def to_markdown(rows: list[dict[str, object]]) -> str:
    lines = ["| method | paper params (%) | dev acc | trial wall (s) | step (s) | step / full |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        acc = f"{r['accuracy']:.4f}" if r["accuracy"] is not None else "-"
        ratio = f"{r['step_ratio_to_full']:.2f}" if r["step_ratio_to_full"] is not None else "-"
        lines.append(f"| {r['method']} | {r['paper_params']:,} ({r['paper_percent']:.3f}) | {acc} | {r['wall_seconds']:.1f} | {r['step_seconds']:.3f} | {ratio} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=os.environ.get("UNIPETL_DATA_DIR", "../shared/data"))
    p.add_argument("--max-train-examples", type=int, default=8000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--only", nargs="*", help="method presets to run (default: all six)")
    p.add_argument("--out", default="runs/bench/trial_cost", help="writes OUT.json and OUT.md")
    args = p.parse_args()
    methods = [m for m in METHODS if not args.only or m[1] in args.only]
    rows = measure(args.data_dir, args.max_train_examples, args.batch_size, methods)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    table = to_markdown(rows)
    out.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
