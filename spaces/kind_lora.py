"""Kind `lora`: a low-rank update of weight matrices, W x + s·B A x (Hu et al. 2021; He et al. 2022, Eq. 5).

Functional form identity, parallel insertion, modified representation: the targeted projections
(`q k v o` at attention, `w1 w2` at the FFN; a gated FFN has two W_1). Composition: scaled add
with s = α / r (`scaled`), add, a learned scale, or a sigmoid gate (UniPELT). B = 0 at init:
always a no-op.

Counts per sublayer instance: paper Σ_targets r·(d_in + d_out) (A r×d_in, B d_out×r;
DESIGN.md §2: 4·r·d for (W_q, W_v)); trainable adds a gate d + 1, a learned scale 1.
PEFT export: `LoraConfig` with lora_alpha = s·r (PEFT scales by lora_alpha / r).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from unipetl.spaces.kinds import ATTN_SITES, ModuleKind, SearchMethod, comp_word, register_kind, scale_suffix
from unipetl.spaces.registry import UnipetlError

if TYPE_CHECKING:  # pragma: no cover
    from unipetl.spaces.accounting import SiteInstance
    from unipetl.spaces.shapes import StackShape
    from unipetl.spaces.variant import Module

ATTN_TARGETS = ("q", "k", "v", "o")
FFN_TARGETS = ("w1", "w2")


def lora_dims(target: str, st: StackShape, d: int) -> list[tuple[int, int]]:
    """(in, out) of every weight matrix a LoRA target adapts (gated FFNs have two W_1)."""
    return {
        "q": [(d, st.q_dim)],
        "k": [(d, st.kv_dim)],
        "v": [(d, st.kv_dim)],
        "o": [(st.q_dim, d)],
        "w1": [(d, st.ffn_dim)] * (2 if st.ffn_gated else 1),
        "w2": [(st.ffn_dim, d)],
    }[target]


class LoraKind(ModuleKind):
    name = "lora"
    summary = "low-rank update s·BA of attention / FFN weight matrices"
    peft_rslora: ClassVar[bool] = False  # PEFT's `use_rslora` (scaling lora_alpha / √r)

    def validate(self, m: Module) -> None:
        if m.reparam:
            raise UnipetlError(f"`reparam` (prefix MLP) is for kind 'heads' only, got kind {m.kind!r}.")
        if m.function == "softmax":
            raise UnipetlError(f"`function` 'softmax' is the prefix form; use kind 'heads', got kind {m.kind!r}.")
        if m.function != "identity":
            raise UnipetlError(f"`function` of LoRA is 'identity', got {m.function!r}.")
        if m.insertion != "parallel":
            raise UnipetlError(f"`insertion` of LoRA is 'parallel', got {m.insertion!r}.")
        self.check_targets(m)

    def check_targets(self, m: Module) -> None:
        """Default the targets ((q, v) at attention, (w1, w2) at the FFN) and check they belong to the site."""
        attn = m.site in ATTN_SITES
        allowed = ATTN_TARGETS if attn else FFN_TARGETS
        if not m.targets:
            object.__setattr__(m, "targets", ("q", "v") if attn else ("w1", "w2"))
        for t in m.targets:
            if t not in allowed:
                raise UnipetlError(f"`targets` at site {m.site!r} must be among {list(allowed)}, got {t!r}.")

    def lora_scale(self, m: Module) -> float:
        """The fixed s of s·BA: the spec's `scale` for scaled (and learned-scale: its initial
        value) composition, 1 otherwise. Hu et al. 2021, §4.1: s = α / r."""
        return m.scale if m.composition in ("scaled", "learned_scale") else 1.0

    def peft_alpha(self, r: int, s: float) -> float:
        """PEFT's lora_alpha giving scale s at rank r (PEFT: scaling = lora_alpha / r)."""
        return s * r

    def describe(self, m: Module) -> str:
        comp = comp_word(m) if m.composition != "scaled" else ""
        return f"{comp}LoRA r={m.size} [{','.join(m.targets)}]{scale_suffix(m)}"

    def instance_counts(self, m: Module, st: StackShape, d: int) -> tuple[int, int]:
        return sum(m.size * (din + dout) for t in m.targets for din, dout in lora_dims(t, st, d)), 0

    def examples(self) -> tuple[Module, ...]:
        from unipetl.spaces.variant import Module

        return (Module(site="attn", kind="lora", size=3, function="identity", composition="scaled", scale=0.5, targets=("q", "k", "v", "o"), init="lora"),
                Module(site="ffn", kind="lora", size=2, function="identity", composition="gated", init="lora"))

    def search_methods(self) -> tuple[SearchMethod, ...]:
        return (SearchMethod("lora", self.name, ("attn", "ffn"), fixed=(("function", "identity"), ("init", "lora"))),)

    def build(self, m: Module, d: int, dims: dict[str, list[tuple[int, int]]], targets: dict[str, tuple[Any, slice | None]]) -> Any:
        """The nn.Module of one sublayer's targets (`layers.Lora`; LoRA variants return a subclass).
        `dims`: target → [(d_in, d_out)]; `targets`: factor key → (projection, column slice)."""
        from unipetl.spaces.layers import Lora

        lora = Lora(m, d, dims)
        lora.targets = targets
        return lora

    def insert(self, ctx: Any, m: Module, index: int, insts: list[SiteInstance]) -> None:
        from unipetl.spaces import families
        from unipetl.spaces.realize import projection_dims

        for inst in insts:
            refs = ctx.refs(inst)
            hub = ctx.hub(refs)
            dims: dict[str, list[tuple[int, int]]] = {}
            targets: dict[str, tuple[Any, slice | None]] = {}
            gate_hub: dict[str, Any] = {}
            for t in m.targets:
                for j, (mod, slc) in enumerate(refs.proj[t]):
                    dims.setdefault(t, []).append(projection_dims(mod, slc))
                    targets[f"{t}_{j}"] = (mod, slc)
                    gate_hub[f"{t}_{j}"] = hub if t in families.INNER_TARGETS else None
            lora = self.build(m, ctx.d, dims, targets)
            hub.loras.append(lora)
            for key, (mod, slc) in targets.items():
                ctx.hook_projection(mod, (lora, key, slc, gate_hub[key]))

    # --- PEFT --------------------------------------------------------------------------------
    def peft_method(self, m: Module) -> str | None:
        return "lora"

    def check_peft(self, mods: tuple[Module, ...], realized: Any) -> bool:
        bad = [m for m in mods if m.composition not in ("add", "scaled")]
        if bad:
            raise UnipetlError(f"export --format peft: LoRA composition {bad[0].composition!r} has no PEFT equivalent (PEFT scales by a fixed lora_alpha / r).")
        return True

    def export_peft(self, realized: Any, config: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """Fill PEFT's LoraConfig fields into `config`; return the tensors by PEFT key and the
        key prefix of `modules_to_save` tensors (`base_model.model.`, PEFT's LoRA convention)."""
        import re
        from collections import Counter

        tensors, scales, conv = self.peft_tensors(realized.model)
        ranks = {p: (r, self.peft_alpha(r, s)) for p, (r, s) in scales.items()}
        (r, alpha), _ = Counter(ranks.values()).most_common(1)[0]
        config.update(peft_type="LORA", r=r, lora_alpha=alpha, target_modules=sorted(ranks), lora_dropout=max(m.dropout for m in realized.variant.modules),
                      bias="none", fan_in_fan_out=conv, use_rslora=self.peft_rslora, init_lora_weights=True,
                      rank_pattern={re.escape(p): ra for p, (ra, al) in ranks.items() if ra != r},
                      alpha_pattern={re.escape(p): al for p, (ra, al) in ranks.items() if al != alpha})
        return {f"base_model.model.{k}": v for k, v in tensors.items()}, "base_model.model."

    def peft_tensors(self, model: Any) -> tuple[dict[str, Any], dict[str, tuple[int, float]], bool]:
        """PEFT `lora_A` / `lora_B` tensors by module path, (rank, scale s) per path, and
        whether the targets are Conv1D (`fan_in_fan_out`). Variants that export as a plain
        LoRA of another form (PiSSA, OLoRA: rank 2r) override this."""
        return _lora_tensors(model)


def _lora_tensors(model: Any) -> tuple[dict[str, Any], dict[str, tuple[int, float]], bool]:
    """PEFT LoRA tensors by module path, and (rank, scale s) per path."""
    import torch
    from transformers.pytorch_utils import Conv1D

    from unipetl.spaces.layers import Lora

    paths = {id(m): n for n, m in model.named_modules()}
    per_module: dict[str, list[tuple[torch.Tensor, torch.Tensor, slice | None, float, Any]]] = {}
    for lora in (m for m in model.modules() if isinstance(m, Lora)):
        for key, (mod, slc) in lora.targets.items():
            f = lora.factors[key]
            per_module.setdefault(paths[id(mod)], []).append((f.lora_A.weight.detach(), f.lora_B.weight.detach(), slc, lora.s, mod))
    tensors: dict[str, torch.Tensor] = {}
    ranks: dict[str, tuple[int, float]] = {}  # path -> (rank, s)
    conv = False
    for path, parts in per_module.items():
        mod = parts[0][4]
        conv |= isinstance(mod, Conv1D)
        d_out = mod.weight.shape[1] if isinstance(mod, Conv1D) else mod.weight.shape[0]
        if len(parts) == 1 and parts[0][2] is None:
            a, b, _, s, _ = parts[0]
            tensors[f"{path}.lora_A.weight"], tensors[f"{path}.lora_B.weight"] = a, b
            ranks[path] = (a.shape[0], s)
            continue
        rank = sum(a.shape[0] for a, *_ in parts)
        big_b = torch.zeros(d_out, rank, dtype=parts[0][1].dtype)
        off = 0
        for a, b, slc, s, _ in parts:
            rows = slc if slc is not None else slice(0, d_out)
            big_b[rows, off : off + a.shape[0]] = b * s  # scale folded in: s = 1 below
            off += a.shape[0]
        tensors[f"{path}.lora_A.weight"] = torch.cat([a for a, *_ in parts], dim=0)
        tensors[f"{path}.lora_B.weight"] = big_b
        ranks[path] = (rank, 1.0)
    return tensors, ranks, conv


register_kind(LoraKind())
