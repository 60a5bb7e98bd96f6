"""Every registered family description is complete and consistent with the models it describes.

A conformance table like PEFT's: one case per tiny model type of every `FamilySpec` in
`unipetl.spaces.family_specs.FAMILIES`, so a newly registered family (with its tiny config) is
checked without editing this file. The last tests register a throw-away family to show that a
description plus a tiny config is all a new family needs.
"""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch
from transformers.pytorch_utils import Conv1D

from unipetl.evaluators.trial import _length_limit
from unipetl.spaces import families
from unipetl.spaces.accounting import site_instances
from unipetl.spaces.family_specs import FAMILIES, FamilySpec, family_for, get_family, position_offset, register, tiny_family, unregister
from unipetl.spaces.presets import parse_preset
from unipetl.spaces.realize import apply_variant
from unipetl.spaces.registry import UnipetlError
from unipetl.spaces.shapes import ModelShape, shape_from_config
from unipetl.spaces.testing import TINY_CONFIGS, randomize_variant, tiny_config, tiny_model
from unipetl.spaces.variant import Module

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TINY = [(spec.name, t) for spec in FAMILIES.values() for t in spec.tiny]
HEAD = {"encoder": "cls", "encoder-decoder": "seq2seq", "decoder": "causal"}


def _in_out(mod: torch.nn.Module, slc: slice | None) -> tuple[int, int]:
    """(input, output) features of a projection; Conv1D (GPT-2) stores its weight as (in, out)."""
    d_in, d_out = (mod.weight.shape[0], mod.weight.shape[1]) if isinstance(mod, Conv1D) else (mod.weight.shape[1], mod.weight.shape[0])
    return d_in, (slc.stop - slc.start if slc is not None else d_out)


def _count_layers(spec: FamilySpec, base: torch.nn.Module, stack: str) -> int:
    """Layers the layout finds on the real model (it runs out of them with an IndexError)."""
    n = 0
    while True:
        try:
            spec.layout(base, stack, "ffn", n)
        except IndexError:
            return n
        n += 1


def _shape_of_model(spec: FamilySpec, model: torch.nn.Module, stacks: list[tuple[str, bool]]) -> tuple:
    """The shape facts read from the built modules through the layout, not from the config."""
    base = families.backbone(model)
    emb = model.get_input_embeddings()
    out = []
    for name, cross in stacks:
        attn = spec.layout(base, name, "self_attn", 0)
        ffn = spec.layout(base, name, "ffn", 0)
        q_dim, kv_dim = _in_out(*attn.proj["q"][0])[1], _in_out(*attn.proj["k"][0])[1]
        out.append((name, _count_layers(spec, base, name), q_dim, kv_dim, _in_out(*ffn.proj["w1"][0])[1], len(ffn.proj["w1"]) == 2, cross))
    return emb.weight.shape[1], emb.weight.shape[0], tuple(out), sum(p.numel() for p in base.parameters())


def _shape_facts(shape: ModelShape) -> tuple:
    stacks = tuple((s.name, s.n_layers, s.q_dim, s.kv_dim, s.ffn_dim, s.ffn_gated, s.has_cross) for s in shape.stacks)
    return shape.d_model, shape.vocab_size, stacks, shape.base_params


def test_model_types_map_back() -> None:
    seen: dict[str, str] = {}
    for name, spec in FAMILIES.items():
        assert spec.name == name and get_family(name) is spec
        for t in spec.model_types:
            assert t not in seen, f"{t} is in both {seen.get(t)} and {name}"
            seen[t] = name
            assert family_for(t) is spec
        assert spec.tiny, f"family {name} has no tiny config: the conformance tests would skip it"
    assert list(TINY_CONFIGS) == [t for _, t in TINY]


@pytest.mark.parametrize(("family", "model_type"), TINY)
def test_description_matches_tiny_model(family: str, model_type: str) -> None:
    spec = get_family(family)
    assert tiny_family(model_type) is spec
    cfg = tiny_config(model_type)
    assert cfg.model_type == model_type and family_for(cfg.model_type) is spec
    model = tiny_model(model_type)  # the bare backbone: base_params counts exactly these
    shape = shape_from_config(cfg)
    assert shape.family == family
    assert _shape_facts(shape) == _shape_of_model(spec, model, [(s.name, s.has_cross) for s in shape.stacks])
    # encoder-only / encoder-decoder / decoder-only, as the config and the stacks say
    assert spec.encoder_decoder == bool(getattr(cfg, "is_encoder_decoder", False)) == shape.is_encoder_decoder
    assert spec.decoder_only == ([s.name for s in shape.stacks] == ["decoder"])
    assert spec.typed(model_type) == (getattr(cfg, "type_vocab_size", 1) > 1)


