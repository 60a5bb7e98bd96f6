"""Folding inserted modules into the base weights (`Realized.merge`, `merge_plan`, `merge_lora`).

The latency objective times a variant with everything folded that folds exactly, so a wrong
fold is a silent numeric fault twice over: the timed model would compute another function, and
a merge that skips a foldable module overstates the variant's inference cost. Each case mixes
modules on shared projections (LoRA and (IA)³ on v, DoRA beside them, a gated LoRA) on an
encoder (nn.Linear), GPT-2 (fused Conv1D, column slices), gated-FFN decoders (two W_1; Qwen2 with
q / k / v biases) and encoder-decoders (BART with biases, T5 without; cross-attention k / v read
the encoder states): every family of tests/helpers.HEADS.
"""

from __future__ import annotations

import pytest
import torch
from helpers import HEADS, peft_inputs

from unipetl.evaluators.latency import mergeable_copy
from unipetl.spaces.presets import parse_preset
from unipetl.spaces.realize import apply_variant, merge_plan
from unipetl.spaces.registry import UnipetlError
from unipetl.spaces.testing import randomize_variant, tiny_model
from unipetl.spaces.variant import Module, Variant


def _mix(*names: str) -> Variant:
    return Variant(modules=tuple(m for n in names for m in parse_preset(n).modules))


def _gated_lora_ffn() -> str:
    return "lora-ffn:r=2,s=learned"


# name -> (variant, which kinds must end up folded: "all", "none", or a set of kinds folded)
CASES = {
    "ia3": (_mix("ia3"), "all"),
    "ia3+lora (share v)": (_mix("ia3", "lora:r=4"), "all"),
    "ia3+lora-ffn (share w2: input-scaled after the LoRA)": (_mix("ia3", "lora-ffn:r=4"), "all"),
    "ia3+dora (share v: DoRA reads W)": (_mix("ia3", "dora:r=4"), {"ia3"}),
    "lora+dora (share q, v)": (_mix("lora:r=4", "dora:r=4"), "none"),
    "dora": (_mix("dora:r=4"), "all"),
    "vera+ia3": (_mix("vera:r=4", "ia3"), "all"),
    "lora attn + learned-scale lora ffn": (_mix("lora:r=4", _gated_lora_ffn()), {"lora"}),
    "ia3 + learned-scale lora ffn (share w2)": (_mix("ia3", _gated_lora_ffn()), {"ia3"}),
    "unipelt (gated LoRA) + ia3": (_mix("unipelt:l=2,r=4,lora_r=2", "ia3"), {"ia3"}),
    "lora q + gated lora q, v (additive updates commute)": (Variant(modules=(
        Module(site="attn", kind="lora", size=2, function="identity", composition="scaled", scale=0.5, targets=("q",), init="lora"),
        Module(site="attn", kind="lora", size=2, function="identity", composition="gated", targets=("q", "v"), init="lora"))), {"lora"}),
    "ia3 + mam + houlsby (adapters and prefixes block nothing)": (_mix("ia3", "mam:l=2,r=4,s=2", "houlsby:r=4"), "all"),
}


def _hidden(model: torch.nn.Module) -> torch.Tensor:
    """The last hidden states (B, T, d) — of the decoder for seq2seq, teacher-forced, so cross-
    attention's k / v are in play: O(1) values, where a tiny model's head output is ~0.01."""
    inputs = peft_inputs(model.config.model_type)
    if model.config.is_encoder_decoder:
        return model(**inputs, output_hidden_states=True).decoder_hidden_states[-1]
    return model(**inputs, output_hidden_states=True).hidden_states[-1]


def _folded_kinds(realized) -> tuple[set[str], set[str]]:
    """(kinds with a folded module, kinds with an unfolded one) among LoRA-like modules ("gated":
    a gated / learned-scale LoRA) and (IA)³ vectors."""
    from unipetl.spaces.layers import Lora

    folded, kept = set(), set()
    for m in realized.model.modules():
        if isinstance(m, Lora):
            (folded if m.merged else kept).add(m.spec.kind if m.mergeable else "gated")
        for v in getattr(m, "petl_ia3", ()):
            (folded if v.merged else kept).add("ia3")
    return folded, kept


