"""One description per model family: everything unipetl knows about an architecture, as data.

A `FamilySpec` says which transformers `model_type`s it covers, how a config gives the shape
(`d_model_key`, `stacks`), where each sublayer lives on the backbone (`layout`), what kind of
stack it is (encoder-only / encoder-decoder / decoder-only, which decides the prompt path and
the padding-aware positions), the per-model-type facts of the input (position offset, token
types) and the tiny random-init models the tests and smoke runs build (`tiny`, `tiny_ids`).
`spaces/shapes.py`, `spaces/families.py`, `spaces/testing.py`, `evaluators/models.py` and
`evaluators/trial.py` read these and nothing else, so adding a family is one `register(...)`
below (with its tiny config); see README "Extending".

Layouts: for every (stack, sublayer, layer) of `unipetl.spaces.accounting.site_instances` a
family gives a `SublayerRefs`:
- `reads`: the module whose first input is the sublayer input x — the q projection (GPT-2: the
  fused c_attn) for attention, W_1 for the FFN. Its input is exactly what the sublayer reads:
  the raw residual stream in post-LN BERT / BART, the pre-LayerNorm output in mBART / T5 /
  GPT-2 / LLaMA, and the decoder-side query input for cross-attention.
- `out`: the output projection (W_o / W_2); its output, before dropout / residual / LayerNorm,
  is the sublayer output h that sequential adapters read and parallel modules add to.
- `proj`: LoRA target → [(projection module, output column slice or None)]; GPT-2's fused
  c_attn gives q / k / v as column slices; gated FFNs give W_1 = (gate, up).
- `attn`: the module handed to the attention function (where head-wise slots live).

No torch import here: `reports/` and offline counting read shapes without it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from unipetl.spaces.registry import UnipetlError, did_you_mean
from unipetl.spaces.shapes import StackShape

if TYPE_CHECKING:
    from torch import nn

Arch = Literal["encoder", "encoder-decoder", "decoder"]
Proj = tuple["nn.Module", "slice | None"]


@dataclass
class SublayerRefs:
    reads: nn.Module
    out: nn.Module
    proj: dict[str, list[Proj]] = field(default_factory=dict)
    attn: nn.Module | None = None


Layout = Callable[[Any, str, str, int], SublayerRefs]  # (backbone, stack, sublayer, layer) → refs


@dataclass(frozen=True, slots=True, kw_only=True)
class FamilySpec:
    """What a model family looks like; one instance per family, registered in `FAMILIES`."""

    name: str
    model_types: tuple[str, ...]  # transformers `config.model_type`s with this layout
    arch: Arch  # encoder-only, encoder-decoder or decoder-only (whose inputs may be left-padded)
    d_model_key: str  # config key of the residual width
    stacks: Callable[[Any], tuple[StackShape, ...]]  # config → its stacks' shapes (layers, heads, FFN width)
    layout: Layout  # where each sublayer's input, projections and output live on the backbone
    prompt_embeddings: str | None = None  # backbone path of the embedding the prompt starts from; None: get_input_embeddings()
    position_offset: Mapping[str, int] = field(default_factory=dict)  # model_type → positions the table reserves (RoBERTa: 2)
    token_types: tuple[str, ...] = ()  # model_types whose inputs carry two token types (token_type_ids)
    tiny: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # model_type → tiny config (no model_type key)
    tiny_ids: Mapping[str, int | None] = field(default_factory=dict)  # the tiny tokenizer's ids that differ from pad 0 / bos 1 / eos 2; None drops one

    def __post_init__(self) -> None:
        if not self.model_types:
            raise UnipetlError(f"family {self.name!r}: `model_types` is empty; name at least one transformers model_type.")
        if self.arch not in ("encoder", "encoder-decoder", "decoder"):
            raise UnipetlError(f"family {self.name!r}: `arch` should be encoder, encoder-decoder or decoder, got {self.arch!r}.")
        for where, keys in (("position_offset", self.position_offset), ("token_types", self.token_types), ("tiny", self.tiny)):
            stray = [k for k in keys if k not in self.model_types]
            if stray:
                raise UnipetlError(f"family {self.name!r}: `{where}` names {stray[0]!r}, which is not one of its model_types {list(self.model_types)}.")

    @property
    def decoder_only(self) -> bool:
        return self.arch == "decoder"

    @property
    def encoder_decoder(self) -> bool:
        return self.arch == "encoder-decoder"

    def d_model(self, cfg: Any) -> int:
        return int(getattr(cfg, self.d_model_key))

    def offset(self, model_type: str) -> int:
        return self.position_offset.get(model_type, 0)

    def typed(self, model_type: str) -> bool:
        return model_type in self.token_types

    def special_ids(self) -> dict[str, int]:
        """The tiny tokenizer's special-token ids as config keys (<pad> <s> </s> are 0 1 2)."""
        ids: dict[str, int | None] = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, **self.tiny_ids}
        return {k: v for k, v in ids.items() if v is not None}


