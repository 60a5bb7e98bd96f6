"""Analytic parameter accounting against the paper's exact counts (README, "Parameter accounting")."""

from __future__ import annotations

import pytest

from unipetl.spaces.accounting import count
from unipetl.spaces.presets import PRESETS, parse_preset
from unipetl.spaces.registry import UnipetlError
from unipetl.spaces.shapes import CARDS, count_backbone, resolve_shape
from unipetl.spaces.variant import Module, Variant

BART = 406_291_456


@pytest.fixture(scope="module")
def bart():
    return resolve_shape("bart-large")


@pytest.mark.parametrize(("l", "expected"), [(1, 73_728), (30, 2_211_840), (200, 14_745_600), (512, 37_748_736)])
def test_bart_prefix(bart, l: int, expected: int) -> None:
    assert count(parse_preset(f"prefix:l={l}"), bart).paper_params == expected == 73_728 * l


@pytest.mark.parametrize(("r", "expected"), [(30, 1_474_560), (200, 9_830_400), (512, 25_165_824), (1024, 50_331_648)])
def test_bart_ffn_adapter(bart, r: int, expected: int) -> None:
    assert count(parse_preset(f"pa-ffn:r={r}"), bart).paper_params == expected == 49_152 * r


@pytest.mark.parametrize(("r", "expected"), [(1, 147_456), (30, 4_423_680), (200, 29_491_200), (400, 58_982_400)])
def test_bart_lora_attention(bart, r: int, expected: int) -> None:
    assert count(parse_preset(f"lora:r={r}"), bart).paper_params == expected == 147_456 * r


def test_bart_mam_pfeiffer_and_percentages(bart) -> None:
    mam = count(parse_preset("mam:l=30,r=512,s=4"), bart)
    assert mam.paper_params == 27_377_664
    assert mam.base_params == BART
    assert mam.paper_percent == pytest.approx(100 * 27_377_664 / BART)
    assert round(mam.paper_percent, 2) == 6.74
    pf = count(parse_preset("pfeiffer:r=600"), bart)
    assert pf.paper_params == 29_491_200
    assert round(pf.paper_percent, 2) == 7.26
    assert round(count(parse_preset("prefix:l=200"), bart).paper_percent, 2) == 3.63
    # trainable count adds adapter biases (r + d per FFN sublayer, 24 sublayers), not counted by the paper
    assert mam.trainable_params == 27_377_664 + 24 * (512 + 1024)


def test_roberta_mam() -> None:
    c = count(parse_preset("mam:l=16,r=16"), resolve_shape("roberta-base"))
    assert c.paper_params == 589_824
    assert c.base_params == 124_645_632
    assert round(c.paper_percent, 2) == 0.47


def test_bitfit_prompt_full_probe(bart) -> None:
    assert count(parse_preset("bitfit"), bart).paper_params == 333_824
    assert count(parse_preset("prompt:l=100"), bart).paper_params == 100 * 1024
    assert count(parse_preset("full"), bart).paper_params == BART
    assert count(parse_preset("probe"), bart).paper_params == 0


def test_reparam_mlp_counts_trainable_not_paper(bart) -> None:
    plain = count(parse_preset("prefix:l=30"), bart)
    mlp = count(parse_preset("prefix:l=30,mlp=512"), bart)
    assert mlp.paper_params == plain.paper_params
    # 3 groups (encoder self, decoder self, decoder cross), 12 layers each, out = 2·1024·12
    out = 2 * 1024 * 12
    assert mlp.trainable_params == 3 * (30 * 1024 + 1024 * 512 + 512 + 512 * out + out)


def test_lora_dims_follow_gqa_and_gated_ffn() -> None:
    llama = resolve_shape("llama-1b")  # d = 2048, kv = 8·64 = 512, ffn 8192 gated
    c = count(Variant(modules=(Module(site="attn", kind="lora", size=4, function="identity", targets=("q", "k", "v", "o")),)), llama)
    per_layer = 4 * ((2048 + 2048) + (2048 + 512) * 2 + (2048 + 2048))
    assert c.paper_params == 16 * per_layer
    f = count(parse_preset("lora-ffn:r=4"), llama)
    assert f.paper_params == 16 * 4 * (2 * (2048 + 8192) + (8192 + 2048))
    assert count(parse_preset("prefix:l=10"), llama).paper_params == 16 * 2 * 10 * 512


def test_layers_and_stacks_selection(bart) -> None:
    m = Module(site="attn", kind="adapter", size=8, stacks=("decoder",), layers=(0, 1))
    c = count(Variant(modules=(m,)), bart)
    assert c.modules[0].instances == 4  # decoder self + cross, 2 layers
    with pytest.raises(UnipetlError, match="`layers` holds 12"):
        count(Variant(modules=(Module(site="ffn", kind="adapter", size=8, layers=(12,)),)), bart)


def test_sites_the_model_lacks() -> None:
    roberta = resolve_shape("roberta-base")
    with pytest.raises(UnipetlError, match="site 'cross_attn' does not exist"):
        count(Variant(modules=(Module(site="cross_attn", kind="adapter", size=8),)), roberta)
    with pytest.raises(UnipetlError, match="`stacks` names 'decoder'"):
        count(Variant(modules=(Module(site="ffn", kind="adapter", size=8, stacks=("decoder",)),)), roberta)
    with pytest.raises(UnipetlError, match="no bias vectors"):
        count(parse_preset("bitfit"), resolve_shape("llama-1b"))


@pytest.mark.parametrize("card", CARDS.names())
def test_cards_match_meta_device_models(card: str) -> None:
    c = CARDS.get(card)
    assert count_backbone(c.to_config()) == (c.base_params, c.bias_params)


@pytest.mark.parametrize("name", PRESETS.names())
@pytest.mark.parametrize("card", ["bart-large", "mbart-large-cc25", "roberta-base", "t5-base", "gpt2", "llama-1b", "minilm"])
def test_every_preset_counts_on_every_card(name: str, card: str) -> None:
    shape = resolve_shape(card)
    v = parse_preset(name)
    if v.bitfit and shape.bias_params == 0:
        with pytest.raises(UnipetlError, match="no bias vectors"):
            count(v, shape)
        return
    c = count(v, shape)
    assert 0 <= c.paper_params <= c.trainable_params or v.modules[0].reparam
    assert c.base_params == shape.base_params
