"""Tiny random-init models of every supported family, for tests and quick runs (no hub, no weights)."""

from __future__ import annotations

from typing import Any, Literal

Head = Literal["base", "cls", "seq2seq", "causal"]

# small but structurally faithful: several heads, GQA for llama/qwen2, gated FFNs where the family has them
TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "bert": dict(model_type="bert", vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, max_position_embeddings=128),
    "roberta": dict(model_type="roberta", vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, max_position_embeddings=130, pad_token_id=1, type_vocab_size=1),
    "bart": dict(model_type="bart", vocab_size=120, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=128, pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=None),
    "mbart": dict(model_type="mbart", vocab_size=120, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=128, pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=None),
    "t5": dict(model_type="t5", vocab_size=120, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4, feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, relative_attention_num_buckets=8),
    "gpt2": dict(model_type="gpt2", vocab_size=120, n_embd=32, n_layer=2, n_head=4, n_positions=128, bos_token_id=0, eos_token_id=0),
    "llama": dict(model_type="llama", vocab_size=120, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=2),
    "qwen2": dict(model_type="qwen2", vocab_size=120, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=2),
}

ENCODERS = ("bert", "roberta")
SEQ2SEQ = ("bart", "mbart", "t5")
DECODERS = ("gpt2", "llama", "qwen2")


def tiny_config(name: str, **overrides: Any) -> Any:
    from transformers import AutoConfig

    cfg = dict(TINY_CONFIGS[name])
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
