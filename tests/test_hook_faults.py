"""Silent numeric faults of hooks, one table per fault kind, every family.

1. soft prompts and padding: a row's outputs do not depend on the padding around it (side,
   batch composition) for any head — classification heads pool the right token;
2. positionless keys (prefix, MH PA) on left-padded decoder-only batches: tokens keep their
   positions (RoPE rotates queries, never the slots);
3. hooks know which tensor they hold by structure, not shape: decoder lengths equal to the
   encoder's change nothing;
4. `copy.deepcopy` of a realized model is independent of the original.

Inserted parameters get N(0, 0.5²) values first: at init most modules are exact no-ops.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch

from unipetl.spaces.presets import parse_preset
from unipetl.spaces.realize import apply_variant
from unipetl.spaces.testing import randomize_variant, tiny_model
from unipetl.spaces.variant import Module, Variant

os.environ.setdefault("HF_HUB_OFFLINE", "1")

L = 3  # soft tokens / prefix slots
ATOL = 1e-5


def realize(family: str, head: str, variant: str | Variant, **overrides: object) -> torch.nn.Module:
    model = tiny_model(family, head, **overrides)  # type: ignore[arg-type]
    apply_variant(model, parse_preset(variant) if isinstance(variant, str) else variant)
    return randomize_variant(model)


def pad_batch(rows: list[list[int]], pad: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of different lengths → (ids, mask), padded on `side` to the longest row."""
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        cols = slice(0, len(r)) if side == "right" else slice(width - len(r), width)
        ids[i, cols] = torch.tensor(r)
        mask[i, cols] = 1
    return ids, mask


# --- 1. soft prompts: padding-invariant for every family and head ---------------------------

SHORT, LONG, OTHER = [5, 6, 7], [8, 9, 10, 11, 12, 13], [20, 21, 22, 23]
DECODER_ONLY = ("gpt2", "llama", "qwen2")
PROMPT_CASES = (
    [(f, h, side) for f in DECODER_ONLY for h in ("cls", "causal", "base") for side in ("right", "left")]
    + [(f, "cls", "right") for f in ("bert", "roberta")]  # their tokenizers pad right
    + [(f, h, "right") for f in ("bart", "mbart", "t5") for h in ("seq2seq", "cls")]
)


def _row_outputs(model: torch.nn.Module, family: str, head: str, rows: list[list[int]], side: str, which: int) -> torch.Tensor:
    """Outputs belonging to real tokens of row `which` of a padded batch of `rows`."""
    cfg = model.config
    eos = cfg.eos_token_id if head == "cls" and cfg.is_encoder_decoder else None  # BART / T5 classify at the last eos
    rows = [r + [eos] for r in rows] if eos is not None else rows
    ids, mask = pad_batch(rows, cfg.pad_token_id, side)
    kw: dict[str, torch.Tensor] = {"input_ids": ids, "attention_mask": mask}
    if head == "seq2seq":
        kw["decoder_input_ids"] = torch.tensor([[cfg.decoder_start_token_id, 30, 31, 32]]).expand(len(rows), -1)
    with torch.no_grad():
        out = model(**kw)
    if head in ("cls", "seq2seq"):
        return out.logits[which]
    hidden = out.logits if head == "causal" else out.last_hidden_state
    offset = L if head == "causal" else 0  # an LM head keeps the soft tokens' positions (PEFT's layout)
    real = mask[which].nonzero().squeeze(-1) + offset
    return hidden[which, real]


@pytest.mark.parametrize(("family", "head", "side"), PROMPT_CASES)
def test_prompt_outputs_do_not_depend_on_padding(family: str, head: str, side: str) -> None:
    overrides = {"pad_token_id": 0} if family == "gpt2" else {}  # GPT-2 has no pad token of its own
    model = realize(family, head, f"prompt:l={L}", **overrides)
    alone = _row_outputs(model, family, head, [SHORT], side, 0)
    for rows, which in (([SHORT, LONG], 0), ([LONG, SHORT], 1), ([OTHER, SHORT, LONG], 1)):
        got = _row_outputs(model, family, head, rows, side, which)
        assert got.shape == alone.shape
        assert (got - alone).abs().max().item() <= ATOL, (rows, side)


