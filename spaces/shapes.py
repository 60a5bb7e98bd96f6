"""Model shapes: the few facts about a backbone that parameter accounting needs.

A `ModelShape` comes from a transformers config (`shape_from_config`) or from a built-in model
card (`get_card`), so counting works offline for the paper's models without any weights.
`base_params` and `bias_params` are the backbone's (`AutoModel`, e.g. `BartModel`) total and
bias-vector parameter counts; for cards they are stored facts, for other configs they are
counted on a meta-device instance (shapes only, no memory). Which config keys give a family's
shape is in its description (`unipetl.spaces.family_specs`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from unipetl.spaces.registry import Registry, UnipetlError


@dataclass(frozen=True, slots=True)
class StackShape:
    """One stack of layers (the encoder or the decoder)."""

    name: Literal["encoder", "decoder"]
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_dim: int
    ffn_gated: bool  # gated FFN (LLaMA, T5 gated-gelu): W_1 is two matrices (gate and up)
    has_cross: bool  # decoder of an encoder-decoder model

    @property
    def q_dim(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim


@dataclass(frozen=True, slots=True)
class ModelShape:
    model_type: str
    family: str  # the `unipetl.spaces.family_specs` family that covers model_type
    d_model: int
    vocab_size: int
    stacks: tuple[StackShape, ...]
    base_params: int
    bias_params: int
    name: str = ""
    embed_dim: int | None = None  # width of the input token embeddings where it differs from d_model (ELECTRA's embedding_size)

    @property
    def token_dim(self) -> int:
        """Width of one input token embedding: what a prompt-tuning soft token has (Lester et al. 2021, §2)."""
        return self.embed_dim or self.d_model

    def stack(self, name: str) -> StackShape | None:
        for s in self.stacks:
            if s.name == name:
                return s
        return None

    @property
    def is_encoder_decoder(self) -> bool:
        return len(self.stacks) == 2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def count_backbone(cfg: Any) -> tuple[int, int]:
    """(total, bias) parameter counts of `AutoModel.from_config(cfg)`, built on the meta device."""
    import torch
    from transformers import AutoModel

    with torch.device("meta"):
        model = AutoModel.from_config(cfg)
    total = sum(p.numel() for p in model.parameters())
    bias = sum(p.numel() for n, p in model.named_parameters() if n.endswith(".bias") or n == "bias")
    return total, bias


def shape_from_config(cfg: Any, *, base_params: int | None = None, bias_params: int | None = None, name: str = "") -> ModelShape:
    from unipetl.spaces.family_specs import family_for  # the descriptions import StackShape from here

    family = family_for(cfg.model_type)
    if base_params is None or bias_params is None:
        base_params, bias_params = count_backbone(cfg)
    d_model = family.d_model(cfg)
    embed = getattr(cfg, "embedding_size", None)  # ELECTRA / ALBERT factorize the embeddings (then project to d_model)
    return ModelShape(
        model_type=cfg.model_type,
        family=family.name,
        d_model=d_model,
        vocab_size=cfg.vocab_size,
        stacks=family.stacks(cfg),
        base_params=base_params,
        bias_params=bias_params,
        name=name or getattr(cfg, "_name_or_path", "") or cfg.model_type,
        embed_dim=int(embed) if isinstance(embed, int) and embed != d_model else None,
    )


# --- built-in model cards -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelCard:
    """Offline facts about a public model: its config and its backbone's parameter counts."""

    name: str
    hub_id: str
    config: dict[str, Any]
    base_params: int
    bias_params: int

    def to_config(self) -> Any:
        from transformers import AutoConfig

        cfg = dict(self.config)
        return AutoConfig.for_model(cfg.pop("model_type"), **cfg)

    def shape(self) -> ModelShape:
        return shape_from_config(self.to_config(), base_params=self.base_params, bias_params=self.bias_params, name=self.name)


CARDS: Registry[ModelCard] = Registry("model card")


def _load_cards() -> None:
    data = json.loads((Path(__file__).with_name("cards.json")).read_text())
    for entry in data:
        aliases = tuple(entry.pop("aliases", ()))
        CARDS.register(entry["name"], ModelCard(**entry), aliases=aliases)


_load_cards()


def get_card(name: str) -> ModelCard:
    return CARDS.get(name)


def resolve_shape(model: str) -> ModelShape:
    """A card name / alias, a local model directory, or a hub id (when a hub is reachable).

    Cached by what produced the shape: a local directory's key is its resolved path plus its
    config.json's size, mtime and content hash, so an edited config is read again."""
    if model in CARDS:
        return get_card(model).shape()
    path = Path(model)
    if path.is_dir():
        cfg_file = path / "config.json"
        if not cfg_file.is_file():
            raise UnipetlError(f"model directory {model!r} has no config.json.")
        import hashlib

        raw = cfg_file.read_bytes()
        return _shape_of_dir(str(path.resolve()), model, hashlib.sha256(raw).hexdigest())
    return _shape_of_name(model)


@lru_cache(maxsize=64)
def _shape_of_dir(resolved: str, name: str, config_digest: str) -> ModelShape:
    from transformers import AutoConfig

    return shape_from_config(AutoConfig.from_pretrained(resolved), name=name)


@lru_cache(maxsize=64)
def _shape_of_name(model: str) -> ModelShape:
    if "/" in model:
        from transformers import AutoConfig

        try:
            cfg = AutoConfig.from_pretrained(model)
        except Exception as err:  # noqa: BLE001 - offline or unknown id: one clear line
            raise UnipetlError(f"model {model!r} is neither a built-in card nor a local directory, and the hub lookup failed ({type(err).__name__}).") from None
        return shape_from_config(cfg, name=model)
    CARDS.get(model)  # raises "Unknown model card ... Did you mean"
    raise AssertionError("unreachable")