# --- the registry ------------------------------------------------------------------------

FAMILIES: dict[str, FamilySpec] = {}
_BY_MODEL_TYPE: dict[str, str] = {}


def register(spec: FamilySpec) -> FamilySpec:
    if spec.name in FAMILIES:
        raise KeyError(f"model family {spec.name!r} is already registered")
    taken = [t for t in spec.model_types if t in _BY_MODEL_TYPE]
    if taken:
        raise KeyError(f"model type {taken[0]!r} already belongs to family {_BY_MODEL_TYPE[taken[0]]!r}")
    FAMILIES[spec.name] = spec
    _BY_MODEL_TYPE.update(dict.fromkeys(spec.model_types, spec.name))
    return spec


def unregister(name: str) -> None:
    """Remove a family (tests that register a throw-away description)."""
    spec = FAMILIES.pop(name)
    for t in spec.model_types:
        del _BY_MODEL_TYPE[t]


def model_types() -> list[str]:
    return list(_BY_MODEL_TYPE)


def family_for(model_type: str) -> FamilySpec:
    """The family of a transformers model_type; one clear line for a type no family covers."""
    if model_type not in _BY_MODEL_TYPE:
        raise UnipetlError(f"model type {model_type!r} is not supported; supported: {', '.join(sorted(_BY_MODEL_TYPE))}.")
    return FAMILIES[_BY_MODEL_TYPE[model_type]]


def get_family(name: str) -> FamilySpec:
    if name not in FAMILIES:
        raise UnipetlError(f"Unknown model family {name!r}.{did_you_mean(name, list(FAMILIES))}")
    return FAMILIES[name]


def tiny_family(name: str) -> FamilySpec:
    """The family whose tiny configs include `name` (a model_type, e.g. roberta)."""
    for spec in FAMILIES.values():
        if name in spec.tiny:
            return spec
    raise UnipetlError(f"Unknown tiny model {name!r}.{did_you_mean(name, [t for s in FAMILIES.values() for t in s.tiny])}")


def position_offset(model_type: str) -> int:
    """Positions a model's table reserves before the first token (RoBERTa: after the padding index); 0 if unknown."""
    name = _BY_MODEL_TYPE.get(model_type)
    return 0 if name is None else FAMILIES[name].offset(model_type)


# --- layout helpers ------------------------------------------------------------------------


def _attn(attn: nn.Module, q: str, k: str, v: str, o: str, owner: nn.Module | None = None) -> SublayerRefs:
    qm, km, vm = getattr(attn, q), getattr(attn, k), getattr(attn, v)
    om = getattr(owner or attn, o)
    return SublayerRefs(reads=qm, out=om, proj={"q": [(qm, None)], "k": [(km, None)], "v": [(vm, None)], "o": [(om, None)]}, attn=attn)


def _ffn(w1: list[nn.Module], w2: nn.Module) -> SublayerRefs:
    return SublayerRefs(reads=w1[0], out=w2, proj={"w1": [(m, None) for m in w1], "w2": [(w2, None)]})


# --- BERT: bert, roberta, xlm-roberta, electra -------------------------------------------


def _bert_layout(base: Any, stack: str, sub: str, i: int) -> SublayerRefs:
    layer = base.encoder.layer[i]
    if sub == "self_attn":
        return _attn(layer.attention.self, "query", "key", "value", "dense", owner=layer.attention.output)
    return _ffn([layer.intermediate.dense], layer.output.dense)


