"""The prefix identity, checked numerically on every attention kind.

    Attn(q, [P_k; K], [P_v; V]) = (1 − λ)·Attn(q, K, V) + λ·softmax(q P_kᵀ) P_v

The left side is what the realized model computes (the concat inside the attention function);
the right side is computed here per head from the layer's own q / k / v projections, with the
padding (and causal) mask applied to the real keys only.
"""

from __future__ import annotations

import pytest
import torch

from unipetl.spaces import families
from unipetl.spaces.presets import parse_preset
from unipetl.spaces.realize import apply_variant
from unipetl.spaces.testing import tiny_model

CASES = [
    ("bert", "encoder", "self_attn"),
    ("roberta", "encoder", "self_attn"),
    ("bart", "encoder", "self_attn"),
    ("bart", "decoder", "self_attn"),
    ("bart", "decoder", "cross_attn"),
    ("mbart", "encoder", "self_attn"),
    ("mbart", "decoder", "self_attn"),
    ("mbart", "decoder", "cross_attn"),
    ("bert-eager", "encoder", "self_attn"),
    ("bart-eager", "decoder", "self_attn"),
    ("bart-eager", "decoder", "cross_attn"),
]


def _gated_formula(q, k, v, pk, pv, key_mask, scaling):
    """(B, Q, H, hd) expected head outputs; key_mask (B, Q, K) True = attend."""
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, *, hd)
    s_c = (q @ k.transpose(-1, -2)) * scaling
    s_c = s_c.masked_fill(~key_mask[:, None], float("-inf"))
    s_p = torch.einsum("bhqd,hld->bhql", q, pk) * scaling
    h = torch.softmax(s_c, -1) @ v
    prefix_part = torch.softmax(s_p, -1) @ pv
    lse_p, lse_c = torch.logsumexp(s_p, -1, keepdim=True), torch.logsumexp(s_c, -1, keepdim=True)
    lam = torch.exp(lse_p - torch.logaddexp(lse_p, lse_c))
    return ((1 - lam) * h + lam * prefix_part).transpose(1, 2)


