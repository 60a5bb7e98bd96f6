"""`unipetl export`: turn a saved variant directory into another library's adapter format."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from unipetl.spaces.registry import UnipetlError

log = logging.getLogger(__name__)

NAME = "export"
HELP = "export a saved variant (adapter.safetensors + variant.json + unipetl.json) to a PEFT adapter directory"
EPILOG = """examples:
  unipetl export --from runs/lora --format peft --out runs/lora-peft
  unipetl export --from runs/lora --format peft --out runs/lora-peft --base-model sentence-transformers/all-MiniLM-L6-v2 --json
then, in Python: PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(BASE), "runs/lora-peft")
PEFT can express LoRA (add / fixed scale), prompt tuning, and prefix tuning on decoder-only models
(PEFT shifts the real tokens' positions by l there); anything else is refused with the reason.
No base weights are needed: the model is rebuilt empty from the config stored in unipetl.json."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="source", required=True, metavar="DIR", help="a saved variant directory (spaces.io.save_variant layout)")
    p.add_argument("--format", required=True, choices=["peft"], help="target format (peft: HF PEFT 0.21 adapter directory)")
    p.add_argument("--out", required=True, metavar="DIR2", help="where adapter_config.json and adapter_model.safetensors go")
    p.add_argument("--base-model", metavar="NAME_OR_PATH", help="base_model_name_or_path written into the PEFT config (default: the id in unipetl.json)")
    p.add_argument("--force", action="store_true", help="overwrite an existing export in DIR2")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def skeleton(meta: dict[str, Any], where: str) -> Any:
    """An uninitialized model of the saved base model's class and config (weights are not needed to export)."""
    import torch
    import transformers
    from transformers import CONFIG_MAPPING

    base, head = meta.get("base_model", {}), meta.get("head", {})
    cfg = dict(base.get("config") or {})
    if not cfg:
        raise UnipetlError(f"{where}: no base model config in unipetl.json (a `unipetl run` directory from before save_variant?); re-save it with spaces.io.save_variant.")
    model_type = cfg.pop("model_type", None)
    if model_type not in CONFIG_MAPPING:
        raise UnipetlError(f"{where}: unipetl.json names model type {model_type!r}, which transformers {transformers.__version__} does not know.")
    cls_name = head.get("class") or base.get("architecture")
    cls = getattr(transformers, str(cls_name), None)
    if cls is None or not hasattr(cls, "_from_config"):
        raise UnipetlError(f"{where}: unipetl.json names model class {cls_name!r}, which is not a transformers model class.")
    config = CONFIG_MAPPING[model_type].from_dict(cfg)
    with torch.device("meta"):
        model = cls._from_config(config)
    return model.to_empty(device="cpu").eval()


def run(args: argparse.Namespace) -> int:
    from unipetl.spaces.io import load_variant, read_saved
    from unipetl.spaces.peft_export import CONFIG_FILE, WEIGHTS_FILE, export_peft, peft_kind

    saved = read_saved(args.source)
    out = Path(args.out)
    if (out / WEIGHTS_FILE).exists() and not args.force:
        raise UnipetlError(f"--out {str(out)!r} already holds a PEFT adapter; pass --force to overwrite it.")
    model = skeleton(saved.meta, str(saved.directory))
    realized = load_variant(model, saved.directory, check_weights=False)  # the skeleton's frozen weights are empty on purpose
    peft_kind(realized)  # refuse before anything is written
    base = args.base_model or saved.base_model_id or ""
    export_peft(realized, out, base_model_name_or_path=base)
    config = json.loads((out / CONFIG_FILE).read_text(encoding="utf-8"))
    if args.json:
        print(json.dumps({"out": str(out), "peft_type": config["peft_type"], "base_model_name_or_path": base, "variant": realized.variant.describe()}))
    else:
        print(f"exported {realized.variant.describe()} as PEFT {config['peft_type']} to {out} (base model {base or 'unset'})")
    return 0
