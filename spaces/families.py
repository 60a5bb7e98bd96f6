"""Per-family layouts: where each sublayer's input, projections and output live.

For every (stack, sublayer, layer) of `unipetl.spaces.accounting.site_instances` a family gives a
`SublayerRefs`:
- `reads`: the module whose first input is the sublayer input x — the q projection (GPT-2: the
  fused c_attn) for attention, W_1 for the FFN. Its input is exactly what the sublayer reads:
  the raw residual stream in post-LN BERT / BART, the pre-LayerNorm output in mBART / T5 /
  GPT-2 / LLaMA, and the decoder-side query input for cross-attention.
- `out`: the output projection (W_o / W_2); its output, before dropout / residual / LayerNorm,
  is the sublayer output h that sequential adapters read and parallel modules add to.
- `proj`: LoRA target → [(projection module, output column slice or None)]; GPT-2's fused
  c_attn gives q / k / v as column slices; gated FFNs give W_1 = (gate, up).
- `attn`: the module handed to the attention function (where head-wise slots live).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn
from unipetl.spaces.shapes import FAMILY_OF

Proj = tuple[nn.Module, "slice | None"]


@dataclass
class SublayerRefs:
    reads: nn.Module
    out: nn.Module
    proj: dict[str, list[Proj]] = field(default_factory=dict)
    attn: nn.Module | None = None


def family_of(model: nn.Module) -> str:
    return FAMILY_OF[model.config.model_type]


def _attn(attn: nn.Module, q: str, k: str, v: str, o: str, owner: nn.Module | None = None) -> SublayerRefs:
    qm, km, vm = getattr(attn, q), getattr(attn, k), getattr(attn, v)
    om = getattr(owner or attn, o)
    return SublayerRefs(reads=qm, out=om, proj={"q": [(qm, None)], "k": [(km, None)], "v": [(vm, None)], "o": [(om, None)]}, attn=attn)


def _ffn(w1: list[nn.Module], w2: nn.Module) -> SublayerRefs:
    return SublayerRefs(reads=w1[0], out=w2, proj={"w1": [(m, None) for m in w1], "w2": [(w2, None)]})


def _bert(base: Any, stack: str, sub: str, i: int) -> SublayerRefs:
    layer = base.encoder.layer[i]
    if sub == "self_attn":
        return _attn(layer.attention.self, "query", "key", "value", "dense", owner=layer.attention.output)
    return _ffn([layer.intermediate.dense], layer.output.dense)


def _bart(base: Any, stack: str, sub: str, i: int) -> SublayerRefs:
    layer = getattr(base, stack).layers[i]
    if sub == "ffn":
        return _ffn([layer.fc1], layer.fc2)
    attn = layer.self_attn if sub == "self_attn" else layer.encoder_attn
    return _attn(attn, "q_proj", "k_proj", "v_proj", "out_proj")


def _t5(base: Any, stack: str, sub: str, i: int) -> SublayerRefs:
    block = getattr(base, stack).block[i]
    if sub == "self_attn":
        return _attn(block.layer[0].SelfAttention, "q", "k", "v", "o")
    if sub == "cross_attn":
        return _attn(block.layer[1].EncDecAttention, "q", "k", "v", "o")
    ff = block.layer[-1].DenseReluDense
    w1 = [ff.wi_0, ff.wi_1] if hasattr(ff, "wi_0") else [ff.wi]
    return _ffn(w1, ff.wo)


def _gpt2(base: Any, stack: str, sub: str, i: int) -> SublayerRefs:
    block = base.h[i]
    if sub == "ffn":
        return _ffn([block.mlp.c_fc], block.mlp.c_proj)
    attn = block.attn
    d = attn.embed_dim
    fused = attn.c_attn
    return SublayerRefs(
        reads=fused,
        out=attn.c_proj,
        proj={"q": [(fused, slice(0, d))], "k": [(fused, slice(d, 2 * d))], "v": [(fused, slice(2 * d, 3 * d))], "o": [(attn.c_proj, None)]},
        attn=attn,
    )


def _llama(base: Any, stack: str, sub: str, i: int) -> SublayerRefs:
    layer = base.layers[i]
    if sub == "ffn":
        return _ffn([layer.mlp.gate_proj, layer.mlp.up_proj], layer.mlp.down_proj)
    return _attn(layer.self_attn, "q_proj", "k_proj", "v_proj", "o_proj")


_LAYOUTS = {"bert": _bert, "bart": _bart, "t5": _t5, "gpt2": _gpt2, "llama": _llama}


def backbone(model: nn.Module) -> nn.Module:
    """The `AutoModel` part of a model (T5ForConditionalGeneration is its own base model)."""
    return model.base_model


def sublayer(model: nn.Module, stack: str, sub: str, layer: int) -> SublayerRefs:
    return _LAYOUTS[family_of(model)](backbone(model), stack, sub, layer)


def input_embeddings(model: nn.Module) -> nn.Module:
    """The token embedding the (encoder) input goes through."""
    base = backbone(model)
    if family_of(model) in ("bart", "t5"):
        return base.encoder.embed_tokens
    return model.get_input_embeddings()


# --- prompt tuning: the input path ---------------------------------------------------------


def _bind(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Positional + keyword call arguments → one keyword dict (hooks may rewrite any of them)."""
    import inspect

    bound = inspect.signature(module.forward).bind_partial(*args, **kwargs)
    out = dict(bound.arguments)
    out.update(out.pop("kwargs", {}) or {})
    return out


