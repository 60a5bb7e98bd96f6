"""Kind `heads`: l learned key / value slots per attention head (He et al. 2022, §3.1, Eq. 7).

`function` softmax + `composition` gated is prefix tuning (Li & Liang 2021): the slots are
concatenated before the layer's keys and values, which equals the gated head-wise adapter of
DESIGN.md §1. relu / gelu / identity is the multi-head parallel adapter (MH PA, He et al.
§4.1): Δhead = s·f(q P_kᵀ / √d_head) P_v, with P_v = 0 at init. A prefix is never a no-op at
init (λ(x) > 0); MH PA always is. `reparam` trains the prefixes through P = MLP(E) (Li & Liang).

Counts per attention sublayer instance: paper 2·l·kv_dim (P_k, P_v; DESIGN.md §2: 2·l·d);
trainable adds a learned scale 1; with `reparam` the trainable count is E (l·d) plus the MLP
d·h + h + h·(2·kv_dim·n_layers) + 2·kv_dim·n_layers per (stack, attention kind), instead of
the slots. PEFT export: `PrefixTuningConfig` (plain prefix tuning on decoder-only models).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from unipetl.spaces.kinds import ATTN_SITES, ModuleKind, SearchMethod, comp_word, register_kind
from unipetl.spaces.registry import UnipetlError

if TYPE_CHECKING:  # pragma: no cover
    from unipetl.spaces.accounting import SiteInstance
    from unipetl.spaces.shapes import ModelShape, StackShape
    from unipetl.spaces.variant import Module


class HeadsKind(ModuleKind):
    name = "heads"
    summary = "head-wise slots: prefix tuning (softmax, gated) or multi-head parallel adapter"
    size_letter = "l"
    owns_gate = False  # a prefix's gate λ(x) is the softmax's own mass, no parameters

    def validate(self, m: Module) -> None:
        if m.site not in ATTN_SITES:
            raise UnipetlError(f"`kind` 'heads' (prefix / MH PA) modifies attention heads; `site` must be one of {list(ATTN_SITES)}, got {m.site!r}.")
        if m.insertion != "parallel":
            raise UnipetlError(f"`insertion` of a head-wise module is always 'parallel', got {m.insertion!r}.")
        if (m.function == "softmax") != (m.composition == "gated"):
            raise UnipetlError(
                "head-wise modules: `function` 'softmax' goes with `composition` 'gated' (prefix tuning) and only with it; "
                f"got function={m.function!r}, composition={m.composition!r}."
            )
        if m.targets:
            raise UnipetlError(f"`targets` is for LoRA modules only, got {list(m.targets)} on kind 'heads'.")
        if m.reparam and m.function != "softmax":  # an MH PA starts as a no-op through P_v = 0; an MLP would give it random values
            raise UnipetlError(f"`reparam` (the prefix MLP of Li & Liang 2021) is for prefix tuning (function 'softmax'), got function {m.function!r}.")

    def claims_noop(self, m: Module) -> bool:
        return m.function != "softmax"

    def describe(self, m: Module) -> str:
        if m.function == "softmax":
            return f"prefix l={m.size}"
        scale = f" s={m.scale:g}" if m.composition == "scaled" else ""
        return f"{comp_word(m)}MH PA ({m.function}) l={m.size}{scale}"

    def representation(self, m: Module) -> str:
        return "attention heads"

    def instance_counts(self, m: Module, st: StackShape, d: int) -> tuple[int, int]:
        return 2 * m.size * st.kv_dim, 0

    def trainable_count(self, m: Module, shape: ModelShape, insts: list[SiteInstance], paper: int, extra: int) -> int:
        if not m.reparam:
            return paper + extra
        stacks = {s.name: s for s in shape.stacks}
        groups: dict[tuple[str, str], int] = {}
        for inst in insts:
            groups[(inst.stack, inst.sublayer)] = groups.get((inst.stack, inst.sublayer), 0) + 1
        d, h, total = shape.d_model, m.reparam_hidden, extra
        for (stack, _), n_layers in groups.items():
            out = 2 * stacks[stack].kv_dim * n_layers
            total += m.size * d + d * h + h + h * out + out  # E, Linear(d,h), Linear(h,out)
        return total

    def examples(self) -> tuple[Module, ...]:
        from unipetl.spaces.variant import Module

        return (Module(site="attn", kind="heads", size=3, function="softmax", composition="gated"),
                Module(site="attn", kind="heads", size=3, function="relu", composition="learned_scale"))

    def search_methods(self) -> tuple[SearchMethod, ...]:
        return (
            SearchMethod("prefix", self.name, ("attn",), compositions=(), fixed=(("function", "softmax"), ("composition", "gated"))),
            SearchMethod("mh_pa", self.name, ("attn",), samples_function=True, excluded=("gated",)),
        )

    def insert(self, ctx: Any, m: Module, index: int, insts: list[SiteInstance]) -> None:
        from torch import nn

        from unipetl.spaces.layers import HeadSlots, PrefixMLP

        mlps: dict[tuple[str, str], PrefixMLP] = {}
        if m.reparam:
            if not hasattr(ctx.base, "petl_reparam"):
                ctx.base.petl_reparam = nn.ModuleDict()
            for key in sorted({(i.stack, i.sublayer) for i in insts}):
                n_layers = sum(1 for i in insts if (i.stack, i.sublayer) == key)
                st = ctx.stacks[key[0]]
                mlp = PrefixMLP(m.size, ctx.d, m.reparam_hidden, n_layers, st.n_kv_heads, st.head_dim)
                ctx.base.petl_reparam[f"m{index}_{key[0]}_{key[1]}"] = mlp
                mlps[key] = mlp
        group_pos: dict[tuple[str, str], int] = {}
        for inst in insts:
            refs = ctx.refs(inst)
            st = ctx.stacks[inst.stack]
            key = (inst.stack, inst.sublayer)
            pos = group_pos.get(key, 0)
            group_pos[key] = pos + 1
            slots = HeadSlots(m, st.n_kv_heads, st.head_dim, mlp=mlps.get(key), mlp_index=pos)
            if not hasattr(refs.attn, "petl_heads"):
                refs.attn.petl_heads = nn.ModuleList()
            refs.attn.petl_heads.append(slots)
            ctx.uses_slots = True

    def materialize(self, m: Module, model: Any, tensors: dict[str, Any]) -> Module:
        """Swap each prefix MLP for the prefixes it produces; the spec becomes reparam=False."""
        if not m.reparam:
            return m
        import torch

        from unipetl.spaces.layers import HeadSlots

        for n in [n for n in tensors if ".petl_reparam." in f".{n}"]:
            del tensors[n]
        with torch.no_grad():
            for name, mod in model.named_modules():
                if isinstance(mod, HeadSlots) and mod._mlp[0] is not None:
                    pk, pv = mod.kv()
                    tensors[f"{name}.petl_k"] = pk.detach().to("cpu").contiguous().clone()
                    tensors[f"{name}.petl_v"] = pv.detach().to("cpu").contiguous().clone()
        return dataclasses.replace(m, reparam=False)

    # --- PEFT --------------------------------------------------------------------------------
    def peft_method(self, m: Module) -> str | None:
        return "prefix" if m.function == "softmax" else None

    def check_peft(self, mods: tuple[Module, ...], realized: Any) -> bool:
        if len(mods) != 1:
            return False
        m = mods[0]
        if realized.shape.is_encoder_decoder or realized.shape.stacks[0].name != "decoder":
            raise UnipetlError(f"export --format peft: prefix tuning exports only for decoder-only models; on {realized.shape.model_type!r} PEFT passes "
                               "prefixes as a KV cache that does not reach the same attention sublayers as ours (encoder / cross attention).")
        if m.layers is not None:
            raise UnipetlError(f"export --format peft: PEFT puts a prefix in every layer, this one is only in layers {list(m.layers)}.")
        return True

    def export_peft(self, realized: Any, config: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """Fill PrefixTuningConfig fields; the prefixes as PEFT's `prompt_embeddings`
        (l, layers·2·kv_heads·head_dim), and the head key prefix `base_model.`."""
        import torch

        from unipetl.spaces.layers import HeadSlots

        st = realized.shape.stacks[-1]
        slots = [mod for mod in realized.model.modules() if isinstance(mod, HeadSlots)]  # layer order = module order
        with torch.no_grad():
            kv = torch.stack([torch.stack(s.kv()) for s in slots])  # (layers, 2, kv_heads, l, hd)
        layers, _, heads, l, hd = kv.shape
        emb = kv.permute(3, 0, 1, 2, 4).reshape(l, layers * 2 * heads * hd)
        config.update(peft_type="PREFIX_TUNING", num_virtual_tokens=emb.shape[0], token_dim=st.kv_dim, encoder_hidden_size=st.kv_dim,
                      num_transformer_submodules=1, num_attention_heads=st.n_kv_heads, num_layers=st.n_layers, prefix_projection=False)
        return {"prompt_embeddings": emb}, "base_model."


register_kind(HeadsKind())
