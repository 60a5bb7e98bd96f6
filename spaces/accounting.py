"""Parameter accounting from shapes alone: the paper count and the trainable count.

paper count (He et al., App. B): what is stored per task, counted as the paper does — the
  W_down / W_up (adapter), A / B (LoRA), P_k / P_v (prefix, MH PA) matrices, soft prompt
  tokens, and for BitFit the bias vectors. Adapter biases, LayerNorms, gates, learned scales,
  the prefix reparametrization MLP and the task head are *not* counted.
trainable count: every parameter that requires grad for the variant (all of the above,
  including the prefix MLP instead of the prefixes it produces), the task head excluded
  (its size depends on the task; `realize` reports it separately).

`site_instances` is the single definition of where a module goes; the realization code uses
it too, so the analytic count and the realized model cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from unipetl.spaces.kind_lora import lora_dims  # noqa: F401  (re-exported: the LoRA shapes)
from unipetl.spaces.kinds import active_extras, get_kind
from unipetl.spaces.registry import UnipetlError
from unipetl.spaces.shapes import ModelShape, StackShape
from unipetl.spaces.variant import Module, Variant

SubLayer = Literal["self_attn", "cross_attn", "ffn"]
DEFAULT_STACKS = ("encoder", "decoder")


@dataclass(frozen=True, slots=True)
class SiteInstance:
    stack: str  # encoder | decoder
    sublayer: SubLayer
    layer: int


def _stacks_for(module: Module, shape: ModelShape, where: str) -> list[StackShape]:
    names = [s.name for s in shape.stacks]
    if tuple(module.stacks) != DEFAULT_STACKS:
        for s in module.stacks:
            if s not in names:
                raise UnipetlError(f"{where}: `stacks` names {s!r}, but model {shape.name or shape.model_type!r} has only {names}.")
    return [s for s in shape.stacks if s.name in module.stacks]


def site_instances(module: Module, shape: ModelShape, where: str = "module") -> list[SiteInstance]:
    """Every (stack, sublayer, layer) a module is inserted at; raises for sites the model lacks."""
    stacks = _stacks_for(module, shape, where)
    out: list[SiteInstance] = []
    for st in stacks:
        if module.site == "ffn":
            subs: list[SubLayer] = ["ffn"]
        elif module.site == "self_attn":
            subs = ["self_attn"]
        elif module.site == "cross_attn":
            subs = ["cross_attn"] if st.has_cross else []
        else:  # attn: every attention kind of the stack
            subs = ["self_attn", "cross_attn"] if st.has_cross else ["self_attn"]
        if module.layers is None:
            layers = list(range(st.n_layers))
        else:
            bad = [i for i in module.layers if i >= st.n_layers]
            if bad:
                raise UnipetlError(f"{where}: `layers` holds {bad[0]}, but the {st.name} of {shape.name or shape.model_type!r} has {st.n_layers} layers (0..{st.n_layers - 1}).")
            layers = sorted(module.layers)
        out += [SiteInstance(st.name, sub, i) for sub in subs for i in layers]
    if not out:
        raise UnipetlError(f"{where}: site {module.site!r} does not exist in model {shape.name or shape.model_type!r} (stacks {[s.name for s in stacks] or []}).")
    return out


@dataclass(slots=True)
class ModuleCount:
    description: str
    instances: int
    paper: int
    trainable: int


@dataclass(slots=True)
class Counts:
    paper_params: int
    trainable_params: int
    base_params: int
    denominator: str
    modules: list[ModuleCount] = field(default_factory=list)

    @property
    def paper_percent(self) -> float:
        return 100.0 * self.paper_params / self.base_params

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable_params / self.base_params

    def to_dict(self) -> dict[str, object]:
        return {
            "paper_params": self.paper_params,
            "trainable_params": self.trainable_params,
            "base_params": self.base_params,
            "paper_percent": self.paper_percent,
            "trainable_percent": self.trainable_percent,
            "paper_fraction": self.paper_params / self.base_params,
            "trainable_fraction": self.trainable_params / self.base_params,
            "denominator": self.denominator,
            "modules": [
                {"description": m.description, "instances": m.instances, "paper_params": m.paper, "trainable_params": m.trainable}
                for m in self.modules
            ],
        }


def _module_count(module: Module, shape: ModelShape, where: str) -> ModuleCount:
    """One module's counts: its kind's per-instance counts (spaces/kind_<name>.py), plus the
    composition's parameters every kind shares: a gate d + 1 (kinds that own one), a learned scale 1."""
    kind = get_kind(module.kind)
    d = shape.d_model
    insts = site_instances(module, shape, where)
    stacks = {s.name: s for s in shape.stacks}
    paper = extra = 0
    for inst in insts:
        p, e = kind.instance_counts(module, stacks[inst.stack], d)
        paper += p
        extra += e
        if module.composition == "gated" and kind.owns_gate:
            extra += d + 1  # sigmoid gate from the sublayer input: W_g (d × 1) and b_g
        if module.composition == "learned_scale":
            extra += 1
    return ModuleCount(module.describe(), len(insts), paper, kind.trainable_count(module, shape, insts, paper, extra))


def _one(c: tuple[str, int, int]) -> tuple[str, int, int, int]:
    return c[0], 1, c[1], c[2]


def count(variant: Variant, shape: ModelShape) -> Counts:
    """Paper and trainable counts of a variant on a model shape (no model is built)."""
    base = shape.base_params
    denominator = f"{shape.name or shape.model_type} backbone parameters ({base:,})"
    mods = [_module_count(m, shape, f"modules[{i}]") for i, m in enumerate(variant.modules)]
    for extra in active_extras(variant):  # whole-model kinds (spaces/kind_prompt.py, kind_bitfit.py, kind_full.py)
        mods.append(ModuleCount(*_one(extra.count(variant, shape))))
    paper = sum(m.paper for m in mods)
    trainable = sum(m.trainable for m in mods)
    return Counts(paper, trainable, base, denominator, mods)
