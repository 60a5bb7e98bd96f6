"""The search space: feasibility by construction, restriction from study files, budgets, presets."""

from __future__ import annotations

import optuna
import pytest

from unipetl.spaces.accounting import count
from unipetl.spaces.registry import UnipetlError
from unipetl.spaces.search_space import (
    DEFAULT_PRESETS,
    SpaceConfig,
    budget_params,
    feasible_methods,
    parse_budget,
    size_preset,
    suggest_variant,
)
from unipetl.spaces.shapes import resolve_shape

optuna.logging.set_verbosity(optuna.logging.WARNING)
MINILM = resolve_shape("minilm")
BART = resolve_shape("bart-large")


def test_fixed_trial_mam_like_point_sizes_to_budget() -> None:
    # 0.5 % of MiniLM = 113,566 paper params; full use, share 0.5:
    # prefix unit = 2 * 384 * 6 = 4,608 → l = floor(56,783 / 4,608) = 12
    # scaled PA unit = 2 * 384 * 6 = 4,608 → r = floor((113,566 - 12 * 4,608) / 4,608) = 12
    t = optuna.trial.FixedTrial(
        {"attn.method": "prefix", "ffn.method": "pa", "budget_use": 1.0, "attn.share": 0.5, "attn.placement": "all", "ffn.placement": "all",
         "ffn.pa.function": "relu", "ffn.pa.composition": "scaled", "ffn.pa.scale": 4.0}
    )
    v = suggest_variant(t, MINILM, 0.005)
    assert [m.size for m in v.modules] == [12, 12]
    assert v.modules[0].function == "softmax" and v.modules[0].composition == "gated"
    assert v.modules[1].composition == "scaled" and v.modules[1].scale == 4.0 and v.modules[1].insertion == "parallel"
    assert count(v, MINILM).paper_params == 24 * 4608 == 110_592 <= budget_params(0.005, MINILM)


def test_fixed_trial_single_site_lora_upper_layers() -> None:
    t = optuna.trial.FixedTrial({"attn.method": "none", "ffn.method_alone": "lora", "budget_use": 1.0, "ffn.placement": "upper", "ffn.lora.composition": "add"})
    v = suggest_variant(t, MINILM, 0.005)
    (m,) = v.modules
    # LoRA on W1 (384x1536) and W2 (1536x384) costs 2 * (384 + 1536) = 3,840 per rank and layer, 3 upper layers
    assert m.kind == "lora" and m.layers == (3, 4, 5) and m.size == 113_566 // (3 * 3840) == 9


@pytest.mark.parametrize("mode_use", [(0.5, 1.0), (0.02, 1.0)])
@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_real_sampler_never_exceeds_budget(sampler: str, mode_use: tuple[float, float]) -> None:
    cfg = SpaceConfig(budget_use=mode_use, placements=("all", "upper", "lower"), functions=("relu", "gelu", "identity"))
    s = optuna.samplers.RandomSampler(seed=1) if sampler == "random" else optuna.samplers.TPESampler(seed=1, n_startup_trials=10)
    study = optuna.create_study(sampler=s, direction="maximize")
    b = budget_params(0.005, MINILM)
    seen = set()
    for _ in range(120):
        trial = study.ask()
        v = suggest_variant(trial, MINILM, 0.005, cfg)
        paper = count(v, MINILM).paper_params
        assert 0 < paper <= b
        seen.add(tuple(m.kind for m in v.modules))
        study.tell(trial, paper / b)
    assert len(seen) >= 4  # the space is actually explored


def test_tiny_budget_removes_methods_that_cannot_fit() -> None:
    # 0.01 % of BART-large = 40,629: a prefix of l=1 needs 73,728 (36 attention sublayers) → removed;
    # an FFN adapter of r=1 costs 49,152 → removed too; LoRA at attention 147,456 → removed: nothing fits
    with pytest.raises(UnipetlError, match="smaller than any non-empty variant"):
        feasible_methods(BART, 0.0001, SpaceConfig())
    attn, ffn = feasible_methods(BART, 0.0002, SpaceConfig())  # 81,258: prefix / MH PA / adapters at attention fit
    assert "prefix" in attn and "lora" not in attn and "lora" not in ffn and "pa" in ffn


def test_restriction_from_study_file() -> None:
    cfg = SpaceConfig.from_dict({"attention_methods": ["prefix", "lora"], "ffn_methods": ["none"]})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(30):
        v = suggest_variant(study.ask(), MINILM, 0.005, cfg)
        assert len(v.modules) == 1 and v.modules[0].site == "attn" and v.modules[0].kind in ("heads", "lora")