@pytest.mark.parametrize("family", list(HEADS))
@pytest.mark.parametrize("case", list(CASES))
def test_merge_folds_exactly_what_folds_and_computes_the_same_function(family: str, case: str) -> None:
    variant, want = CASES[case]
    # float64: a fold is exact up to rounding, so the tolerance can sit far below any real fault
    realized = apply_variant(tiny_model(family, HEADS[family], seed=1).double(), variant)
    randomize_variant(realized.model, seed=2)  # no-op-at-init modules would hide a wrong fold
    with torch.no_grad():
        for n, p in realized.model.named_parameters():
            if n.endswith("petl_l"):  # (IA)³ vectors near 1, not near 0: a dropped fold must show
                p.add_(1.0)
        base = _hidden(tiny_model(family, HEADS[family], seed=1).double())
        before = _hidden(realized.model)
        assert (before - base).abs().max() > 1e-2  # the variant really acts
        n = realized.merge()
        after = _hidden(realized.model)
    assert (after - before).abs().max().item() <= 1e-10
    folded, kept = _folded_kinds(realized)
    kinds = folded | kept
    if want == "all":
        assert n > 0 and not kept
    elif want == "none":
        assert n == 0 and not folded
    else:
        assert want <= folded and n > 0, (folded, kept)
        assert kinds - want <= kept and not (kept & want - {"ia3"}), (folded, kept)
    assert realized.merge() == 0  # nothing left to fold: a second call changes nothing
    with torch.no_grad():
        assert torch.equal(_hidden(realized.model), after)


def test_ia3_fold_scales_rows_of_an_output_and_columns_of_an_input() -> None:
    realized = apply_variant(tiny_model("bert", "cls", seed=1), parse_preset("ia3"))
    randomize_variant(realized.model, seed=3)
    layer = realized.model.bert.encoder.layer[0]
    k, w2 = layer.attention.self.key, layer.output.dense
    lk, l2 = k.petl_ia3[0].petl_l.detach().clone(), w2.petl_ia3[0].petl_l.detach().clone()
    wk, bk, ww2, bw2 = k.weight.detach().clone(), k.bias.detach().clone(), w2.weight.detach().clone(), w2.bias.detach().clone()
    assert realized.merge() == 3 * realized.model.config.num_hidden_layers  # k, v, w2 per layer
    assert torch.allclose(k.weight, lk[:, None] * wk) and torch.allclose(k.bias, lk * bk)  # y = l ⊙ (W x + b)
    assert torch.allclose(w2.weight, ww2 * l2[None, :]) and torch.equal(w2.bias, bw2)  # y = W (l ⊙ x) + b


def test_the_plan_keeps_a_gated_lora_and_an_input_vector_beside_it_and_folds_the_rest() -> None:
    layers = tiny_model("bert", "cls").config.num_hidden_layers
    realized = apply_variant(tiny_model("bert", "cls"), _mix("unipelt:l=2,r=4,lora_r=2", "ia3"))
    loras, vectors = merge_plan(realized.model)
    assert loras == []  # UniPELT's LoRA (q, v) is gated
    assert len(vectors) == 3 * layers  # (IA)³ on k, on v (output-scaled: it acts before the gated LoRA) and on W_2
    gated_ffn = apply_variant(tiny_model("bert", "cls"), _mix("ia3", _gated_lora_ffn()))
    loras, vectors = merge_plan(gated_ffn.model)
    w2 = {id(layer.output.dense) for layer in gated_ffn.model.bert.encoder.layer}
    assert loras == [] and len(vectors) == 2 * layers and not any(id(mod) in w2 for mod, _ in vectors)  # W_2's input vector stays
    shared = apply_variant(tiny_model("bert", "cls"), _mix("ia3", "dora:r=4"))
    loras, vectors = merge_plan(shared.model)
    v = {id(layer.attention.self.value) for layer in shared.model.bert.encoder.layer}
    assert loras == [] and len(vectors) == 2 * layers and not any(id(mod) in v for mod, _ in vectors)  # DoRA's q, v: q alone, v shared


