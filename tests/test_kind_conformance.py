"""The conformance suite every registered module kind passes on every family it declares.

Like Optuna's shipped sampler / storage suites: a new kind (spaces/kind_<name>.py + one
registry line) gets all of these for free, from its `examples()` and `families`:
analytic == realized counts; only its own parameters (and the task head) train; a no-op at
init where it claims so; save → load gives identical logits; generation with the KV cache
equals generation without (seq2seq and decoder-only families); a deepcopy is independent of
the original; a few AdamW steps lower the loss. Whole-model kinds (prompt, BitFit, full
fine-tuning; `ExtraKind`) run through the same checks with their example variants.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch

from unipetl.spaces.io import load_variant, save_variant
from unipetl.spaces.kinds import EXTRAS, ExtraKind, ModuleKind, active_extras, all_extras, all_kinds, get_kind
from unipetl.spaces.realize import apply_variant
from unipetl.spaces.testing import tiny_model
from unipetl.spaces.variant import Variant

os.environ.setdefault("HF_HUB_OFFLINE", "1")

HEADS = {"bert": "cls", "roberta": "cls", "bart": "seq2seq", "mbart": "seq2seq", "t5": "seq2seq", "gpt2": "causal", "llama": "causal", "qwen2": "causal"}
# every kind × every family it declares with its first example; its other examples on one
# family of each architecture (encoder, encoder-decoder, decoder-only) to keep the tier fast
SPREAD = ("bert", "bart", "llama")
CASES = [
    pytest.param(kind.name, i, family, id=f"{kind.name}{i}-{family}")
    for kind in [*all_kinds(), *all_extras()]
    for i, _ in enumerate(kind.examples())
    for family in kind.families
    if i == 0 or family in SPREAD
]
GEN_CASES = [c for c in CASES if HEADS[c.values[2]] != "cls"]


def _kind(name: str) -> ModuleKind | ExtraKind:
    return EXTRAS.get(name) if name in EXTRAS else get_kind(name)


def _spec(kind: str, i: int) -> Variant:
    k = _kind(kind)
    return k.examples()[i] if isinstance(k, ExtraKind) else Variant(modules=(k.examples()[i],))


def _claims_noop(kind: str, variant: Variant) -> bool:
    k = _kind(kind)
    return k.claims_noop(variant) if isinstance(k, ExtraKind) else k.claims_noop(variant.modules[0])


def _perturb(model: torch.nn.Module, seed: int) -> None:
    """Move every trained tensor (modules, extras' backbone tensors, head) off its value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.3)


def _batch(family: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 100, (2, 7), generator=g)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 5:] = 0
    head = HEADS[family]
    if head == "cls":
        labels = torch.tensor([1, 1])  # one class, as in test_realize: a clear descent in 4 steps
    elif head == "seq2seq":
        labels = torch.randint(5, 100, (2, 5), generator=g)
    else:
        labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _logits(model: torch.nn.Module, family: str) -> torch.Tensor:
    inputs = _batch(family)
    if HEADS[family] != "seq2seq":
        inputs.pop("labels")
    with torch.no_grad():
        return model(**inputs).logits


def test_every_kind_has_examples_and_families() -> None:
    for kind in [*all_kinds(), *all_extras()]:
        assert kind.examples(), f"kind {kind.name!r} declares no examples for the conformance suite"
        assert set(kind.families) <= set(HEADS), kind.families


@pytest.mark.parametrize(("kind", "index", "family"), CASES)
def test_kind_conformance(kind: str, index: int, family: str, tmp_path: Path) -> None:
    variant = _spec(kind, index)
    extras = active_extras(variant)
    model = tiny_model(family, HEADS[family])
    ref = _logits(model, family)
    realized = apply_variant(model, variant)
    # analytic == realized counts
    c = realized.counts
    assert realized.realized_paper_params() == c.paper_params
    assert realized.realized_trainable_params() == c.trainable_params
    # only its parameters (and the task head) train: inserted `petl*` tensors, or backbone tensors an extra claims
    head_ids = {id(p) for p in model.parameters()} - {id(p) for p in model.base_model.parameters()} if model.base_model is not model else set()
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert "petl" in n or id(p) in head_ids or any(k.lr_kind(n) for k in extras), n
    # a no-op at init where the kind claims it
    if _claims_noop(kind, variant):
        assert (_logits(model, family) - ref).abs().max().item() <= 1e-6
    # a few AdamW steps lower the loss (eval mode: no dropout noise)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    losses = []
    for _ in range(4):
        loss = model(**_batch(family)).loss
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        if len(losses) == 1:  # the kind's own tensors get a gradient, not only the head
            own = [p.grad for p in params if id(p) not in head_ids]
            assert any(g is not None and g.abs().sum() > 0 for g in own)
        opt.step()
    assert losses[-1] < losses[0], losses
    _perturb(model, seed=5)  # so the remaining checks mean something
    trained = _logits(model, family)
    # a deepcopy is independent: perturbing the copy leaves the original unchanged
    twin = copy.deepcopy(model)
    assert torch.equal(_logits(twin, family), trained)
    _perturb(twin, seed=6)
    assert not torch.equal(_logits(twin, family), trained)
    assert torch.equal(_logits(model, family), trained)
    # save → load into a fresh base model gives identical logits
    save_variant(realized, tmp_path, base_model_id=f"tiny-{family}")
    fresh = tiny_model(family, HEADS[family])
    load_variant(fresh, tmp_path)
    assert torch.allclose(_logits(fresh, family), trained, atol=1e-6, rtol=0)


@pytest.mark.parametrize(("kind", "index", "family"), GEN_CASES)
def test_kind_generation_cache_equals_no_cache(kind: str, index: int, family: str) -> None:
    model = tiny_model(family, HEADS[family])
    apply_variant(model, _spec(kind, index))
    _perturb(model, seed=4)
    g = torch.Generator().manual_seed(2)
    inputs = {"input_ids": torch.randint(5, 100, (2, 6), generator=g), "attention_mask": torch.ones(2, 6, dtype=torch.long)}
    kw = dict(max_new_tokens=5, min_new_tokens=5, do_sample=False, pad_token_id=model.config.pad_token_id or 0)
    with torch.no_grad():
        cached = model.generate(**inputs, use_cache=True, **kw)
        uncached = model.generate(**inputs, use_cache=False, **kw)
    assert torch.equal(cached, uncached), (cached, uncached)