def _padded_inputs(seq2seq: bool) -> tuple[dict, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """A batch of 3 with two padded rows (and a padded decoder row for seq2seq models)."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 100, (3, 8), generator=g)
    mask = torch.ones(3, 8, dtype=torch.long)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    kwargs = {"input_ids": ids, "attention_mask": mask}
    dec_mask = None
    if seq2seq:
        dec_mask = torch.ones(3, 5, dtype=torch.long)
        dec_mask[2, 4:] = 0
        kwargs.update(decoder_input_ids=torch.randint(5, 100, (3, 5), generator=g), decoder_attention_mask=dec_mask)
    return kwargs, ids, mask, dec_mask


@pytest.mark.parametrize(("family", "stack", "sub"), CASES)
def test_prefix_concat_equals_gated_formula(family: str, stack: str, sub: str) -> None:
    family, _, impl = family.partition("-")  # "-eager": the model's eager attention is kept (wrapped)
    model = tiny_model(family, "base", **({"attn_implementation": impl} if impl else {}))
    realized = apply_variant(model, parse_preset("prefix:l=3"))
    refs = families.sublayer(model, stack, sub, 1)
    assert model.config._attn_implementation == f"unipetl_{impl or 'sdpa'}"
    slots = refs.attn.petl_heads[0]
    torch.manual_seed(0)
    with torch.no_grad():  # spread the keys so the gate λ is far from 0 and 1
        slots.petl_k.mul_(0.5)
    seen: dict[str, torch.Tensor] = {}
    hooks = [refs.proj[t][0][0].register_forward_hook(lambda m, a, o, t=t: seen.__setitem__(t, o)) for t in ("q", "k", "v")]
    hooks.append(refs.out.register_forward_pre_hook(lambda m, a: seen.__setitem__("heads", a[0])))
    kwargs, ids, mask, dec_mask = _padded_inputs(realized.shape.is_encoder_decoder)
    with torch.no_grad():
        model(**kwargs)
    for h in hooks:
        h.remove()
    st = realized.shape.stack(stack)
    B = ids.shape[0]
    q, k, v = (seen[t].view(B, seen[t].shape[1], -1, st.head_dim) for t in ("q", "k", "v"))
    Q, K = q.shape[1], k.shape[1]
    if sub == "cross_attn" or stack == "encoder":
        key_mask = mask.bool()[:, None, :].expand(B, Q, K)
    else:
        causal = torch.ones(Q, K, dtype=torch.bool).tril()
        key_mask = causal[None] & dec_mask.bool()[:, None, :]
    pk, pv = slots.kv()
    expected = _gated_formula(q, k, v, pk, pv, key_mask, st.head_dim**-0.5).reshape(B, Q, -1)
    got = seen["heads"]
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= 1e-5
    # and the prefix really matters: the base attention alone differs
    base_only = _gated_formula(q, k, v, pk, pv * 0, key_mask, st.head_dim**-0.5)
    assert (got - base_only.reshape(B, Q, -1)).abs().max().item() > 1e-3


# T5 (relative position bias, unscaled scores), GPT-2 (fused projection) and the RoPE + GQA
# families: the q / k / v the identity speaks of are the ones handed to the attention function
# (after RoPE, per KV head), so they are recorded there, around the registered implementation.
POSITIONAL_CASES = [
    ("t5", "encoder", "self_attn"),
    ("t5", "decoder", "self_attn"),
    ("t5", "decoder", "cross_attn"),
    ("gpt2", "decoder", "self_attn"),
    ("llama", "decoder", "self_attn"),
    ("qwen2", "decoder", "self_attn"),
    ("llama-eager", "decoder", "self_attn"),
]


def _record_attention(name: str, target: torch.nn.Module, seen: dict):
    """Wrap the registered implementation `name`; returns a function that restores it."""
    from transformers import AttentionInterface

    original = AttentionInterface._global_mapping[name]

    def recorder(module, query, key, value, attention_mask, **kwargs):
        out = original(module, query, key, value, attention_mask, **kwargs)
        if module is target:
            seen.update(query=query, key=key, value=value, kwargs=kwargs, out=out[0])
        return out

    AttentionInterface.register(name, recorder)
    return lambda: AttentionInterface.register(name, original)


@pytest.mark.parametrize(("family", "stack", "sub"), POSITIONAL_CASES)
def test_prefix_concat_identity_with_position_bias_rope_and_gqa(family: str, stack: str, sub: str) -> None:
    family, _, impl = family.partition("-")
    model = tiny_model(family, "base", **({"attn_implementation": impl} if impl else {}))
    realized = apply_variant(model, parse_preset("prefix:l=3"))
    refs = families.sublayer(model, stack, sub, 1)
    slots = refs.attn.petl_heads[0]
    with torch.no_grad():
        slots.petl_k.mul_(0.5)
    seen: dict = {}
    restore = _record_attention(model.config._attn_implementation, refs.attn, seen)
    kwargs, ids, mask, dec_mask = _padded_inputs(realized.shape.is_encoder_decoder)
    try:
        with torch.no_grad():
            model(**kwargs)
    finally:
        restore()
    q, k, v = seen["query"], seen["key"], seen["value"]  # (B, H, Q, hd), (B, H_kv, K, hd)
    B, H, Q, hd = q.shape
    groups = H // k.shape[1]
    if family in ("llama", "qwen2"):
        assert groups > 1  # the GQA path is the one exercised
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    pk, pv = (t.repeat_interleave(groups, dim=0) for t in slots.kv())
    K = k.shape[2]
    if sub == "cross_attn" or stack == "encoder":
        key_mask = mask.bool()[:, None, :].expand(B, Q, K)
    else:
        pad = dec_mask if dec_mask is not None else mask
        key_mask = torch.ones(Q, K, dtype=torch.bool).tril()[None] & pad.bool()[:, None, :]
    scaling = seen["kwargs"].get("scaling") or hd**-0.5
    bias = seen["kwargs"].get("position_bias")
    if family == "t5":
        assert scaling == 1.0 and bias is not None  # T5's own scoring is what is checked
        assert (bias.abs().max() > 0) == (sub == "self_attn")  # relative bias in self-attention, zeros in cross-attention
        bias = bias[..., -K:]  # the zero columns for the prefix were added inside; the content bias is the model's
    s_c = (q @ k.transpose(-1, -2)) * scaling + (0 if bias is None else bias)
    s_c = s_c.masked_fill(~key_mask[:, None], float("-inf"))
    s_p = torch.einsum("bhqd,hld->bhql", q, pk) * scaling
    lse_p, lse_c = torch.logsumexp(s_p, -1, keepdim=True), torch.logsumexp(s_c, -1, keepdim=True)
    lam = torch.exp(lse_p - torch.logaddexp(lse_p, lse_c))
    expected = ((1 - lam) * (torch.softmax(s_c, -1) @ v) + lam * (torch.softmax(s_p, -1) @ pv)).transpose(1, 2)
    got = seen["out"]
    assert got.shape == expected.shape
    valid = key_mask.any(-1)[:, :, None, None]  # rows with no real key (fully padded queries) are not compared
    assert ((got - expected).abs() * valid).max().item() <= 1e-5
    assert 0.05 < lam.mean().item() < 0.95  # the gate is neither closed nor saturated: both parts matter
