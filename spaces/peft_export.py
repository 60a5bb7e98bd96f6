"""Export a realized variant as an HF PEFT (0.21) adapter directory, where PEFT can express it.

`export_peft(realized, directory, base_model_name_or_path=...)` writes `adapter_config.json` and
`adapter_model.safetensors` in the layout `peft.PeftModel.from_pretrained` reads (key names as
`peft.utils.get_peft_model_state_dict` produces them for PEFT's own models). No peft import is
needed to write; the tests load every export with peft itself.

What maps, and how (checked against PEFT's source in .venv, see tests/test_peft_export.py):

- LoRA (add or fixed-scale composition, any targets, any layers): one PEFT `lora_A` / `lora_B`
  pair per target projection, `lora_alpha = s·r` so PEFT's scaling α/r equals our s. GPT-2's
  fused c_attn (q / k / v are column slices of one Conv1D) becomes one LoRA of rank Σr on c_attn
  whose B is block-structured: rows of untargeted slices are zero, each block carries its own
  s (folded into B, α = rank there). The product B·A is exactly our update; the stored size grows
  by those zero blocks. Per-module ranks / alphas go to `rank_pattern` / `alpha_pattern`.
  Gated or learned-scale LoRA (UniPELT) has no PEFT equivalent and is refused.
- Prompt tuning: `prompt_embeddings` (l, d), `num_transformer_submodules = 1` (PEFT then
  prepends to the encoder input only for seq2seq models, as we do).
- Prefix tuning (plain, or reparametrized and then materialized): decoder-only models only, as
  PEFT's `past_key_values` layout (`prompt_embeddings` (l, layers·2·kv_dim), viewed as
  (l, layers·2, kv_heads, head_dim)). PEFT puts the prefix in the KV cache, so the real tokens
  sit at positions l..l+n−1, while our prefixes are position-free (tokens at 0..n−1): the export
  equals our model run with `position_ids` shifted by l, not our model as trained. Encoder-
  decoder prefixes (PEFT: decoder self-attention only) and encoder prefixes are refused.
The task head goes into `modules_to_save` (keys `base_model.model.<name>` for LoRA,
`base_model.<name>` for prompt learning, PEFT's convention).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from unipetl.spaces.kinds import active_extras, get_kind
from unipetl.spaces.realize import Realized, _head_params
from unipetl.spaces.registry import UnipetlError

logger = logging.getLogger(__name__)

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"


def _task_type(model: nn.Module) -> str | None:
    name = type(model).__name__
    for suffix, task in (("ForSequenceClassification", "SEQ_CLS"), ("ForConditionalGeneration", "SEQ_2_SEQ_LM"), ("ForCausalLM", "CAUSAL_LM"),
                         ("LMHeadModel", "CAUSAL_LM"), ("ForSeq2SeqLM", "SEQ_2_SEQ_LM")):
        if name.endswith(suffix):
            return task
    return None


def _head(model: nn.Module) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Trainable head tensors by full name, and the top-level modules that hold them."""
    ids = {id(p) for p in _head_params(model) if p.requires_grad}
    tensors = {n: p.detach() for n, p in model.named_parameters() if id(p) in ids}
    return tensors, sorted({n.split(".")[0] for n in tensors})


def peft_kind(realized: Realized) -> str:
    """'prompt', or the PEFT method the variant's kind exports to ('lora', 'prefix', …), or a
    UnipetlError saying why PEFT cannot express the variant. Every module must map to the same
    PEFT method (`ModuleKind.peft_method`), which the kind then checks (`check_peft`)."""
    v = realized.variant
    what = v.describe()
    extras = active_extras(v)
    if any(k.peft_method(v) is None for k in extras):
        raise UnipetlError(f"export --format peft: {what!r} is not a PEFT adapter (full fine-tuning / BitFit have no PEFT format).")
    mods = v.modules
    if not mods and len(extras) == 1:
        return extras[0].peft_method(v)  # type: ignore[return-value]
    if mods and not extras:
        kinds = {m.kind for m in mods}
        methods = {get_kind(m.kind).peft_method(m) for m in mods}
        if len(kinds) == 1 and len(methods) == 1 and None not in methods and get_kind(mods[0].kind).check_peft(mods, realized):
            return methods.pop()
    raise UnipetlError(f"export --format peft: {what!r} is not expressible in PEFT (LoRA, prompt tuning or plain prefix tuning only).")


def export_peft(realized: Realized, directory: str | Path, *, base_model_name_or_path: str) -> Path:
    """Write a PEFT adapter directory for a LoRA / prompt / (decoder-only) prefix variant."""
    peft_kind(realized)  # raises for what PEFT cannot express
    model = realized.model
    head, head_modules = _head(model)
    config: dict[str, Any] = {"base_model_name_or_path": base_model_name_or_path, "task_type": _task_type(model), "inference_mode": True,
                              "revision": None, "modules_to_save": head_modules or None}
    # every kind exports itself: ModuleKind.export_peft, or ExtraKind.export_peft (prompt tuning)
    v = realized.variant
    exporter = get_kind(v.modules[0].kind).export_peft if v.modules else active_extras(v)[0].export_peft
    out, head_prefix = exporter(realized, config)
    out.update({f"{head_prefix}{k}": v for k, v in head.items()})
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().to("cpu").contiguous().clone() for k, v in out.items()}, str(target / WEIGHTS_FILE), metadata={"format": "pt"})
    (target / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    logger.info("exported %s as PEFT %s to %s (%d tensors)", realized.variant.describe(), config["peft_type"], target, len(out))
    return target