@pytest.mark.parametrize("family", DECODER_ONLY)
def test_prompt_lm_loss_scores_only_real_tokens(family: str) -> None:
    """A row's loss is the same alone and right-padded (labels -100 at pads); no soft token is a target."""
    model = realize(family, "causal", f"prompt:l={L}")
    row = SHORT + [40, 41, 42]
    ids = torch.tensor([row])
    padded, mask = pad_batch([row, row + [9, 9]], 0, "right")
    with torch.no_grad():
        out = model(input_ids=ids, labels=ids)
        pad_loss = model(input_ids=padded[:1], attention_mask=mask[:1], labels=padded[:1].masked_fill(mask[:1] == 0, -100)).loss
    # the LM head sees l + n positions: position l - 1 (the last soft token) predicts the first
    # real token, ..., position l + n - 2 the last one; soft tokens are never predicted
    ref = torch.nn.functional.cross_entropy(out.logits[0, L - 1 : -1], ids[0])
    assert torch.allclose(out.loss, ref, atol=ATOL)
    assert torch.allclose(pad_loss, out.loss, atol=ATOL)


@pytest.mark.parametrize("preset", [f"prompt:l={L}", f"prefix:l={L}", f"mh-pa:l={L}"])
@pytest.mark.parametrize("family", DECODER_ONLY)
def test_left_padded_generation_equals_each_row_alone(family: str, preset: str) -> None:
    model = realize(family, "causal", preset)
    rows = [SHORT, LONG]
    ids, mask = pad_batch(rows, 0, "left")
    kw = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0, eos_token_id=None)
    with torch.no_grad():
        batch = model.generate(input_ids=ids, attention_mask=mask, **kw)
        for i, r in enumerate(rows):
            alone = model.generate(input_ids=torch.tensor([r]), attention_mask=torch.ones(1, len(r), dtype=torch.long), **kw)
            assert torch.equal(batch[i, -4:], alone[0, -4:]), (i, batch, alone)


# --- 2. positionless slots on left-padded decoder-only models --------------------------------

SLOT_PRESETS = [f"prefix:l={L}", f"prefix:l={L},mlp=8", f"mh-pa:l={L}", f"mam:l={L},r=4", f"unipelt:l={L},r=4,lora_r=2"]


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("preset", SLOT_PRESETS)
@pytest.mark.parametrize("family", DECODER_ONLY)
def test_slots_do_not_depend_on_padding(family: str, preset: str, side: str, impl: str) -> None:
    model = realize(family, "causal", preset, attn_implementation=impl)
    ids, mask = pad_batch([SHORT, LONG], 0, side)
    with torch.no_grad():
        alone = model(input_ids=torch.tensor([SHORT])).logits[0]
        padded = model(input_ids=ids, attention_mask=mask).logits[0]
    real = mask[0].nonzero().squeeze(-1)
    assert (padded[real] - alone).abs().max().item() <= ATOL


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_explicit_positions_are_kept(family: str) -> None:
    """Positions the caller passes win over the mask-derived ones (e.g. PEFT's prefix offset)."""
    model = realize(family, "causal", f"prefix:l={L}")
    ids = torch.tensor([SHORT])
    with torch.no_grad():
        shifted = model(input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=torch.arange(3, 6)[None]).logits
        default = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    assert (shifted - default).abs().max().item() > 1e-3


# --- 3. which tensor a hook holds: structure, not shape ----------------------------------------

ENC_DEC = ("bart", "mbart", "t5")
CROSS_LORA = Variant(modules=(Module(site="cross_attn", kind="lora", size=4, function="identity", composition="gated", targets=("q", "k", "v", "o")),))
GATED = {
    "unipelt": "unipelt:l=2,r=4,lora_r=4",
    "lora-cross-gated": CROSS_LORA,
    "lora-attn": "lora:r=4",
    "prefix": f"prefix:l={L}",
    "prompt": f"prompt:l={L}",
    "mam": f"mam:l={L},r=4",
}
ENC_LEN = 6


