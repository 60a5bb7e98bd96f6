"""Kind `vera`: vector-based random matrix adaptation (Kopiczko et al., ICLR 2024, arXiv 2310.11454, §3, Eq. 1).

Δh = Λ_b B Λ_d A x on each targeted projection: A (r × d_in) and B (d_out × r) are *frozen*
random matrices, one pair shared by every layer and target, and only the diagonal scales
λ_d ∈ R^r and λ_b ∈ R^{d_out} train. λ_b = 0 at init (an exact no-op), λ_d = d_initial. In the
four dimensions (DESIGN.md §8): identity (a low-rank update), parallel, weight matrices (LoRA's
targets), and a learned-vector composition. Mergeable like LoRA: W ← W + Λ_b B Λ_d A.

Spec: LoRA's fields — `size` is r, `targets` among q k v o / w1 w2 (defaults (q, v) and (w1, w2)),
`function` identity, `insertion` parallel, `composition` add; `scale` holds d_initial (λ_d's
initial value; the preset uses PEFT's 0.1), `dropout` acts on the projection's input; `init` is
not read (A and B are always PEFT's kaiming-uniform).

The shared pair, as in PEFT (`tuners/vera/model.py`): A (r, max d_in) and B (max d_out, r) over
all targets, drawn kaiming-uniform (bound √(6 / fan_in)), A then B, from a CPU `torch.Generator`
seeded with `SEED` (PEFT's default `projection_prng_key`); a target uses A[:, :d_in] and
B[:d_out, :]. One pair per rank: every vera module of a variant with rank r shares it (sized over
all their targets), so q, v at attention and w1, w2 at the FFN at one rank are exactly one PEFT
adapter. The pair lives in non-persistent buffers on the backbone (`petl_vera`): never a
parameter, never trained or saved; it is regenerated from the seed whenever the variant is
realized (save → load, a meta-device dry run).

Counts per sublayer instance: the projections are regenerated from a seed and not stored per
task, so paper = trainable = Σ_targets (r + d_out) (the paper's Table 1 convention; a gated FFN
has two W_1). RoBERTa-base `vera:r=256` (q, v): 12·2·(256 + 768) = 24,576; BART-large:
36·2·(256 + 1024) = 92,160. PEFT's printed trainable count (`get_nb_trainable_parameters`) is the
same number (the task head aside): vera_A / vera_B are buffers there too and not counted.

GPT-2: as for LoRA, q, k, v are column slices of the fused c_attn, each a target with its own
λ_b (d) and λ_d and B[:d]; PEFT adapts c_attn whole (one λ_b of 3·d), so VeRA on GPT-2's q / k / v
has no PEFT export (o = c_proj and the FFN's c_fc / c_proj do). PEFT export: `VeraConfig` with
`save_projection=True` (the pair goes in the file as `base_model.vera_A` / `vera_B`).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from unipetl.spaces.kind_lora import LoraKind, lora_dims
from unipetl.spaces.kinds import ATTN_SITES, KindPreset, SearchMethod, register_kind
from unipetl.spaces.registry import UnipetlError

if TYPE_CHECKING:  # pragma: no cover
    from unipetl.spaces.accounting import SiteInstance
    from unipetl.spaces.shapes import StackShape
    from unipetl.spaces.variant import Module, Variant

SEED = 0  # PEFT's default projection_prng_key: the frozen pair is a function of (seed, r, max d_in, max d_out)
D_INITIAL = 0.1  # PEFT's default d_initial (the paper, Table 6c: small values work best)


class VeraKind(LoraKind):
    name = "vera"
    summary = "VeRA: frozen random low-rank pair B, A shared by all layers; trains vectors λ_b, λ_d (Λ_b B Λ_d A)"

    def validate(self, m: Module) -> None:
        for fld, want in (("function", "identity"), ("insertion", "parallel"), ("composition", "add")):
            if getattr(m, fld) != want:
                raise UnipetlError(f"`{fld}` of VeRA is {want!r} (its learned vectors λ_b, λ_d are the scales), got {getattr(m, fld)!r}.")
        if m.reparam:
            raise UnipetlError(f"`reparam` (prefix MLP) is for kind 'heads' only, got kind {m.kind!r}.")
        self.check_targets(m)

    def scale_applies(self, m: Module) -> bool:
        return True  # `scale` is d0, the initial value of λ_d

    def describe(self, m: Module) -> str:
        return f"VeRA r={m.size} [{','.join(m.targets)}] d0={m.scale:g}"

    def signature(self, m: Module) -> tuple[str, ...]:
        return ("attn" if m.site in ATTN_SITES else "ffn", m.kind, m.function, m.insertion, "vector")

    def instance_counts(self, m: Module, st: StackShape, d: int) -> tuple[int, int]:
        return sum(m.size + dout for t in m.targets for _, dout in lora_dims(t, st, d)), 0

    def examples(self) -> tuple[Module, ...]:
        from unipetl.spaces.variant import Module

        return (
            Module(site="attn", kind="vera", size=3, function="identity", scale=0.5, targets=("q", "k", "v", "o")),
            Module(site="ffn", kind="vera", size=2, function="identity", scale=0.1, dropout=0.1),
        )

    def search_methods(self) -> tuple[SearchMethod, ...]:
        fixed = (("function", "identity"), ("scale", D_INITIAL))
        return (SearchMethod("vera", self.name, ("attn", "ffn"), compositions=(), fixed=fixed, default=False),)

    def presets(self) -> tuple[KindPreset, ...]:
        return (
            KindPreset(
                "vera",
                "VeRA on W_q, W_v: frozen shared random B, A; trains the vectors λ_b, λ_d (Kopiczko et al. 2024)",
                "r",
                _vera,
                display="VeRA",
            ),
        )

    def insert(self, ctx: Any, m: Module, index: int, insts: list[SiteInstance]) -> None:
        from unipetl.spaces.realize import projection_dims

        vera_cls, _ = _torch_classes()
        per_inst = []
        d_in_max = d_out_max = 0
        for inst in insts:
            refs = ctx.refs(inst)
            dims: dict[str, tuple[int, int]] = {}
            targets: dict[str, tuple[Any, slice | None]] = {}
            for t in m.targets:
                for j, (mod, slc) in enumerate(refs.proj[t]):
                    dims[f"{t}_{j}"] = projection_dims(mod, slc)
                    targets[f"{t}_{j}"] = (mod, slc)
            d_in_max = max([d_in_max, *(a for a, _ in dims.values())])
            d_out_max = max([d_out_max, *(b for _, b in dims.values())])
            per_inst.append((ctx.hub(refs), dims, targets))
        pair = _shared_pair(ctx, m.size, d_in_max, d_out_max)
        for hub, dims, targets in per_inst:
            vera = vera_cls(m, dims, pair)
            vera.targets = targets
            hub.loras.append(vera)
            for key, (mod, slc) in targets.items():
                ctx.hook_projection(mod, (vera, key, slc, None))

    # --- PEFT --------------------------------------------------------------------------------
    def peft_method(self, m: Module) -> str | None:
        return "vera"

    def check_peft(self, mods: tuple[Module, ...], realized: Any) -> bool:
        ranks = sorted({m.size for m in mods})
        if len(ranks) > 1:
            raise UnipetlError(f"export --format peft: VeRA modules of ranks {ranks}; a PEFT VeRA adapter has one r (one shared pair).")
        vera_cls, _ = _torch_classes()
        seen: set[int] = set()
        for vera in (m for m in realized.model.modules() if isinstance(m, vera_cls)):
            for mod, slc in vera.targets.values():
                if slc is not None or id(mod) in seen:
                    raise UnipetlError(
                        "export --format peft: VeRA on a slice of a fused projection (GPT-2's c_attn), or twice on one projection, "
                        "has no PEFT equivalent (PEFT adapts the whole module once)."
                    )
                seen.add(id(mod))
        return True

    def export_peft(self, realized: Any, config: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """VeraConfig fields; tensors `base_model.model.<path>.vera_lambda_b` / `vera_lambda_d` per
        target and the shared pair `base_model.vera_A` / `vera_B` (save_projection)."""
        from transformers.pytorch_utils import Conv1D

        vera_cls, _ = _torch_classes()
        model = realized.model
        paths = {id(m): n for n, m in model.named_modules()}
        tensors: dict[str, Any] = {}
        conv = False
        veras = [m for m in model.modules() if isinstance(m, vera_cls)]
        for vera in veras:
            for key, (mod, _) in vera.targets.items():
                conv |= isinstance(mod, Conv1D)
                tensors[f"base_model.model.{paths[id(mod)]}.vera_lambda_b"] = vera.lambda_b[key].detach()
                tensors[f"base_model.model.{paths[id(mod)]}.vera_lambda_d"] = vera.lambda_d[key].detach()
        pair = veras[0].pair
        tensors["base_model.vera_A"], tensors["base_model.vera_B"] = pair.A.detach(), pair.B.detach()
        mods = realized.variant.modules
        config.update(
            peft_type="VERA",
            r=mods[0].size,
            target_modules=sorted({k.removeprefix("base_model.model.").rsplit(".", 1)[0] for k in tensors if ".vera_lambda_" in k}),
            projection_prng_key=SEED,
            save_projection=True,
            vera_dropout=max(m.dropout for m in mods),
            d_initial=mods[0].scale,
            fan_in_fan_out=conv,
            bias="none",
            init_weights=True,
        )
        return tensors, "base_model.model."


def _shared_pair(ctx: Any, r: int, d_in: int, d_out: int) -> Any:
    """The rank-r pair on the backbone (`petl_vera["r<r>"]`), grown to cover (d_in, d_out): a later
    vera module of the same rank with wider targets regenerates it at the larger size before any
    forward pass, so the pair only depends on the variant."""
    from torch import nn

    _, pair_cls = _torch_classes()
    if not hasattr(ctx.base, "petl_vera"):
        ctx.base.petl_vera = nn.ModuleDict()
    key = f"r{r}"
    ref = next(ctx.model.parameters())
    if key not in ctx.base.petl_vera:
        ctx.base.petl_vera[key] = pair_cls(r, d_in, d_out, ref.device, ref.dtype)
    else:
        ctx.base.petl_vera[key].grow(d_in, d_out)
    return ctx.base.petl_vera[key]


@functools.cache
def _torch_classes() -> tuple[Any, Any]:
    """(Vera, VeraPair) nn.Modules, defined on first use: this file is read without torch (specs,
    counts, reports) and imports it only when a model is built."""
    import math

    import torch
    from torch import nn
    from torch.nn import functional as F

    from unipetl.spaces.layers import Lora

    def kaiming(rows: int, cols: int, gen: torch.Generator) -> torch.Tensor:
        """kaiming-uniform with gain √2 over fan_in = cols, drawn from `gen` (PEFT's `_kaiming_init`)."""
        bound = math.sqrt(3.0) * math.sqrt(2.0) / math.sqrt(cols)
        return torch.empty(rows, cols, device="cpu").uniform_(-bound, bound, generator=gen)

    class VeraPair(nn.Module):
        """The frozen A (r, d_in) and B (d_out, r) of one rank, as non-persistent buffers: they
        follow the model's `.to()` and `deepcopy` but are no parameters and no state-dict entry."""

        def __init__(self, r: int, d_in: int, d_out: int, device: torch.device, dtype: torch.dtype) -> None:
            super().__init__()
            self.r = r
            self._make(d_in, d_out, device, dtype)

        def _make(self, d_in: int, d_out: int, device: torch.device, dtype: torch.dtype) -> None:
            if device.type == "meta":  # a dry run (io's tensor check): shapes only
                a, b = torch.empty(self.r, d_in, device="meta"), torch.empty(d_out, self.r, device="meta")
            else:
                gen = torch.Generator(device="cpu").manual_seed(SEED)
                a = kaiming(self.r, d_in, gen)
                b = kaiming(d_out, self.r, gen)
            self.register_buffer("A", a.to(device=device, dtype=dtype), persistent=False)
            self.register_buffer("B", b.to(device=device, dtype=dtype), persistent=False)

        def grow(self, d_in: int, d_out: int) -> None:
            if d_in > self.A.shape[1] or d_out > self.B.shape[0]:
                self._make(max(d_in, self.A.shape[1]), max(d_out, self.B.shape[0]), self.A.device, self.A.dtype)

    class Vera(Lora):
        """λ_b (d_out) and λ_d (r) per target of one sublayer over the shared `pair`. A `layers.Lora`
        to the projection hooks and `Realized.merge_lora` (targets, merged, apply,
        delta_weight_for); it holds no LoRA factors, so Lora's own __init__ is not run."""

        lr_kind = "vera"  # its own central rate, 3e-2 (spaces/lr.py): at LoRA's 2e-3 it stays at chance

        def __init__(self, spec: Any, dims: dict[str, tuple[int, int]], pair: VeraPair) -> None:
            nn.Module.__init__(self)
            self.spec, self.merged = spec, False
            self.drop = nn.Dropout(spec.dropout)
            self.lambda_b = nn.ParameterDict({k: nn.Parameter(torch.zeros(dout)) for k, (_, dout) in dims.items()})
            self.lambda_d = nn.ParameterDict({k: nn.Parameter(torch.full((spec.size,), float(spec.scale))) for k in dims})
            self.dims = dims
            self._pair = [pair]  # a list: the pair is registered once, on the backbone, not under every module

        @property
        def pair(self) -> VeraPair:
            return self._pair[0]

        def paper_params(self) -> int:
            return sum(p.numel() for p in self.lambda_b.values()) + sum(p.numel() for p in self.lambda_d.values())

        def _ab(self, key: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
            d_in, d_out = self.dims[key]
            return self.pair.A[:, :d_in].to(dtype), self.pair.B[:d_out, :].to(dtype)

        def apply(self, key: str, inp: torch.Tensor, x: torch.Tensor | None, output: torch.Tensor, slc: slice | None) -> torch.Tensor:
            a, b = self._ab(key, inp.dtype)
            lam_d, lam_b = self.lambda_d[key].to(inp.dtype), self.lambda_b[key].to(inp.dtype)
            d = (lam_b * F.linear(lam_d * F.linear(self.drop(inp), a), b)).to(output.dtype)
            if slc is None:
                return output + d
            return torch.cat([output[..., : slc.start], output[..., slc] + d, output[..., slc.stop :]], dim=-1)

        def delta_weight_for(self, key: str) -> torch.Tensor:
            """Λ_b B Λ_d A of one target, (out, in), for `merge_lora`."""
            lam_b, lam_d = self.lambda_b[key], self.lambda_d[key]
            a, b = self._ab(key, lam_b.dtype)
            return (lam_b[:, None] * b) @ (lam_d[:, None] * a)

    return Vera, VeraPair


def _vera(r: int = 256) -> Variant:
    from unipetl.spaces.variant import Module, Variant

    return Variant(modules=(Module(site="attn", kind="vera", size=r, function="identity", scale=D_INITIAL, targets=("q", "v")),))


register_kind(VeraKind())