@pytest.mark.parametrize(
    "data, match",
    [
        ({"attention_method": ["prefix"]}, "Did you mean: attention_methods"),
        ({"attention_methods": ["prefx"]}, "Did you mean: prefix"),
        ({"attention_methods": ["none"], "ffn_methods": ["none"]}, "nothing to search"),
        ({"budget_use": [0.0, 1.0]}, "budget_use"),
        ({"scales": [-1]}, "scales"),
        ({"presets": ["mamm"]}, "Did you mean: mam"),
    ],
)
def test_space_config_bad_input(data: dict, match: str) -> None:
    with pytest.raises(UnipetlError, match=match):
        SpaceConfig.from_dict(data)


def test_space_config_round_trip() -> None:
    cfg = SpaceConfig(attention_methods=("prefix",), scales=(4,))
    assert SpaceConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "text, expected",
    [("0.5%", 0.005), ("0.005", 0.005), ("100%", 1.0), ("113566", 113_566 / 22_713_216)],
)
def test_parse_budget(text: str, expected: float) -> None:
    assert parse_budget(text, MINILM) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("text", ["0", "-1", "150%", "abc", "0%", "1.5", "nan", "99999999999"])
def test_parse_budget_rejects(text: str) -> None:
    with pytest.raises(UnipetlError, match="budget"):
        parse_budget(text, MINILM)


def test_presets_sized_to_budget_are_the_largest_that_fit() -> None:
    b = budget_params(0.005, MINILM)
    for name in DEFAULT_PRESETS:
        v = size_preset(name, MINILM, 0.005)
        assert v is not None and v.name.startswith(name)
        paper = count(v, MINILM).paper_params
        assert paper <= b
        # one more unit of the size key would exceed the budget
        key = "l" if name == "prefix" else "r"
        bigger = v.name.replace(f"{key}={dict(kv.split('=') for kv in v.name.split(':')[1].split(','))[key]}", f"{key}={int(dict(kv.split('=') for kv in v.name.split(':')[1].split(','))[key]) + 1}", 1)
        from unipetl.spaces.presets import parse_preset

        assert count(parse_preset(bigger), MINILM).paper_params > b
    assert size_preset("mam", MINILM, 0.005).name == "mam:l=15,r=9,s=4.0,mlp=0"  # l halved from 30 so r >= 1 fits
    # BART-large at 6.74 %: MAM keeps l = 30 and reaches r = 512 exactly as in the paper's table
    assert size_preset("mam", BART, 27_377_664 / BART.base_params).name.startswith("mam:l=30,r=512")
    assert size_preset("lora", BART, 0.00001) is None


@pytest.mark.parametrize("budget", [0.005, 0.0005])
def test_every_method_pair_of_the_full_space_samples_within_budget(budget: float) -> None:
    """The opt-in kinds too: sizeless (IA)³ (its count does not grow with a size) and VeRA /
    DoRA (a fixed part at any rank) beside sized methods at the other site, every share."""
    from unipetl.spaces.search_space import ATTN_METHODS, FFN_METHODS

    cfg = SpaceConfig.from_dict({"attention_methods": list(ATTN_METHODS), "ffn_methods": list(FFN_METHODS), "attn_share": [0.05, 0.95]})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3), direction="maximize")
    b = budget_params(budget, MINILM)
    pairs = set()
    for _ in range(400):
        trial = study.ask()
        v = suggest_variant(trial, MINILM, budget, cfg)
        assert 0 < count(v, MINILM).paper_params <= b
        pairs.add(tuple(m.kind for m in v.modules))
        study.tell(trial, 0.0)
    if budget == 0.005:  # at 0.05 % LoRA and others no longer fit at size 1 and leave the lists
        assert ("lora", "ia3") in pairs and ("ia3", "vera") in pairs and len(pairs) >= 20
    assert ("ia3", "ia3") in pairs


def test_a_sizeless_ffn_method_beside_lora_gets_size_1_and_lora_the_rest() -> None:
    """Regression: LoRA at attention + (IA)³ at the FFN divided by a zero per-size cost."""
    t = optuna.trial.FixedTrial({"attn.method": "lora", "ffn.method": "ia3", "budget_use": 0.0205, "attn.lora.composition": "add",
                                 "attn.placement": "all", "ffn.placement": "all", "attn.share": 0.38})
    cfg = SpaceConfig.from_dict({"attention_methods": ["none", "lora"], "ffn_methods": ["none", "ia3"]})
    lora, ia3 = suggest_variant(t, MINILM, 0.005, cfg).modules
    # 0.5 % of MiniLM = 113,566; spend 2,328; LoRA (q, v) costs 4·384·6 = 9,216 per rank > the FFN's 2,328 - 9,216: fallback
    assert ia3.kind == "ia3" and ia3.size == 1 and lora.size == (113_566 - 6 * 1536) // 9216 == 11
