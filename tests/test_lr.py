"""Learning rate as part of the design: every kind has its rate, mixed variants get one group per kind."""

from __future__ import annotations

import pytest
import torch
from optuna.trial import FixedTrial

from unipetl.spaces import lr as lr_rules
from unipetl.spaces.presets import parse_preset
from unipetl.spaces.realize import apply_variant
from unipetl.spaces.registry import UnipetlError
from unipetl.spaces.search_space import SpaceConfig, suggest_lr_scale
from unipetl.spaces.testing import tiny_model

# preset → the kinds its trainable parameters must fall into (the task head apart)
KINDS = {
    "lora:r=4": {"lora"}, "lora-ffn:r=4": {"lora"}, "houlsby:r=4": {"adapter"}, "pfeiffer:r=4": {"adapter"},
    "pa-ffn:r=4": {"adapter"}, "scaled-pa:r=4": {"adapter"}, "prefix:l=3": {"prefix"}, "prefix:l=3,mlp=8": {"prefix"},
    "mh-pa:l=3": {"mh_pa"}, "prompt:l=3": {"prompt"}, "bitfit": {"bitfit"}, "full": {"full"}, "probe": set(),
    "mam:l=3,r=4": {"prefix", "adapter"}, "unipelt:l=2,r=4,lora_r=2": {"lora", "prefix", "adapter"},
    # the kinds after 2022: LoRA variants at LoRA's rate, the vector kinds at their own measured 3e-2
    "rslora:r=4": {"lora"}, "dora:r=4": {"lora"}, "pissa:r=4": {"lora"}, "olora:r=4": {"lora"}, "ia3": {"ia3"}, "vera:r=8": {"vera"},
}


def _plan(family: str, preset: str, **kw: float) -> tuple[torch.nn.Module, lr_rules.LrPlan, dict[str, str]]:
    model = tiny_model(family, "cls")
    variant = parse_preset(preset)
    apply_variant(model, variant)
    plan, kinds = lr_rules.plan(model, variant, **kw)
    return model, plan, kinds


@pytest.mark.parametrize("family", ["bert", "bart", "gpt2"])
@pytest.mark.parametrize("preset", list(KINDS))
def test_every_trained_parameter_gets_its_kinds_rate(family: str, preset: str) -> None:
    model, plan, kinds = _plan(family, preset)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(kinds) == trained
    assert set(kinds.values()) - {"head"} == KINDS[preset]
    for kind in KINDS[preset]:
        assert plan.rates[kind] == lr_rules.LR_CENTRAL[kind]
    head_kind = plan.principal
    assert plan.rates["head"] == lr_rules.LR_CENTRAL[head_kind]
    if preset == "probe":
        assert head_kind == "probe" and plan.rates == {"head": 0.02}
    groups = lr_rules.param_groups(model, plan, kinds, weight_decay=0.01)
    in_groups = [id(p) for g in groups for p in g["params"]]
    assert sorted(in_groups) == sorted(id(p) for p in model.parameters() if p.requires_grad)  # each exactly once
    for g in groups:
        assert g["lr"] == plan.rates[g["kind"]]
        assert g["weight_decay"] in (0.0, 0.01)


def test_mixed_variants_train_each_kind_at_its_own_rate() -> None:
    model, plan, kinds = _plan("bart", "mam:l=3,r=4", scale=2.0)
    assert plan.rates == {"adapter": 4e-3, "head": 4e-3, "prefix": 4e-2}  # MAM's head follows its larger part (the FFN adapters)
    opt = torch.optim.AdamW(lr_rules.param_groups(model, plan, kinds, 0.0))
    by_kind = {g["kind"]: g["lr"] for g in opt.param_groups}
    assert by_kind == {"adapter": 4e-3, "head": 4e-3, "prefix": 4e-2}
    prefix_params = {id(p) for n, p in model.named_parameters() if kinds.get(n) == "prefix"}
    assert prefix_params and all(g["lr"] == 4e-2 for g in opt.param_groups for p in g["params"] if id(p) in prefix_params)


def test_override_gives_every_parameter_one_rate_and_scale_is_checked() -> None:
    _model, plan, _kinds = _plan("bert", "unipelt:l=2,r=4,lora_r=2", override=3e-4)
    assert set(plan.rates.values()) == {3e-4} and plan.source == "override"
    with pytest.raises(UnipetlError, match="`lr_scale` should be a positive number, got -1"):
        _plan("bert", "lora:r=4", scale=-1)


def test_ranges_reach_every_kind_and_the_search_samples_the_multiplier() -> None:
    for kind, central in lr_rules.LR_CENTRAL.items():
        lo, hi = lr_rules.kind_range(kind)
        assert lo == pytest.approx(central / 4) and hi == pytest.approx(central * 4)
    # the searched ranges of prefix / prompt lie above LoRA's, full fine-tuning's below
    assert lr_rules.kind_range("prefix")[0] > lr_rules.LR_CENTRAL["lora"] > lr_rules.kind_range("full")[1]
    assert suggest_lr_scale(FixedTrial({"lr_scale": 2.5})) == 2.5
    assert suggest_lr_scale(FixedTrial({}), SpaceConfig(lr_scale=(1.0, 1.0))) == 1.0
    with pytest.raises(UnipetlError, match="space `lr_scale` must be a \\[low, high\\] pair"):
        SpaceConfig(lr_scale=(0.0, 2.0))