def cache_in(kw: dict[str, Any]) -> Any:
    """The KV cache among a call's arguments, found by its type, not by its keyword.

    transformers renames that keyword between releases (`past_key_values` → `cache` in 5.24), so
    a hook that looked it up by name would silently see every decoding step as a new sequence.
    Returns the first `transformers.Cache` among the values, or None.
    """
    from transformers import Cache

    for value in kw.values():
        if isinstance(value, Cache):
            return value
    return None


def past_length(kw: dict[str, Any]) -> int:
    """Tokens already in the call's KV cache (0 at the start of a sequence or without a cache)."""
    cache = cache_in(kw)
    return 0 if cache is None else int(cache.get_seq_length())


def _extend(mask: Any, n: int, value: int = 1) -> Any:
    if mask is None:
        return None
    import torch

    return torch.cat([torch.full((mask.shape[0], n), value, dtype=mask.dtype, device=mask.device), mask], dim=1)


def install_prompt(model: nn.Module, length: int) -> list[Any]:
    """Prepend `length` soft tokens on the (encoder) input path; returns the hook handles.

    encoder-only: a pre-hook on the backbone prepends to its input embeddings.
    encoder-decoder: a pre-hook on the encoder stack (also what `generate` calls) and one on
    the decoder stack that extends the cross-attention mask to the longer encoder output.
    decoder-only: a pre-hook on the model the user calls (labels get -100 for the prompt) when
    a sequence starts (no cache yet), and `generate` is wrapped to start from the prompt's
    embeddings, returning the usual input + new tokens.
    """
    import torch
    from unipetl.spaces.layers import SoftPrompt

    fam = family_of(model)
    base = backbone(model)
    emb = input_embeddings(model)
    gen = torch.Generator().manual_seed(0)
    rows = torch.randint(0, emb.weight.shape[0], (length,), generator=gen)
    soft = SoftPrompt(emb.weight[rows.to(emb.weight.device)])
    base.petl_prompt = soft
    handles: list[Any] = []

    def prepend(kw: dict[str, Any], embed: nn.Module) -> dict[str, Any]:
        if kw.get("position_ids") is not None:
            raise ValueError("prompt tuning computes positions itself; do not pass `position_ids`")
        ids = kw.pop("input_ids", None)
        embeds = kw.get("inputs_embeds")
        if ids is not None:
            embeds = embed(ids)
        kw["inputs_embeds"] = soft.prepend(embeds)
        kw["attention_mask"] = _extend(kw.get("attention_mask"), length)
        if kw.get("token_type_ids") is not None:
            kw["token_type_ids"] = _extend(kw["token_type_ids"], length, 0)
        return kw

    if fam in ("bert",):
        def hook_enc(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[()], dict[str, Any]]:
            return (), prepend(_bind(mod, args, kwargs), base.embeddings.word_embeddings)

        handles.append(base.register_forward_pre_hook(hook_enc, with_kwargs=True))
    elif fam in ("bart", "t5"):
        def hook_encoder(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[()], dict[str, Any]]:
            return (), prepend(_bind(mod, args, kwargs), mod.embed_tokens)

        def hook_decoder(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[()], dict[str, Any]]:
            kw = _bind(mod, args, kwargs)
            enc, mask = kw.get("encoder_hidden_states"), kw.get("encoder_attention_mask")
            if enc is not None and mask is not None and mask.shape[-1] == enc.shape[1] - length:
                kw["encoder_attention_mask"] = _extend(mask, length)
            return (), kw

        handles.append(base.encoder.register_forward_pre_hook(hook_encoder, with_kwargs=True))
        handles.append(base.decoder.register_forward_pre_hook(hook_decoder, with_kwargs=True))
    else:
        def hook_causal(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[()], dict[str, Any]] | None:
            kw = _bind(mod, args, kwargs)
            if kw.get("input_ids") is None or past_length(kw) > 0:
                return None  # continuing a sequence (generation steps) or already embedded
            kw = prepend(kw, emb)
            if kw.get("labels") is not None:
                kw["labels"] = _extend(kw["labels"], length, -100)
            return (), kw

        handles.append(model.register_forward_pre_hook(hook_causal, with_kwargs=True))
        if hasattr(model, "generate"):
            original = model.generate

            def generate(input_ids: Any = None, attention_mask: Any = None, **kw: Any) -> Any:
                if input_ids is None:
                    return original(attention_mask=attention_mask, **kw)
                if attention_mask is None:
                    attention_mask = torch.ones_like(input_ids)
                embeds = soft.prepend(emb(input_ids))
                out = original(inputs_embeds=embeds, attention_mask=_extend(attention_mask, length), **kw)
                if isinstance(out, torch.Tensor):
                    return torch.cat([input_ids, out], dim=1)
                out.sequences = torch.cat([input_ids, out.sequences], dim=1)
                return out

            model.generate = generate
    return handles
