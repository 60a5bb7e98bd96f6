"""Learning rate as part of the design: one central rate per kind of trained parameter.

Methods differ by an order of magnitude in the step size they need: on SST-2 /
MiniLM (4,000 sentences, 1 epoch, batch 32), LoRA r=8 stays at chance at 1e-4 and reaches 80 %
at 2e-3; prefix slots need ~2e-2; full fine-tuning ~1e-4. A comparison of designs at one rate
is a comparison of rates, so every trained parameter belongs to a *kind*, every kind has its
own central rate, and a variant that mixes kinds (MAM, UniPELT) trains each kind at its own
rate (one AdamW parameter group per kind).

The search varies the rates by one shared log-scale multiplier `lr_scale` (the space's
`lr_scale` range, default [1/4, 4]): kind k trains at `LR_CENTRAL[k] · lr_scale`, so each kind's
searched range is its central rate × [1/4, 4] — two octaves each way, which covers the
best rates measured for every method below. Named methods enqueued first use `lr_scale = 1`.

Where the central rates come from (all measured on this project's 2-core machines, MiniLM,
SST-2, 4,000 training sentences, 1 epoch, full dev set; benchmarks/RESULTS.md §2 and the
one-seed probe runs made for it on 2026-11-30, before `reproduce_sst2.py` chose rates itself):

| kind | central | measured |
|---|---|---|
| lora | 2e-3 | LoRA r=8: 51.4 % at 1e-4, 80.0 % at 2e-3; r=12: 81.1 ± 0.8 (3 seeds) |
| adapter | 2e-3 | PA / SA / scaled PA at attention or FFN: 78–80 % at 2e-3 |
| mh_pa | 5e-3 | MH PA l=24: 75.5 ± 1.2 at 5e-3 |
| prefix | 2e-2 | prefix l=24: 75.4 ± 1.2 at 2e-2 (chance at 2e-3) |
| prompt | 3e-2 | prompt tuning l=20: 53.8 ± 1.3 at 3e-2 (soft tokens want the largest steps) |
| bitfit | 5e-3 | BitFit: 67.2 ± 14.2 at 5e-3 |
| full | 1e-4 | full fine-tuning 81.8 ± 1.8 at 1e-4 (the paper's GLUE rate) |
| probe | 2e-2 | linear probe (task head alone): 63.6 ± 1.1 at 2e-2 |
| ia3 | 3e-2 | (IA)³ (k, v, FFN), one seed, head at the same rate: 52.1 % at 2e-3, 78.0 % at 1e-2, 81.1 % at 3e-2, 79.7 % at 1e-1 (probe of 2026-12-01) |
| vera | 3e-2 | VeRA r=256 (q, v), one seed, head at the same rate: 51.3 % at 2e-3, 72.7 % at 1e-2, 80.0 % at 3e-2 and at 1e-1 (probe of 2026-12-01) |

The task head trains with the variant's *principal* kind (the kind holding most of the
variant's trainable parameters), so LoRA's head moves at LoRA's rate and full fine-tuning's at
1e-4; a linear probe (head only) uses `probe`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from unipetl.spaces.kinds import active_extras
from unipetl.spaces.registry import UnipetlError
from unipetl.spaces.variant import Variant

if TYPE_CHECKING:  # the rate table is read without torch (search spaces, `unipetl ls lr`)
    from torch import nn

LrKind = Literal["lora", "adapter", "mh_pa", "prefix", "prompt", "bitfit", "full", "probe", "ia3", "vera"]

# central learning rate of each kind (AdamW, linear decay after 6 % warmup); see the table above
LR_CENTRAL: dict[str, float] = {
    "lora": 2e-3,
    "adapter": 2e-3,
    "mh_pa": 5e-3,
    "prefix": 2e-2,
    "prompt": 3e-2,
    "bitfit": 5e-3,
    "full": 1e-4,
    "probe": 2e-2,
    "ia3": 3e-2,  # (IA)³'s scale vectors: at chance at the adapters' 2e-3 (table above)
    "vera": 3e-2,  # VeRA's scale vectors: at chance at LoRA's 2e-3 (table above)
}
# the shared multiplier's default search range (log-uniform)
LR_SCALE_RANGE: tuple[float, float] = (0.25, 4.0)


def kind_range(kind: str, scale_range: tuple[float, float] = LR_SCALE_RANGE) -> tuple[float, float]:
    """The (low, high) learning rate a search can give `kind`: its central rate × the multiplier range."""
    c = LR_CENTRAL[kind]
    return c * scale_range[0], c * scale_range[1]


def module_kind(module: nn.Module) -> str | None:
    """The lr kind of an inserted module (None for anything else)."""
    from unipetl.spaces.layers import Adapter, HeadSlots, Lora, PrefixMLP, SoftPrompt

    declared = getattr(module, "lr_kind", None)  # a kind file's module names its rate itself
    if isinstance(declared, str):
        return declared
    if isinstance(module, Lora):
        return "lora"
    if isinstance(module, Adapter):
        return "adapter"
    if isinstance(module, HeadSlots):
        return "prefix" if module.prefix else "mh_pa"
    if isinstance(module, PrefixMLP):
        return "prefix"  # refined by `parameter_kinds` from the slots that use it (MH PA may too)
    if isinstance(module, SoftPrompt):
        return "prompt"
    return None


def parameter_kinds(model: nn.Module, variant: Variant) -> dict[str, str]:
    """Trainable parameter name → its lr kind, or "head" for the task head.

    Inserted modules are classified by their class (`module_kind`); other trainable parameters
    outside the backbone are the task head; inside it they are BitFit's biases or, under full
    fine-tuning, the backbone itself.
    """
    from unipetl.spaces.families import backbone
    from unipetl.spaces.layers import HeadSlots

    inside = {id(p) for p in backbone(model).parameters()}
    owner: dict[int, str] = {}
    for module in model.modules():
        kind = module_kind(module)
        if kind is not None:
            for p in module.parameters():
                owner.setdefault(id(p), kind)
        if isinstance(module, HeadSlots) and module._mlp[0] is not None:  # a shared reparametrization MLP trains with its slots
            for p in module._mlp[0].parameters():
                owner[id(p)] = kind
    out: dict[str, str] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if id(p) in owner:
            out[name] = owner[id(p)]
        elif id(p) not in inside:
            out[name] = "head"
        elif kinds_of_extras := [k for k in (e.lr_kind(name) for e in active_extras(variant)) if k]:  # full, BitFit
            out[name] = kinds_of_extras[0]
        else:  # a trainable backbone tensor no rule explains: refuse rather than guess its rate
            raise UnipetlError(f"lr plan: trainable parameter {name!r} belongs to no module kind of variant {variant.describe()!r}.")
    return out


def principal_kind(kinds: dict[str, str], sizes: dict[str, int]) -> str:
    """The kind holding the most trainable parameters (the head excluded); `probe` when none."""
    totals: dict[str, int] = {}
    for name, kind in kinds.items():
        if kind != "head":
            totals[kind] = totals.get(kind, 0) + sizes[name]
    if not totals:
        return "probe"
    return max(sorted(totals), key=lambda k: totals[k])


@dataclass(frozen=True, slots=True)
class LrPlan:
    """The learning rate of every kind a model trains, and how it was chosen.

    `rates`: kind → lr (the head under "head"); `source`: "method" (central × scale) or
    "override" (one `--lr` for every parameter); `scale`: the shared multiplier.
    """

    rates: dict[str, float]
    source: str
    scale: float
    principal: str

    def describe(self) -> str:
        parts = ", ".join(f"{k} {v:.3g}" for k, v in self.rates.items())
        return f"lr {parts} ({'one --lr for all' if self.source == 'override' else f'method-aware, scale {self.scale:g}'})"


def check_scale(scale: Any) -> float:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise UnipetlError(f"`lr_scale` should be a positive number, got {scale!r}.")
    return float(scale)


def plan(model: nn.Module, variant: Variant, *, scale: float = 1.0, override: float | None = None) -> tuple[LrPlan, dict[str, str]]:
    """The lr plan of a realized model and its parameter → kind map.

    `override` (a user's `--lr`) gives every parameter that rate; otherwise kind k trains at
    LR_CENTRAL[k] · scale and the head at its principal kind's rate.
    """
    scale = check_scale(scale)
    kinds = parameter_kinds(model, variant)
    sizes = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    principal = principal_kind(kinds, sizes)
    used = sorted(set(kinds.values()))
    if override is not None:
        return LrPlan({k: float(override) for k in used}, "override", 1.0, principal), kinds
    rates = {k: LR_CENTRAL[principal if k == "head" else k] * scale for k in used}
    return LrPlan(rates, "method", scale, principal), kinds


def param_groups(model: nn.Module, lr_plan: LrPlan, kinds: dict[str, str], weight_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups: one per (kind, decay); no weight decay on biases and norms.

    Each group carries its `kind` (AdamW ignores extra keys) so tests and logs can read it back.
    """
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim < 2 or "norm" in name.lower()
        groups.setdefault((kinds[name], no_decay), []).append(p)
    return [{"params": ps, "lr": lr_plan.rates[kind], "weight_decay": 0.0 if nd else weight_decay, "kind": kind}
            for (kind, nd), ps in sorted(groups.items())]
