"""Generation with variants: greedy with the KV cache == without it, token for token; beams run.

The prefix is not cached but prepended at every step (and expanded to the beams), so the
cached and uncached paths must agree exactly; modules get non-zero weights first so the check
means something (at init most modules are no-ops).
"""

from __future__ import annotations

import pytest
import torch

from unipetl.spaces.presets import parse_preset
from unipetl.spaces.realize import apply_variant
from unipetl.spaces.registry import UnipetlError
from unipetl.spaces.testing import randomize_variant, tiny_model

FAMILIES = {"bart": "seq2seq", "mbart": "seq2seq", "t5": "seq2seq", "gpt2": "causal", "llama": "causal", "qwen2": "causal"}
VARIANTS = ["prefix:l=3", "lora:r=4", "houlsby:r=4", "mam:l=3,r=4", "prompt:l=3", "mh-pa:l=3", "unipelt:l=2,r=4,lora_r=2"]


def _model(family: str, preset: str, **overrides: float) -> torch.nn.Module:
    model = tiny_model(family, FAMILIES[family], **overrides)
    apply_variant(model, parse_preset(preset))
    return randomize_variant(model)


def _inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(5, 100, (2, 6), generator=g)
    mask = torch.ones(2, 6, dtype=torch.long)
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("preset", VARIANTS)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_greedy_cache_equals_no_cache(family: str, preset: str) -> None:
    model = _model(family, preset)
    inputs = _inputs()
    kw = dict(max_new_tokens=6, do_sample=False, min_new_tokens=6, pad_token_id=model.config.pad_token_id or 0)
    with torch.no_grad():
        cached = model.generate(**inputs, use_cache=True, **kw)
        uncached = model.generate(**inputs, use_cache=False, **kw)
        beams = model.generate(**inputs, num_beams=4, **kw)
    assert torch.equal(cached, uncached), (cached, uncached)
    assert beams.shape[0] == 2 and beams.shape[1] >= cached.shape[1] - 0
    if FAMILIES[family] == "causal":  # decoder-only: the prompt is echoed like a plain model does
        assert torch.equal(cached[:, :6], inputs["input_ids"])
    base = tiny_model(family, FAMILIES[family])
    with torch.no_grad():
        plain = base.generate(**inputs, **kw)
    assert plain.shape == cached.shape


def _manual_greedy(model: torch.nn.Module, family: str, inputs: dict[str, torch.Tensor], steps: int) -> torch.Tensor:
    """Greedy decoding by full forwards without any cache: the reference for `generate`."""
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    if FAMILIES[family] == "causal":
        seq = ids
        for _ in range(steps):
            logits = model(input_ids=seq, attention_mask=torch.ones_like(seq), use_cache=False).logits
            seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        return seq
    seq = torch.full((ids.shape[0], 1), model.config.decoder_start_token_id, dtype=torch.long)
    for _ in range(steps):
        logits = model(input_ids=ids, attention_mask=mask, decoder_input_ids=seq, use_cache=False).logits
        seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return seq


@pytest.mark.parametrize("preset", ["prefix:l=3", "prompt:l=3", "mam:l=3,r=4", "unipelt:l=2,r=4,lora_r=2"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_cached_generation_matches_manual_decoding(family: str, preset: str) -> None:
    """`generate` with the KV cache == argmax of full forwards over the sequence so far.

    The soft-prompt and prefix paths tell a decoding step from a new sequence by the cache
    object they are handed; if they looked for it under a keyword transformers no longer uses,
    every cached step would be taken for a new sequence (a prompt prepended again, positions
    restarted) and the tokens would differ from this reference.
    """
    model = _model(family, preset)
    inputs = _inputs()
    steps = 5
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=steps, min_new_tokens=steps, do_sample=False, use_cache=True,
                             pad_token_id=model.config.pad_token_id or 0, eos_token_id=None)
        ref = _manual_greedy(model, family, inputs, steps)
    assert torch.equal(out, ref), (out, ref)


def test_cache_found_by_type_under_any_keyword() -> None:
    from transformers import DynamicCache

    from unipetl.spaces.families import cache_in, past_length

    cache = DynamicCache()
    cache.update(torch.zeros(1, 2, 4, 8), torch.zeros(1, 2, 4, 8), 0)
    for key in ("past_key_values", "cache", "some_future_name"):
        assert cache_in({"input_ids": torch.ones(1, 1), key: cache}) is cache
        assert past_length({key: cache}) == 4
    assert past_length({"past_key_values": None, "input_ids": torch.ones(1, 3)}) == 0


@pytest.mark.parametrize("family", ["bart", "llama"])
def test_gradient_checkpointing_with_prefix(family: str) -> None:
    no_dropout = {"dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0} if family == "bart" else {}
    model = _model(family, "mam:l=3,r=4", **no_dropout)
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(5, 100, (2, 6), generator=g)
    labels = torch.randint(5, 100, (2, 4), generator=g) if family == "bart" else ids

    def grads() -> dict[str, torch.Tensor]:
        model.zero_grad()
        model(input_ids=ids, labels=labels).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}

    model.train()
    plain = grads()
    try:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    except UnipetlError:
        pytest.fail("gradient checkpointing was refused")
    ckpt = grads()
    assert set(plain) == set(ckpt) and any("petl_k" in n for n in plain)
    for n in plain:
        assert torch.allclose(plain[n], ckpt[n], atol=1e-5), n
