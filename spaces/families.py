"""What a model family's description (`unipetl.spaces.family_specs`) is used for on a live model.

- `sublayer`: where a (stack, sublayer, layer)'s input, projections and output live (the
  family's `layout`; `SublayerRefs` is described there).
- `install_positions`: padding-aware positions on decoder-only backbones.
- `install_prompt`: the soft prompt on the (encoder) input path.

Nothing here names a family: what differs between families is read from its description.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from unipetl.spaces.family_specs import FamilySpec, SublayerRefs, family_for
from unipetl.spaces.layers import SoftPrompt
from unipetl.spaces.registry import UnipetlError


def family_of(model: nn.Module) -> FamilySpec:
    return family_for(model.config.model_type)


def backbone(model: nn.Module) -> nn.Module:
    """The `AutoModel` part of a model (T5ForConditionalGeneration is its own base model)."""
    return model.base_model


def sublayer(model: nn.Module, stack: str, sub: str, layer: int) -> SublayerRefs:
    return family_of(model).layout(backbone(model), stack, sub, layer)


def input_embeddings(model: nn.Module) -> nn.Module:
    """The token embedding the (encoder) input goes through."""
    path = family_of(model).prompt_embeddings
    if path is not None:
        return backbone(model).get_submodule(path)
    return model.get_input_embeddings()


# LoRA targets whose input is an inner activation of the sublayer (the heads' output before W_o,
# the FFN hidden units before W_2): token-aligned with the sublayer input x, so a gate reads the x
# captured at `reads`. Every other target (q, k, v, W_1) reads its gate input from its own input:
# that is x itself — or, for cross-attention k / v, the encoder states, whose tokens are the ones
# their output rows belong to. Which tensor a gate reads is fixed here, never guessed from shapes.
INNER_TARGETS = frozenset({"o", "w2"})


# --- call arguments ------------------------------------------------------------------------


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


def _new_tokens(kw: dict[str, Any]) -> int:
    """How many positions this call processes (the length of its ids or embeddings)."""
    x = kw.get("inputs_embeds")
    return int((x if x is not None else kw["input_ids"]).shape[1])


def mask_positions(mask: torch.Tensor, new: int) -> torch.Tensor:
    """Position ids (B, new) of the last `new` columns of a 2-D padding mask (B, K), 1 = token.

    A token's position is the number of tokens before it, as `generate` numbers them, so left
    pads do not move real tokens to later positions. That matters wherever something without a
    position meets a positioned query: RoPE rotates the query by its position but not a prefix
    key / MH PA slot (q·P_kᵀ then depends on how many pads precede the token), and a soft prompt
    would sit at another distance from the text. Pads keep their column index: their outputs are
    never read, and a right-padded batch gets exactly the model's default positions.
    """
    m = mask.to(torch.long)
    cols = torch.arange(m.shape[1], device=m.device).expand_as(m)
    return torch.where(m.bool(), m.cumsum(-1) - 1, cols)[:, -new:]


def _positions_pre_hook(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[()], dict[str, Any]] | None:
    """Decoder-only backbone: position ids from the attention mask when the caller gave none."""
    kw = _bind(mod, args, kwargs)
    mask = kw.get("attention_mask")
    if kw.get("position_ids") is not None or mask is None or mask.dim() != 2:
        return None  # the caller's own positions (generate passes mask-derived ones) or no padding
    kw["position_ids"] = mask_positions(mask, _new_tokens(kw))
    return (), kw


def install_positions(model: nn.Module) -> list[Any]:
    """Number a decoder-only model's tokens from its padding mask (`mask_positions`); handles.

    Only decoder-only stacks get (left-)padded inputs whose positions the model takes from the
    column index; a module-level function as the hook, so a deepcopy's hook is its own.
    """
    if not family_of(model).decoder_only:  # only stacks without an encoder get left-padded inputs
        return []
    return [backbone(model).register_forward_pre_hook(_positions_pre_hook, with_kwargs=True)]


# --- prompt tuning: the input path ---------------------------------------------------------


def _extend(mask: torch.Tensor | None, n: int, value: int = 1) -> torch.Tensor | None:
    """(B, K) → (B, n + K): `n` columns of `value` in front (the soft tokens' entries)."""
    if mask is None:
        return None
    if mask.dim() != 2:
        raise UnipetlError(f"prompt tuning extends 2-D masks / labels (batch, length); got one of shape {tuple(mask.shape)}.")
    return torch.cat([torch.full((mask.shape[0], n), value, dtype=mask.dtype, device=mask.device), mask], dim=1)


class PromptPath(SoftPrompt):
    """The soft prompt and the hooks that put it on a model's input path.

    The hooks are bound methods of this module and read everything else from the module they
    are called on, so `copy.deepcopy` of the model rebinds them to the copy's prompt (a closure
    would keep pointing at the original's). The l soft tokens always precede the caller's tokens:

    - encoders (BERT, the BART / T5 encoder): prepended to the embeddings, the mask gets l ones.
      The output keeps the l positions (PEFT's layout: BERT's pooler reads position 0).
    - the BART / T5 decoder: the encoder states it reads always come from that encoder, the
      mask it is handed always covers the caller's encoder tokens: it gets l ones in front.
    - decoder-only backbones: prepended when a sequence starts (empty or no KV cache), in the
      cache afterwards. The caller's mask and positions number the caller's tokens, so at every
      call the mask gets l ones and positions are shifted by l (from the mask when none are
      given). With an LM head the output keeps the l positions (PEFT's layout, so an exported
      adapter gives the same logits; labels get -100 there, soft tokens are never targets);
      any other head — pooling the last non-pad token of `input_ids`, say — and a bare backbone
      get the output with the l positions stripped, aligned with `input_ids` again.
    """

    def __init__(self, init_rows: torch.Tensor, *, strip_output: bool) -> None:
        super().__init__(init_rows)
        self.strip_output = strip_output
        self._calls: list[tuple[bool, bool]] = []  # per open decoder-only call: (strip, caller wants a tuple)

    @property
    def length(self) -> int:
        return int(self.petl_prompt.shape[0])

    def _prepend_embeddings(self, mod: nn.Module, kw: dict[str, Any]) -> dict[str, Any]:
        ids = kw.pop("input_ids", None)
        embeds = mod.get_input_embeddings()(ids) if ids is not None else kw.get("inputs_embeds")
        if embeds is None:
            raise UnipetlError("prompt tuning needs `input_ids` or `inputs_embeds` to prepend the soft tokens to; got neither.")
        kw["inputs_embeds"] = self.prepend(embeds)
        if kw.get("token_type_ids") is not None:
            kw["token_type_ids"] = _extend(kw["token_type_ids"], self.length, 0)
        return kw

    def encoder_pre_hook(self, mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[()], dict[str, Any]]:
        kw = _bind(mod, args, kwargs)
        if kw.get("position_ids") is not None:
            raise UnipetlError("prompt tuning on an encoder computes positions itself; do not pass `position_ids`.")
        kw = self._prepend_embeddings(mod, kw)
        kw["attention_mask"] = _extend(kw.get("attention_mask"), self.length)
        return (), kw

    def cross_pre_hook(self, mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[()], dict[str, Any]]:
        kw = _bind(mod, args, kwargs)
        kw["encoder_attention_mask"] = _extend(kw.get("encoder_attention_mask"), self.length)
        return (), kw

    def decoder_pre_hook(self, mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[()], dict[str, Any]]:
        kw = _bind(mod, args, kwargs)
        n = self.length
        fresh = past_length(kw) == 0
        positions = kw.get("position_ids")
        if fresh:
            kw = self._prepend_embeddings(mod, kw)
        if positions is not None:
            positions = positions + n
            if fresh:
                own = torch.arange(n, dtype=positions.dtype, device=positions.device).expand(positions.shape[0], n)
                positions = torch.cat([own, positions], dim=-1)
            kw["position_ids"] = positions
        if kw.get("attention_mask") is not None:
            kw["attention_mask"] = _extend(kw["attention_mask"], n)
            if positions is None:
                kw["position_ids"] = mask_positions(kw["attention_mask"], _new_tokens(kw))
        want_tuple = kw.get("return_dict", getattr(mod.config, "return_dict", True)) is False
        if want_tuple:
            kw["return_dict"] = True  # strip named fields, then hand back the tuple asked for
        self._calls.append((fresh and self.strip_output, want_tuple))
        return (), kw

    def decoder_hook(self, mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
        """Drop the soft tokens' l positions from the hidden states (and attention rows)."""
        strip, want_tuple = self._calls.pop()
        if output is None:  # forward raised (always_call): only the bookkeeping above was needed
            return None
        if strip:
            n = self.length
            output.last_hidden_state = output.last_hidden_state[:, n:]
            if output.get("hidden_states") is not None:
                output.hidden_states = tuple(h[:, n:] for h in output.hidden_states)
            if output.get("attentions") is not None:
                output.attentions = tuple(a[:, :, n:] for a in output.attentions)
        return output.to_tuple() if want_tuple else output

    def labels_pre_hook(self, mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[()], dict[str, Any]] | None:
        """LM head over l + n positions: the soft tokens' labels are -100 (never a target)."""
        kw = _bind(mod, args, kwargs)
        if kw.get("labels") is None or past_length(kw) > 0:
            return None
        kw["labels"] = _extend(kw["labels"], self.length, -100)
        return (), kw


def install_prompt(model: nn.Module, length: int) -> list[Any]:
    """Prepend `length` soft tokens on the (encoder) input path (`PromptPath`); returns the hook handles.

    The soft tokens start as copies of `length` vocabulary embeddings drawn at random (Lester et
    al. 2021, §2.2) from torch's global generator, so another trial seed starts another prompt.

    encoder-only: hooks on the backbone. encoder-decoder: on the encoder stack (also what
    `generate` calls) and on the decoder stack (its cross-attention mask). decoder-only: on the
    backbone, so the model the user calls — and `generate` — get `input_ids` as usual; plus a
    labels hook on an LM head.
    """
    fam = family_of(model)
    base = backbone(model)
    emb = input_embeddings(model)
    rows = torch.randint(0, emb.weight.shape[0], (length,))  # the trial's seed draws them, like every other new module's init
    lm_head = base is not model and model.get_output_embeddings() is not None
    path = PromptPath(emb.weight[rows.to(emb.weight.device)], strip_output=fam.decoder_only and not lm_head)
    base.petl_prompt = path
    if fam.arch == "encoder":
        return [base.register_forward_pre_hook(path.encoder_pre_hook, with_kwargs=True)]
    if fam.encoder_decoder:
        return [base.encoder.register_forward_pre_hook(path.encoder_pre_hook, with_kwargs=True),
                base.decoder.register_forward_pre_hook(path.cross_pre_hook, with_kwargs=True)]
    handles = [base.register_forward_pre_hook(path.decoder_pre_hook, with_kwargs=True),
               base.register_forward_hook(path.decoder_hook, with_kwargs=True, always_call=True)]
    if lm_head:
        handles.append(model.register_forward_pre_hook(path.labels_pre_hook, with_kwargs=True))
    return handles
