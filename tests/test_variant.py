"""The Variant spec: validation with clear errors, JSON round-trip, presets."""

from __future__ import annotations

import json

import pytest

from unipetl.spaces.presets import PRESETS, parse_preset
from unipetl.spaces.registry import UnipetlError
from unipetl.spaces.variant import Module, Variant

ALL_PRESETS = PRESETS.names()


@pytest.mark.parametrize("name", ALL_PRESETS)
def test_every_preset_round_trips_through_json(name: str) -> None:
    v = parse_preset(name)
    again = Variant.from_json(v.to_json())
    assert again == v
    assert json.loads(again.to_json()) == json.loads(v.to_json())
    assert v.name.startswith(name)


def test_preset_sizes_and_labels() -> None:
    v = parse_preset("mam:l=30,r=512,s=4")
    heads, pa = v.modules
    assert (heads.kind, heads.function, heads.composition, heads.size, heads.site) == ("heads", "softmax", "gated", 30, "attn")
    assert (pa.kind, pa.insertion, pa.composition, pa.scale, pa.size, pa.site) == ("adapter", "parallel", "scaled", 4.0, 512, "ffn")
    assert v.describe() == "prefix l=30 @attn + scaled parallel adapter r=512 s=4 @ffn"
    learned = parse_preset("scaled-pa:r=8,s=learned").modules[0]
    assert learned.composition == "learned_scale" and learned.scale == 1.0
    assert parse_preset("lora:r=8").modules[0].targets == ("q", "v")
    assert parse_preset("lora-ffn:r=8").modules[0].targets == ("w1", "w2")
    assert parse_preset("probe").is_probe
    assert parse_preset("full").full_finetune
    assert parse_preset("bitfit").bitfit
    assert parse_preset("prompt:l=7").prompt_length == 7
    mh = parse_preset("mh-pa:l=4").modules[0]
    assert (mh.kind, mh.function, mh.composition) == ("heads", "relu", "add")
    uni = parse_preset("unipelt").modules
    assert [m.composition for m in uni] == ["gated", "gated", "gated"]
    assert [m.kind for m in uni] == ["lora", "heads", "adapter"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("mamm", "Unknown preset 'mamm'. Did you mean: mam?"),
        ("lora:r=0", "`r` should be a positive integer, got '0'"),
        ("lora:r=-3", "`r` should be a positive integer, got '-3'"),
        ("prefix:l=abc", "`l` must be a number, got 'abc'"),
        ("lora:q=3", "Unknown key 'q' for preset 'lora'"),
        ("scaled-pa:s=0", "`s` should be a positive number or 'learned', got '0'"),
        ("bitfit:r=3", "It takes no arguments"),
        ("lora:r", "must look like key=value"),
        ("", "non-empty string"),
    ],
)
def test_bad_presets_name_the_field_and_value(text: str, message: str) -> None:
    with pytest.raises(UnipetlError) as err:
        parse_preset(text)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(site="ffn", kind="heads", size=4, function="softmax", composition="gated"), "`site` must be one of"),
        (dict(site="attn", kind="adapter", size=0), "`size` should be a positive integer, got 0"),
        (dict(site="atn", kind="adapter", size=4), "Did you mean: attn?"),
        (dict(site="attn", kind="lora", size=4, function="relu"), "`function` of LoRA is 'identity'"),
        (dict(site="ffn", kind="lora", size=4, function="identity", targets=("q",)), "`targets` at site 'ffn' must be among ['w1', 'w2'], got 'q'"),
        (dict(site="attn", kind="heads", size=4, function="relu", composition="gated"), "'softmax' goes with `composition` 'gated'"),
        (dict(site="attn", kind="adapter", size=4, scale=-1.0), "`scale` should be a positive finite number, got -1.0"),
        (dict(site="attn", kind="adapter", size=4, layers=(0, 0)), "distinct"),
        (dict(site="attn", kind="adapter", size=4, function="softmax"), "use kind 'heads'"),
        (dict(site="attn", kind="adapter", size=4, stacks=("middle",)), "`stacks` must be one of"),
    ],
)
def test_module_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(UnipetlError) as err:
        Module(**kwargs)
    assert message in str(err.value)


def test_variant_json_rejects_unknown_keys_with_suggestion() -> None:
    with pytest.raises(UnipetlError, match=r"Unknown key 'bitfitt' in variant. Did you mean: bitfit\?"):
        Variant.from_dict({"bitfitt": True})
    with pytest.raises(UnipetlError, match=r"Unknown key 'sise' in modules\[0\]. Did you mean: size\?"):
        Variant.from_dict({"modules": [{"site": "ffn", "kind": "adapter", "sise": 3}]})
    with pytest.raises(UnipetlError, match="missing the required key 'size'"):
        Variant.from_dict({"modules": [{"site": "ffn", "kind": "adapter"}]})
    with pytest.raises(UnipetlError, match="malformed"):
        Variant.from_json("{not json")
    with pytest.raises(UnipetlError, match="must be a JSON object"):
        Variant.from_json("[1, 2]")


def test_full_finetune_is_exclusive() -> None:
    with pytest.raises(UnipetlError, match="full_finetune"):
        Variant(full_finetune=True, bitfit=True)


def test_custom_variant_describe_and_round_trip() -> None:
    v = Variant(
        modules=(
            Module(site="cross_attn", kind="heads", size=8, function="gelu", composition="scaled", scale=2.0, stacks=("decoder",)),
            Module(site="ffn", kind="adapter", size=16, insertion="sequential", composition="gated", layernorm=True, layers=(0, 2), init="lora"),
        ),
        bitfit=True,
        prompt_length=5,
    )
    assert Variant.from_json(v.to_json()) == v
    assert v.describe() == (
        "scaled MH PA (gelu) l=8 s=2 @cross_attn[decoder] + gated sequential adapter r=16 @ffn[layers 0,2] + BitFit + prompt tuning l=5"
    )