def test_merge_lora_refuses_what_it_cannot_fold_alone() -> None:
    shared = apply_variant(tiny_model("bert", "cls"), _mix("ia3", "lora:r=4"))
    with pytest.raises(UnipetlError, match=r"shares projection .*Ia3Vector.*Realized\.merge"):
        shared.merge_lora()
    assert not any(getattr(m, "merged", False) for m in shared.model.modules())  # all or none: nothing folded
    # an input-scaled vector beside the LoRA is fine: its pre-hook keeps scaling the folded W's input
    ffn = apply_variant(tiny_model("bert", "cls").double(), _mix("ia3", "lora-ffn:r=4"))
    randomize_variant(ffn.model, seed=5)
    with torch.no_grad():
        want = _hidden(ffn.model)
        ffn.merge_lora()
        assert (_hidden(ffn.model) - want).abs().max().item() <= 1e-10
    with pytest.raises(UnipetlError, match="shares projection"):
        apply_variant(tiny_model("bert", "cls"), _mix("lora:r=4", "dora:r=4")).merge_lora()
    mixed = Variant(modules=(*parse_preset("lora:r=4").modules,
                             Module(site="ffn", kind="lora", size=2, function="identity", composition="gated", targets=("w1",), init="lora")))
    with pytest.raises(UnipetlError, match="gated"):
        apply_variant(tiny_model("bert", "cls"), mixed).merge_lora()


def test_latency_copy_folds_ia3_and_partial_lora_and_leaves_the_trained_model_alone() -> None:
    realized = apply_variant(tiny_model("bert", "cls", seed=1), _mix("lora:r=4", _gated_lora_ffn(), "ia3"))
    randomize_variant(realized.model, seed=4)
    before = {k: v.clone() for k, v in realized.model.state_dict().items()}
    with torch.no_grad():
        want = _hidden(realized.model)
        twin, merged = mergeable_copy(realized)
        got = _hidden(twin)
    layers = realized.model.config.num_hidden_layers
    # per layer: the attention LoRA, (IA)³ on k and v; not the learned-scale FFN LoRA nor (IA)³ on w2 (they share w2)
    assert merged == 3 * layers
    assert torch.allclose(got, want, atol=1e-5, rtol=0)
    assert all(torch.equal(before[k], v) for k, v in realized.model.state_dict().items())


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_a_fold_drops_the_hooks_it_made_idle_and_keeps_the_others(family: str) -> None:
    from unipetl.spaces.layers import Lora

    realized = apply_variant(tiny_model(family, HEADS[family], seed=1).double(), _mix("lora:r=4", "ia3", _gated_lora_ffn()))
    randomize_variant(realized.model, seed=6)
    with torch.no_grad():
        realized.merge()
        folded = _hidden(realized.model)
        # re-arm every folded module: a hook still registered would now apply its update a second time
        for m in realized.model.modules():
            if isinstance(m, Lora) and m.merged:
                m.merged = False
            for v in getattr(m, "petl_ia3", ()):
                if v.merged:
                    v.merged = False
        assert torch.equal(_hidden(realized.model), folded)  # the attention LoRA's and k / v vectors' hooks are gone
        # the learned-scale FFN LoRA and the W_2 vector beside it still act through their hooks
        for m in realized.model.modules():
            for v in getattr(m, "petl_ia3", ()):
                if v.on_input:
                    v.petl_l.mul_(2.0)
        assert (_hidden(realized.model) - folded).abs().max() > 1e-3
