"""Tiny random-init models of every supported family, for tests and quick runs (no hub, no weights)."""

from __future__ import annotations

from typing import Any, Literal

from unipetl.spaces.family_specs import FAMILIES, tiny_family

Head = Literal["base", "cls", "seq2seq", "causal"]

# small but structurally faithful (several heads, GQA, gated FFNs where the family has them); each
# family's description holds its tiny configs, keyed by model_type, in registration order
TINY_CONFIGS: dict[str, dict[str, Any]] = {t: dict(model_type=t, **cfg) for spec in FAMILIES.values() for t, cfg in spec.tiny.items()}

ENCODERS = tuple(t for spec in FAMILIES.values() if spec.arch == "encoder" for t in spec.tiny)
SEQ2SEQ = tuple(t for spec in FAMILIES.values() if spec.encoder_decoder for t in spec.tiny)
DECODERS = tuple(t for spec in FAMILIES.values() if spec.decoder_only for t in spec.tiny)


def tiny_config(name: str, **overrides: Any) -> Any:
    from transformers import AutoConfig

    cfg = dict(model_type=name, **tiny_family(name).tiny[name])
    cfg.update(overrides)
    return AutoConfig.for_model(cfg.pop("model_type"), **cfg)


def tiny_model(name: str, head: Head = "base", *, seed: int = 0, num_labels: int = 2, **overrides: Any) -> Any:
    """A random-init model of family `name` with the given head, in eval mode, fp32."""
    import torch
    from transformers import (
        AutoModel,
        AutoModelForCausalLM,
        AutoModelForSeq2SeqLM,
        AutoModelForSequenceClassification,
    )

    torch.manual_seed(seed)
    cfg = tiny_config(name, **overrides)
    if head == "cls":
        cfg.num_labels = num_labels
        model = AutoModelForSequenceClassification.from_config(cfg)
    elif head == "seq2seq":
        model = AutoModelForSeq2SeqLM.from_config(cfg)
    elif head == "causal":
        model = AutoModelForCausalLM.from_config(cfg)
    else:
        model = AutoModel.from_config(cfg)
    return model.eval()


def randomize_variant(model: Any, std: float = 0.5, seed: int = 0) -> Any:
    """Give every inserted (`petl*`) parameter N(0, std²) values, in place; returns the model.

    Most modules start as exact no-ops (W_up = 0, B = 0), so an equivalence checked at init
    would hold for any hook; tests randomize first so a wrong tensor changes the numbers."""
    import torch

    torch.manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "petl" in n:
                p.normal_(0, std)
    return model
