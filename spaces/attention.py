"""Head-wise modules inside attention: prefix concat and multi-head parallel adapters.

transformers 5.x routes every attention of the supported families through
`ALL_ATTENTION_FUNCTIONS[config._attn_implementation](module, query, key, value, mask, ...)`,
after the projections, RoPE and the KV-cache update. That is the one point where prefix tuning
can be the *exact* concat of learned keys / values (the identity tests/test_prefix_identity.py checks):

- prefix keys are concatenated after RoPE (they are not rotated) and after the cache update
  (they are never cached, so generation with a cache prepends them at every step and beam
  search just sees a larger batch: they are expanded to the query batch);
- the mask gets "attend" columns for the prefix; T5's position bias gets zero columns;
- GQA: P_k / P_v have the model's number of KV heads, repeated like the real keys.

We register `unipetl_sdpa` / `unipetl_eager` in `AttentionInterface` *and* the matching mask
builders in `AttentionMaskInterface`: without the latter transformers builds no mask at all and
padding is silently ignored. Modules without head-wise slots pass straight
through to the wrapped implementation, so everything else is unchanged.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask

from unipetl.spaces.registry import UnipetlError

logger = logging.getLogger(__name__)

WRAPPED = {"sdpa": "unipetl_sdpa", "eager": "unipetl_eager"}


def _eager(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: torch.Tensor | None,
           scaling: float | None = None, dropout: float = 0.0, position_bias: torch.Tensor | None = None, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain softmax attention with the options the families' own eager functions have."""
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    scaling = query.size(-1) ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if position_bias is not None:
        scores = scores + position_bias
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = torch.nn.functional.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


def _pad_mask(mask: torch.Tensor | None, query: torch.Tensor, key_len: int, n_prefix: int, causal: bool) -> torch.Tensor | None:
    """Prepend `n_prefix` attend-columns; build the (bottom-right aligned) causal mask if none was given."""
    q_len = query.shape[2]
    if mask is None:
        if not (causal and q_len > 1):
            return None
        i = torch.arange(q_len, device=query.device)[:, None]
        j = torch.arange(key_len, device=query.device)[None, :]
        mask = (j <= i + (key_len - q_len))[None, None]
    if mask.dtype == torch.bool:
        cols = torch.ones(*mask.shape[:-1], n_prefix, dtype=torch.bool, device=mask.device)
    else:
        cols = torch.zeros(*mask.shape[:-1], n_prefix, dtype=mask.dtype, device=mask.device)
    return torch.cat([cols, mask], dim=-1)


def _with_slots(base: Any) -> Any:
    def attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: torch.Tensor | None, **kwargs: Any) -> tuple[torch.Tensor, Any]:
        slots = getattr(module, "petl_heads", None)
        if not slots:
            return base(module, query, key, value, attention_mask, **kwargs)
        prefixes = [s for s in slots if s.prefix]
        if prefixes:
            batch = query.shape[0]
            kv = [s.kv() for s in prefixes]
            pk = torch.cat([k for k, _ in kv], dim=1).to(key.dtype)
            pv = torch.cat([v for _, v in kv], dim=1).to(value.dtype)
            n = pk.shape[1]
            if key.shape[0] != batch:  # a cache built for another batch size: refuse rather than mix rows
                raise UnipetlError(f"prefix attention: key batch {key.shape[0]} differs from query batch {batch}.")
            causal = kwargs.get("is_causal")
            causal = getattr(module, "is_causal", False) if causal is None else causal
            attention_mask = _pad_mask(attention_mask, query, key.shape[2], n, bool(causal))
            key = torch.cat([pk.unsqueeze(0).expand(batch, -1, -1, -1), key], dim=2)
            value = torch.cat([pv.unsqueeze(0).expand(batch, -1, -1, -1), value], dim=2)
            kwargs["is_causal"] = False  # the mask (if any) is explicit now
            bias = kwargs.get("position_bias")
            if bias is not None:
                zeros = torch.zeros(*bias.shape[:-1], n, dtype=bias.dtype, device=bias.device)
                kwargs["position_bias"] = torch.cat([zeros, bias], dim=-1)
        out, weights = base(module, query, key, value, attention_mask, **kwargs)
        scaling = kwargs.get("scaling") or query.shape[-1] ** -0.5
        for s in slots:
            if not s.prefix:
                out = out + s.mh_delta(query, scaling).transpose(1, 2).to(out.dtype)
        return out, weights

    return attention


_REGISTERED = False


def register() -> None:
    """Register the wrapped implementations and their mask builders (idempotent)."""
    global _REGISTERED
    if _REGISTERED:
        return
    AttentionInterface.register("unipetl_sdpa", _with_slots(sdpa_attention_forward))
    AttentionInterface.register("unipetl_eager", _with_slots(_eager))
    AttentionMaskInterface.register("unipetl_sdpa", sdpa_mask)
    AttentionMaskInterface.register("unipetl_eager", eager_mask)
    _REGISTERED = True


def use_slots(model: torch.nn.Module) -> None:
    """Switch a model (and its sub-configs) to the wrapped version of its own implementation."""
    register()
    current = model.config._attn_implementation or "eager"
    if current in WRAPPED.values():
        return
    if current not in WRAPPED:
        raise UnipetlError(f"prefix / MH PA need attention implementation 'sdpa' or 'eager', got {current!r}.")
    model.set_attn_implementation(WRAPPED[current])