@pytest.mark.parametrize("name", list(GATED))
@pytest.mark.parametrize("family", ENC_DEC)
def test_decoder_length_equal_to_encoder_length_changes_nothing(family: str, name: str) -> None:
    """Logits of decoder positions 0..2 are the same whatever follows them (causal decoder)."""
    model = realize(family, "seq2seq", GATED[name])
    g = torch.Generator().manual_seed(1)
    enc = torch.randint(5, 100, (2, ENC_LEN), generator=g)
    dec = torch.randint(5, 100, (2, ENC_LEN + 2), generator=g)
    with torch.no_grad():
        ref = model(input_ids=enc, decoder_input_ids=dec[:, :3]).logits
        for n in (ENC_LEN - 1, ENC_LEN, ENC_LEN + 1):  # shorter, equal, longer
            got = model(input_ids=enc, decoder_input_ids=dec[:, :n]).logits[:, :3]
            assert (got - ref).abs().max().item() <= ATOL, n


@pytest.mark.parametrize("name", list(GATED))
@pytest.mark.parametrize("family", ENC_DEC)
def test_cached_greedy_equals_uncached_through_equal_lengths(family: str, name: str) -> None:
    model = realize(family, "seq2seq", GATED[name])
    g = torch.Generator().manual_seed(2)
    enc = torch.randint(5, 100, (2, 4), generator=g)
    kw = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, eos_token_id=None)  # decoder lengths 1..6 pass 4
    with torch.no_grad():
        cached = model.generate(input_ids=enc, use_cache=True, **kw)
        uncached = model.generate(input_ids=enc, use_cache=False, **kw)
    assert torch.equal(cached, uncached), (cached, uncached)


# --- 4. deepcopy: no hook uses another model's modules ---------------------------------------

COPY_PRESETS = ["houlsby:r=4", "pfeiffer:r=4", "pa-ffn:r=4", "scaled-pa:r=4", "scaled-pa:r=4,s=learned", f"prefix:l={L}", f"prefix:l={L},mlp=8",
                "lora:r=4", "lora-ffn:r=4", f"prompt:l={L}", f"mh-pa:l={L}", f"mam:l={L},r=4", "unipelt:l=2,r=4,lora_r=2", "bitfit"]
COPY_FAMILIES = {"bert": "cls", "bart": "seq2seq", "t5": "seq2seq", "gpt2": "causal", "llama": "causal"}
COPY_CASES = [(f, p) for f in COPY_FAMILIES for p in COPY_PRESETS if not (p == "bitfit" and f in ("t5", "llama"))]  # no biases there


def _trained(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The variant's own tensors: inserted `petl*` ones, BitFit's biases (not the task head)."""
    return [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("classifier")]


@pytest.mark.parametrize(("family", "preset"), COPY_CASES)
def test_deepcopy_is_independent_of_the_original(family: str, preset: str) -> None:
    model = realize(family, COPY_FAMILIES[family], preset)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # BitFit's biases start at 0 in the tiny models: give them values too
        for p in _trained(model):
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    ids = torch.randint(5, 100, (2, 6), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    kw = {"input_ids": ids, "attention_mask": mask}
    if COPY_FAMILIES[family] == "seq2seq":
        kw["decoder_input_ids"] = ids[:, :4]
    model.train()  # a training forward first: nothing it leaves behind may break deepcopy
    model(**kw).logits.sum().backward()
    model.eval()
    clone = copy.deepcopy(model)
    with torch.no_grad():
        before = clone(**kw).logits
        for p in _trained(model):  # wreck the original's variant
            p.zero_()
        after = clone(**kw).logits
        assert torch.equal(before, after), (after - before).abs().max()
        original = model(**kw).logits
        assert not torch.allclose(original, before)  # (the original did move)
        for p in _trained(clone):  # and the copy's own tensors are the ones that act in it
            p.add_(torch.randn(p.shape, generator=g) * 0.5)
        assert not torch.allclose(clone(**kw).logits, before)