@pytest.mark.parametrize(("family", "model_type"), TINY)
def test_layout_finds_every_sublayer(family: str, model_type: str) -> None:
    spec = get_family(family)
    model = tiny_model(model_type, HEAD[spec.arch])
    base = families.backbone(model)
    owned = {id(m) for m in base.modules()}
    shape = shape_from_config(model.config)
    every = site_instances(Module(site="attn", kind="adapter", size=1), shape) + site_instances(Module(site="ffn", kind="adapter", size=1), shape)
    found = set()
    for inst in every:
        refs = families.sublayer(model, inst.stack, inst.sublayer, inst.layer)
        st = shape.stack(inst.stack)
        mods = [refs.reads, refs.out] + [m for targets in refs.proj.values() for m, _ in targets] + ([refs.attn] if refs.attn is not None else [])
        assert all(id(m) in owned for m in mods), inst
        found.add((inst.stack, inst.sublayer, inst.layer, id(refs.out)))
        dims = {t: [_in_out(m, s) for m, s in targets] for t, targets in refs.proj.items()}
        if inst.sublayer == "ffn":
            assert set(refs.proj) == {"w1", "w2"} and refs.reads is refs.proj["w1"][0][0] and refs.out is refs.proj["w2"][0][0]
            assert dims["w1"] == [(shape.d_model, st.ffn_dim)] * (2 if st.ffn_gated else 1)
            assert dims["w2"] == [(st.ffn_dim, shape.d_model)]
        else:
            assert set(refs.proj) == {"q", "k", "v", "o"} and refs.attn is not None
            assert refs.reads is refs.proj["q"][0][0] and refs.out is refs.proj["o"][0][0]
            assert dims["q"][0][1] == st.q_dim and dims["k"][0][1] == dims["v"][0][1] == st.kv_dim
            assert dims["o"] == [(st.q_dim, shape.d_model)]
    assert len({out for *_, out in found}) == len(every)  # every instance is its own module
    emb = families.input_embeddings(model)  # where the soft prompt starts
    assert emb.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


@pytest.mark.parametrize(("family", "model_type"), TINY)
def test_special_ids_build(family: str, model_type: str) -> None:
    spec = get_family(family)
    ids = spec.special_ids()  # what evaluators.models writes into a tiny model's config for its word-level tokenizer
    assert {ids.get("pad_token_id"), ids.get("bos_token_id"), ids.get("eos_token_id")} - {None} <= {0, 1, 2}
    model = tiny_model(model_type, HEAD[spec.arch], vocab_size=30, **ids)
    assert all(getattr(model.config, k) == v for k, v in ids.items())
    if spec.encoder_decoder:
        assert model.config.decoder_start_token_id is not None


@pytest.mark.parametrize(("family", "model_type"), TINY)
def test_position_offset(family: str, model_type: str) -> None:
    spec = get_family(family)
    model = tiny_model(model_type)  # the tiny config's own pad id: RoBERTa's positions start after it
    offset = position_offset(model_type)
    limit = _length_limit(model, 10_000)
    if limit == 10_000:  # no position table (T5's relative positions): nothing to offset
        assert offset == 0
        return
    assert limit == (getattr(model.config, "max_position_embeddings", None) or model.config.n_positions) - offset

    def run(n: int) -> None:
        ids = torch.full((1, n), 5)
        kw = {"decoder_input_ids": ids[:, :4]} if spec.encoder_decoder else {}
        with torch.no_grad():
            model(input_ids=ids, **kw)

    run(limit)  # the longest input the limit lets through fits the table …
    if offset:
        with pytest.raises((IndexError, RuntimeError)):  # … and without the offset the limit would let through too many
            run(limit + 1)


# --- adding a family: one description (with its tiny config), nothing else -----------------


@pytest.fixture
def camembert() -> FamilySpec:
    """CamemBERT under its own family name: BERT's layout and shape keys, RoBERTa's positions."""
    roberta = dict(get_family("bert").tiny["roberta"])
    spec = dataclasses.replace(get_family("bert"), name="camembert", model_types=("camembert",), position_offset={"camembert": 2}, token_types=(),
                               tiny={"camembert": roberta})
    register(spec)
    yield spec
    unregister("camembert")


@pytest.mark.parametrize("preset", ["lora:r=2", "prompt:l=3", "prefix:l=3", "houlsby:r=4"])
def test_new_family_is_one_description(camembert: FamilySpec, preset: str) -> None:
    base = tiny_model("camembert")
    shape = shape_from_config(base.config)
    assert shape.family == "camembert" and _shape_facts(shape) == _shape_of_model(camembert, base, [("encoder", False)])
    model = tiny_model("camembert", "cls")
    assert _length_limit(model, 10_000) == 128 and families.family_of(model) is camembert
    ids = torch.randint(5, 100, (2, 7), generator=torch.Generator().manual_seed(0))
    realized = apply_variant(model, parse_preset(preset))  # layout, prompt path and accounting all through the description
    assert realized.realized_trainable_params() == realized.counts.trainable_params
    randomize_variant(model)
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits).all()


def test_unregistered_type_is_refused_and_names_are_unique(camembert: FamilySpec) -> None:
    with pytest.raises(KeyError, match="already registered"):
        register(camembert)
    with pytest.raises(KeyError, match="already belongs to family 'bert'"):
        register(dataclasses.replace(camembert, name="roberta2", model_types=("roberta",), position_offset={}, tiny={}))
    unregister("camembert")
    try:
        with pytest.raises(UnipetlError, match="model type 'camembert' is not supported"):
            shape_from_config(tiny_config("roberta", model_type="camembert"))
        assert position_offset("camembert") == 0
    finally:
        register(camembert)  # the fixture unregisters it again


def test_description_validates_its_fields() -> None:
    bert = get_family("bert")
    with pytest.raises(UnipetlError, match="`position_offset` names 'camembert'"):
        dataclasses.replace(bert, name="x", position_offset={"camembert": 2})
    with pytest.raises(UnipetlError, match="`arch` should be"):
        dataclasses.replace(bert, name="x", arch="decoder-only")
    with pytest.raises(UnipetlError, match="Did you mean: bart"):
        get_family("bartt")
