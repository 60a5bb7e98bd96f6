"""`unipetl count`: paper and trainable parameter counts of a variant on a model, offline."""

from __future__ import annotations

import argparse
import json

from unipetl.spaces.accounting import count
from unipetl.spaces.registry import UnipetlError
from unipetl.spaces.shapes import resolve_shape
from unipetl.spaces.variant import Variant

NAME = "count"
HELP = "count a variant's parameters (paper count and trainable count) on a model, without building it"
EPILOG = """examples:
  unipetl count --model bart-large --preset mam:l=30,r=512,s=4
  unipetl count --model roberta-base --preset lora:r=8 --json
  unipetl count --model ./my-model-dir --variant my_variant.json
built-in cards: see `unipetl ls models`"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="built-in card (bart-large, mbart-large-cc25, roberta-base, minilm, t5-base, gpt2, llama-1b, …) or a local model directory")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--preset", help="NAME[:key=value,...], e.g. prefix:l=200, lora:r=8, mam:l=30,r=512,s=4")
    g.add_argument("--variant", metavar="FILE", help="a variant JSON file")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def load_variant(args: argparse.Namespace) -> Variant:
    from unipetl.spaces.presets import parse_preset

    if getattr(args, "variant", None):
        return Variant.from_file(args.variant)
    if getattr(args, "preset", None):
        return parse_preset(args.preset)
    raise UnipetlError("give a variant with --preset NAME[:key=value,...] or --variant FILE.")


def run(args: argparse.Namespace) -> int:
    variant = load_variant(args)
    shape = resolve_shape(args.model)
    counts = count(variant, shape)
    out = {"model": shape.name, "variant": variant.to_dict(), "description": variant.describe(), **counts.to_dict()}
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"model      {shape.name}  ({shape.base_params:,} backbone parameters)")
    print(f"variant    {variant.name or '(from file)'}: {variant.describe()}")
    print(f"paper      {counts.paper_params:>14,}  {counts.paper_percent:8.4f} %")
    print(f"trainable  {counts.trainable_params:>14,}  {counts.trainable_percent:8.4f} %   (task head not included)")
    for m in counts.modules:
        print(f"  - {m.description}: {m.instances} sites, paper {m.paper:,}, trainable {m.trainable:,}")
    print(f"percentages are over {counts.denominator}")
    return 0
