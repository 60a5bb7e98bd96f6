"""`unipetl run`: one trial end to end — fine-tune a variant on a task, print the metric, write the record."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from unipetl.spaces.registry import UnipetlError

log = logging.getLogger(__name__)

NAME = "run"
HELP = "fine-tune one variant on one task and write DIR/record.json plus the variant's weights"
EPILOG = """examples:
  unipetl run --task sst2 --model minilm --preset mam:l=16,r=16,s=2 --data-dir ../shared/data --max-train-examples 4000 --out runs/mam
  unipetl run --task sst2 --model minilm --preset lora:r=8 --lr 5e-4 --epochs 1 --out runs/lora
  unipetl run --task xsum --model tiny-bart --preset prefix:l=30 --max-steps 50 --max-new-tokens 20 --out runs/xsum-smoke
  unipetl run --task my_task.yaml --model ./my-model --variant my_variant.json --out runs/mine
outputs: DIR/record.json (the trial record) and DIR/adapter.safetensors (variant + head tensors only), DIR/variant.json and DIR/unipetl.json
(reload with spaces.io.load_variant; convert with `unipetl export --from DIR --format peft --out DIR2`).
data: --data-dir, else $UNIPETL_DATA_DIR, else the dataset hub (when reachable)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", required=True, help="sst2, mnli, cola, mrpc, rte, qnli, qqp, stsb, wnli, xsum, wmt16-en-ro, or a task file (.yaml / .json)")
    p.add_argument("--model", required=True, help="minilm, tiny-bert / tiny-bart / …, a hub name (needs a hub) or a local model directory")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--preset", help="NAME[:key=value,...], e.g. lora:r=8, prefix:l=30, mam:l=16,r=16,s=2")
    g.add_argument("--variant", metavar="FILE", help="a variant JSON file")
    p.add_argument("--out", required=True, metavar="DIR", help="where record.json and the trained variant (adapter.safetensors, variant.json, unipetl.json) go")
    p.add_argument("--data-dir", help="data directory laid out as <task>/<split>.jsonl (default: $UNIPETL_DATA_DIR)")
    add_setting_arguments(p.add_argument_group("training settings (TrialConfig fields; also a study file's train: keys)"))
    p.add_argument("--json", action="store_true", help="print the record as JSON instead of a summary")


def add_setting_arguments(group: Any) -> None:
    """One flag per TrialConfig training setting (--max-train-examples, --lr, …), default unset:
    a flag not given leaves the study file's value, else TrialConfig's default."""
    from unipetl.evaluators.trial import TrialConfig, setting_type, settings

    defaults = TrialConfig.__dataclass_fields__
    for f in settings():
        default = defaults[f.name].default
        shown = "" if default is None else f" (default {default})"
        group.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=setting_type(f), default=None, metavar=f.name.upper(),
                           help=f.metadata["help"].replace("%", "%%") + shown)


def settings_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The training settings given on the command line (flags left unset are absent)."""
    from unipetl.evaluators.trial import settings

    return {f.name: getattr(args, f.name) for f in settings() if getattr(args, f.name, None) is not None}


def run(args: argparse.Namespace) -> int:
    from unipetl.evaluators.trial import WEIGHTS_FILE, TrialConfig, run_trial
    from unipetl.search.commands.count import load_variant

    variant = load_variant(args)
    if variant.name is None and args.preset:
        variant = variant.replace(name=args.preset)
    config = TrialConfig(task=args.task, model=args.model, variant=variant, data_dir=args.data_dir, **settings_from_args(args))
    record = run_trial(config, out_dir=args.out, progress=True)
    if args.json:
        print(json.dumps(record))
    else:
        metric = record["metric"]
        shown = f"{metric:.4f}" if metric is not None else "none"
        print(f"{record['task']} / {record['model']} / {record['variant_description']}")
        print(f"status {record['status']}" + (f": {record['error']}" if record["error"] else ""))
        if record.get("lr"):
            rates = ", ".join(f"{k} {v:.3g}" for k, v in record["lr"]["rates"].items())
            print(f"learning rates: {rates} ({'--lr' if record['lr']['source'] == 'override' else 'method-aware'})")
        print(f"{record['main_metric']} = {shown}  (best step {record['best_step']}; " + ", ".join(f"{k} {v:.4f}" for k, v in record["metrics"].items()) + ")")
        print(f"paper params {record['paper_params']:,} ({record['paper_percent']:.4f} %), trainable {record['trainable_params']:,} + head {record['head_params']:,}")
        print(f"wall {record['wall_seconds']:.1f} s, {record['train_tokens_per_second']:.0f} train tokens/s; wrote {args.out}/record.json"
              + ("" if record["status"] == "failed" else f" and {args.out}/{WEIGHTS_FILE}"))
    if record["status"] == "failed":
        print(f"unipetl run: trial failed: {record['error']}", file=sys.stderr)
        return 1
    return 0


__all__ = ["NAME", "HELP", "EPILOG", "add_arguments", "run", "UnipetlError"]