def _bert_stacks(cfg: Any) -> tuple[StackShape, ...]:
    h = cfg.num_attention_heads
    return (StackShape("encoder", cfg.num_hidden_layers, h, h, cfg.hidden_size // h, cfg.intermediate_size, False, False),)


_ENC = dict(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
register(FamilySpec(
    name="bert",
    model_types=("bert", "roberta", "xlm-roberta", "electra"),
    arch="encoder",
    d_model_key="hidden_size",
    stacks=_bert_stacks,
    layout=_bert_layout,
    position_offset={"roberta": 2, "xlm-roberta": 2},  # positions start after the padding index
    token_types=("bert", "electra"),
    tiny={"bert": dict(_ENC, max_position_embeddings=128),
          "roberta": dict(_ENC, max_position_embeddings=130, pad_token_id=1, type_vocab_size=1)},
))


# --- BART: bart, mbart ---------------------------------------------------------------------


def _bart_layout(base: Any, stack: str, sub: str, i: int) -> SublayerRefs:
    layer = getattr(base, stack).layers[i]
    if sub == "ffn":
        return _ffn([layer.fc1], layer.fc2)
    attn = layer.self_attn if sub == "self_attn" else layer.encoder_attn
    return _attn(attn, "q_proj", "k_proj", "v_proj", "out_proj")


def _bart_stacks(cfg: Any) -> tuple[StackShape, ...]:
    d = cfg.d_model
    eh, dh = cfg.encoder_attention_heads, cfg.decoder_attention_heads
    return (
        StackShape("encoder", cfg.encoder_layers, eh, eh, d // eh, cfg.encoder_ffn_dim, False, False),
        StackShape("decoder", cfg.decoder_layers, dh, dh, d // dh, cfg.decoder_ffn_dim, False, True),
    )


_BART = dict(vocab_size=120, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
             decoder_ffn_dim=64, max_position_embeddings=128, pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=None)
register(FamilySpec(
    name="bart",
    model_types=("bart", "mbart"),
    arch="encoder-decoder",
    d_model_key="d_model",
    stacks=_bart_stacks,
    layout=_bart_layout,
    prompt_embeddings="encoder.embed_tokens",
    tiny={"bart": dict(_BART), "mbart": dict(_BART)},
    tiny_ids={"decoder_start_token_id": 2},
))


# --- T5: t5, mt5 ---------------------------------------------------------------------------


def _t5_layout(base: Any, stack: str, sub: str, i: int) -> SublayerRefs:
    block = getattr(base, stack).block[i]
    if sub == "self_attn":
        return _attn(block.layer[0].SelfAttention, "q", "k", "v", "o")
    if sub == "cross_attn":
        return _attn(block.layer[1].EncDecAttention, "q", "k", "v", "o")
    ff = block.layer[-1].DenseReluDense
    w1 = [ff.wi_0, ff.wi_1] if hasattr(ff, "wi_0") else [ff.wi]
    return _ffn(w1, ff.wo)


def _t5_stacks(cfg: Any) -> tuple[StackShape, ...]:
    gated = bool(getattr(cfg, "is_gated_act", False)) or str(cfg.feed_forward_proj).startswith("gated")
    n_dec = cfg.num_decoder_layers if cfg.num_decoder_layers is not None else cfg.num_layers
    return (
        StackShape("encoder", cfg.num_layers, cfg.num_heads, cfg.num_heads, cfg.d_kv, cfg.d_ff, gated, False),
        StackShape("decoder", n_dec, cfg.num_heads, cfg.num_heads, cfg.d_kv, cfg.d_ff, gated, True),
    )


register(FamilySpec(
    name="t5",
    model_types=("t5", "mt5"),
    arch="encoder-decoder",
    d_model_key="d_model",
    stacks=_t5_stacks,
    layout=_t5_layout,
    prompt_embeddings="encoder.embed_tokens",
    tiny={"t5": dict(vocab_size=120, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4, feed_forward_proj="gated-gelu",
                     pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, relative_attention_num_buckets=8)},
    tiny_ids={"bos_token_id": None, "decoder_start_token_id": 0},  # T5 has no <s>; decoding starts from <pad>
))


# --- GPT-2 ---------------------------------------------------------------------------------


def _gpt2_layout(base: Any, stack: str, sub: str, i: int) -> SublayerRefs:
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


def _gpt2_stacks(cfg: Any) -> tuple[StackShape, ...]:
    inner = cfg.n_inner if cfg.n_inner is not None else 4 * cfg.n_embd
    return (StackShape("decoder", cfg.n_layer, cfg.n_head, cfg.n_head, cfg.n_embd // cfg.n_head, inner, False, False),)


register(FamilySpec(
    name="gpt2",
    model_types=("gpt2",),
    arch="decoder",
    d_model_key="n_embd",
    stacks=_gpt2_stacks,
    layout=_gpt2_layout,
    tiny={"gpt2": dict(vocab_size=120, n_embd=32, n_layer=2, n_head=4, n_positions=128, bos_token_id=0, eos_token_id=0)},
))


# --- LLaMA: llama, qwen2, mistral ----------------------------------------------------------


def _llama_layout(base: Any, stack: str, sub: str, i: int) -> SublayerRefs:
    layer = base.layers[i]
    if sub == "ffn":
        return _ffn([layer.mlp.gate_proj, layer.mlp.up_proj], layer.mlp.down_proj)
    return _attn(layer.self_attn, "q_proj", "k_proj", "v_proj", "o_proj")


def _llama_stacks(cfg: Any) -> tuple[StackShape, ...]:
    h = cfg.num_attention_heads
    kv = getattr(cfg, "num_key_value_heads", None) or h
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // h
    return (StackShape("decoder", cfg.num_hidden_layers, h, kv, head_dim, cfg.intermediate_size, True, False),)


# several heads and GQA, so head-wise slots and kv sharing are exercised
_LLAMA = dict(vocab_size=120, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=2)
register(FamilySpec(
    name="llama",
    model_types=("llama", "qwen2", "mistral"),
    arch="decoder",
    d_model_key="hidden_size",
    stacks=_llama_stacks,
    layout=_llama_layout,
    tiny={"llama": dict(_LLAMA), "qwen2": dict(_LLAMA)},
))
