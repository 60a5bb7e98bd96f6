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
import re
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn
from transformers.pytorch_utils import Conv1D

from unipetl.spaces import families
from unipetl.spaces.layers import HeadSlots, Lora
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
    """'lora' | 'prompt' | 'prefix', or a UnipetlError saying why PEFT cannot express the variant."""
    v = realized.variant
    what = v.describe()
    if v.full_finetune or v.bitfit:
        raise UnipetlError(f"export --format peft: {what!r} is not a PEFT adapter (full fine-tuning / BitFit have no PEFT format).")
    mods = v.modules
    if not mods and v.prompt_length:
        return "prompt"
    if mods and not v.prompt_length and all(m.kind == "lora" for m in mods):
        bad = [m for m in mods if m.composition not in ("add", "scaled")]
        if bad:
            raise UnipetlError(f"export --format peft: LoRA composition {bad[0].composition!r} has no PEFT equivalent (PEFT scales by a fixed lora_alpha / r).")
        return "lora"
    if len(mods) == 1 and not v.prompt_length and mods[0].kind == "heads" and mods[0].function == "softmax":
        m = mods[0]
        if realized.shape.is_encoder_decoder or realized.shape.stacks[0].name != "decoder":
            raise UnipetlError(f"export --format peft: prefix tuning exports only for decoder-only models; on {realized.shape.model_type!r} PEFT passes "
                               "prefixes as a KV cache that does not reach the same attention sublayers as ours (encoder / cross attention).")
        if m.layers is not None:
            raise UnipetlError(f"export --format peft: PEFT puts a prefix in every layer, this one is only in layers {list(m.layers)}.")
        return "prefix"
    raise UnipetlError(f"export --format peft: {what!r} is not expressible in PEFT (LoRA, prompt tuning or plain prefix tuning only).")


def _lora_tensors(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, tuple[int, float]], bool]:
    """PEFT LoRA tensors by module path, and (rank, alpha) per path."""
    paths = {id(m): n for n, m in model.named_modules()}
    per_module: dict[str, list[tuple[torch.Tensor, torch.Tensor, slice | None, float, nn.Module]]] = {}
    for lora in (m for m in model.modules() if isinstance(m, Lora)):
        for key, (mod, slc) in lora.targets.items():
            f = lora.factors[key]
            per_module.setdefault(paths[id(mod)], []).append((f.lora_A.weight.detach(), f.lora_B.weight.detach(), slc, lora.s, mod))
    tensors: dict[str, torch.Tensor] = {}
    ranks: dict[str, tuple[int, float]] = {}
    conv = False
    for path, parts in per_module.items():
        mod = parts[0][4]
        conv |= isinstance(mod, Conv1D)
        d_out = mod.weight.shape[1] if isinstance(mod, Conv1D) else mod.weight.shape[0]
        if len(parts) == 1 and parts[0][2] is None:
            a, b, _, s, _ = parts[0]
            tensors[f"{path}.lora_A.weight"], tensors[f"{path}.lora_B.weight"] = a, b
            ranks[path] = (a.shape[0], s * a.shape[0])  # PEFT scaling alpha / r == s
            continue
        rank = sum(a.shape[0] for a, *_ in parts)
        big_b = torch.zeros(d_out, rank, dtype=parts[0][1].dtype)
        off = 0
        for a, b, slc, s, _ in parts:
            rows = slc if slc is not None else slice(0, d_out)
            big_b[rows, off : off + a.shape[0]] = b * s  # scale folded in: alpha == rank below
            off += a.shape[0]
        tensors[f"{path}.lora_A.weight"] = torch.cat([a for a, *_ in parts], dim=0)
        tensors[f"{path}.lora_B.weight"] = big_b
        ranks[path] = (rank, float(rank))
    return tensors, ranks, conv


def _prefix_embeddings(model: nn.Module) -> torch.Tensor:
    slots = [m for m in model.modules() if isinstance(m, HeadSlots)]  # layer order = module order
    with torch.no_grad():
        kv = torch.stack([torch.stack(s.kv()) for s in slots])  # (layers, 2, kv_heads, l, hd)
    layers, _, heads, l, hd = kv.shape
    return kv.permute(3, 0, 1, 2, 4).reshape(l, layers * 2 * heads * hd)


def export_peft(realized: Realized, directory: str | Path, *, base_model_name_or_path: str) -> Path:
    """Write a PEFT adapter directory for a LoRA / prompt / (decoder-only) prefix variant."""
    kind = peft_kind(realized)
    model = realized.model
    head, head_modules = _head(model)
    config: dict[str, Any] = {"base_model_name_or_path": base_model_name_or_path, "task_type": _task_type(model), "inference_mode": True,
                              "revision": None, "modules_to_save": head_modules or None}
    if kind == "lora":
        tensors, ranks, conv = _lora_tensors(model)
        (r, alpha), _ = Counter(ranks.values()).most_common(1)[0]
        config.update(peft_type="LORA", r=r, lora_alpha=alpha, target_modules=sorted(ranks), lora_dropout=max(m.dropout for m in realized.variant.modules),
                      bias="none", fan_in_fan_out=conv, use_rslora=False, init_lora_weights=True,
                      rank_pattern={re.escape(p): ra for p, (ra, al) in ranks.items() if ra != r},
                      alpha_pattern={re.escape(p): al for p, (ra, al) in ranks.items() if al != alpha})
        out = {f"base_model.model.{k}": v for k, v in tensors.items()}
        out.update({f"base_model.model.{k}": v for k, v in head.items()})
    else:
        d = realized.shape.d_model
        st = realized.shape.stacks[-1]
        if kind == "prompt":
            emb = families.backbone(model).petl_prompt.petl_prompt.detach()
            config.update(peft_type="PROMPT_TUNING", num_virtual_tokens=emb.shape[0], token_dim=d, num_transformer_submodules=1,
                          num_attention_heads=st.n_heads, num_layers=st.n_layers, prompt_tuning_init="RANDOM")
        else:
            emb = _prefix_embeddings(model)
            config.update(peft_type="PREFIX_TUNING", num_virtual_tokens=emb.shape[0], token_dim=st.kv_dim, encoder_hidden_size=st.kv_dim,
                          num_transformer_submodules=1, num_attention_heads=st.n_kv_heads, num_layers=st.n_layers, prefix_projection=False)
        out = {"prompt_embeddings": emb}
        out.update({f"base_model.{k}": v for k, v in head.items()})
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().to("cpu").contiguous().clone() for k, v in out.items()}, str(target / WEIGHTS_FILE), metadata={"format": "pt"})
    (target / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    logger.info("exported %s as PEFT %s to %s (%d tensors)", realized.variant.describe(), config["peft_type"], target, len(out))
    return target
