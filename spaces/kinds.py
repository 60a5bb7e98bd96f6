"""Module kinds as plug-ins: one file per kind plus one registry line.

A *kind* is what a `Module` modifies and how (He et al., ICLR 2022, §3, Table 1): bottleneck
adapters at a sublayer output (`adapter`), head-wise slots (`heads`: prefix tuning, MH PA),
low-rank weight updates (`lora`, and its variants `rslora`, `dora`) and learned vector scales
(`ia3`). Everything the rest of unipetl needs to know about a kind — its spec checks, its
analytic counts, how it is inserted into a model, what it adds to the search space, how reports
name it, how it saves and exports — is a method of one `ModuleKind` subclass in one file,
`spaces/kind_<name>.py` (flat in `spaces/`: the installed package list names `unipetl.spaces`
only). The file ends with `register_kind(MyKind())`; `_BUILTIN` below lists it (the one
registry line) and orders the search space's choice lists. Whole-model kinds (prompt tuning,
BitFit, full fine-tuning) are `ExtraKind`s, each reading one `Variant` field.

This module and the kind files import no torch at module level: specs, counts, search spaces
and reports (which never import torch) read the registry too. Building modules imports torch
inside `insert`.

Adding a kind (see README, "Extending"): write `spaces/kind_<name>.py` with a subclass of
`ModuleKind`, and add its name to `_BUILTIN` below. tests/test_kind_conformance.py then runs it
on every family it declares.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from unipetl.spaces.registry import Registry, UnipetlError

if TYPE_CHECKING:  # pragma: no cover
    from unipetl.spaces.accounting import SiteInstance
    from unipetl.spaces.shapes import ModelShape, StackShape
    from unipetl.spaces.variant import Module

ATTN_SITES = ("attn", "self_attn", "cross_attn")
ALL_FAMILIES = ("bert", "roberta", "bart", "mbart", "t5", "gpt2", "llama", "qwen2")


@dataclass(frozen=True, slots=True)
class SearchMethod:
    """One entry of the search space's per-site method lists (`attn.method`, `ffn.method`).

    `samples_function`: the trial picks f from the space's `functions`; `compositions`: None
    lets the trial pick among the space's compositions minus `excluded`, () fixes it."""

    name: str
    kind: str
    sites: tuple[str, ...]  # among "attn", "ffn"
    samples_function: bool = False
    compositions: tuple[str, ...] | None = None
    excluded: tuple[str, ...] = ()
    fixed: tuple[tuple[str, Any], ...] = ()  # Module fields this method always sets
    default: bool = True  # in the default space; False: only when a study file lists it
    sized: bool = True  # False: the kind has no size (always 1), whatever the budget leaves

    def module(self, site: str, size: int, **opts: Any) -> Module:
        """The Module of this method at `site` with bottleneck / slot count `size`."""
        from unipetl.spaces.variant import Module

        kw = {"site": site, "size": size if self.sized else 1, "kind": self.kind, **opts, **dict(self.fixed)}
        return Module(**kw)


@dataclass(frozen=True, slots=True)
class KindPreset:
    """A preset a kind file contributes: `build(**keys) -> Variant`, defaults from its signature."""

    name: str
    summary: str
    size_key: str | None
    build: Any
    display: str | None = None  # how reports write it ("DoRA"); None: the name


class ModuleKind:
    """Everything unipetl knows about one kind of module. Subclasses override what differs.

    Class attributes: `name` (the spec's `kind` value), `size_letter` (r or l in reports),
    `families` (model families the conformance suite runs it on), `noop_at_init` (a fresh
    module leaves the model's outputs unchanged; `claims_noop(m)` may refine it per spec),
    `owns_gate` (a `gated` composition adds a sigmoid gate W_g, b_g of d + 1 parameters).
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    size_letter: ClassVar[str] = "r"
    families: ClassVar[tuple[str, ...]] = ALL_FAMILIES
    owns_gate: ClassVar[bool] = True
    insertion_varies: ClassVar[bool] = False  # reports' `insertion` column looks at this kind

    # --- spec ------------------------------------------------------------------------------
    def validate(self, m: Module) -> None:
        """Kind-specific checks of a spec; may fill defaults (object.__setattr__).

        Raises UnipetlError naming the field and the value."""
        if m.reparam:
            raise UnipetlError(f"`reparam` (prefix MLP) is for kind 'heads' only, got kind {m.kind!r}.")
        if m.function == "softmax":
            raise UnipetlError(f"`function` 'softmax' is the prefix form; use kind 'heads', got kind {m.kind!r}.")
        if m.targets:
            raise UnipetlError(f"`targets` is for LoRA modules only, got {list(m.targets)} on kind {m.kind!r}.")

    def claims_noop(self, m: Module) -> bool:
        """Whether a freshly built module of this spec computes exactly the base model."""
        return True

    def scale_applies(self, m: Module) -> bool:
        """Whether the spec's `scale` changes what the module computes: s of a scaled add, the
        initial s of a learned one. Where it does not (add, gated: the gate replaces s), the spec
        stores 1, so two specs that build the same module are the same variant (one name, one
        latency key)."""
        return m.composition in ("scaled", "learned_scale")

    def describe(self, m: Module) -> str:
        """The spec in unified-view words without its site, e.g. 'parallel adapter r=64 s=4'."""
        raise NotImplementedError

    def representation(self, m: Module) -> str:
        """The representation it modifies, for reports: 'attention', 'attention heads', 'ffn'."""
        return "attention" if m.site in ATTN_SITES else "ffn"

    def signature(self, m: Module) -> tuple[str, ...]:
        """Design dimensions compared by the reports' nearest-named-method distance (5 values)."""
        comp = "scaled" if m.composition == "learned_scale" else m.composition
        return ("attn" if m.site in ATTN_SITES else "ffn", m.kind, m.function, m.insertion, comp)

    # --- counts (DESIGN.md §2) --------------------------------------------------------------
    def instance_counts(self, m: Module, st: StackShape, d: int) -> tuple[int, int]:
        """(paper, extra trainable) parameters of one sublayer instance; d is d_model."""
        raise NotImplementedError

    def trainable_count(self, m: Module, shape: ModelShape, insts: list[SiteInstance], paper: int, extra: int) -> int:
        """Trainable parameters of all instances (default: the paper count plus the extras)."""
        return paper + extra

    def presets(self) -> tuple[KindPreset, ...]:
        """Named methods this kind brings (registered in `spaces.presets` after the built-in ones)."""
        return ()

    def examples(self) -> tuple[Module, ...]:
        """Small specs the conformance suite (tests/test_kind_conformance.py) runs on every family."""
        return ()

    # --- search space -------------------------------------------------------------------------
    def search_methods(self) -> tuple[SearchMethod, ...]:
        """What this kind adds to the search space's method lists (default: nothing)."""
        return ()

    # --- realization, saving, export ---------------------------------------------------------
    def insert(self, ctx: Any, m: Module, index: int, insts: list[SiteInstance]) -> None:
        """Build the modules of spec `m` (variant.modules[index]) at `insts` on `ctx.model`.

        `ctx` is `spaces.realize.InsertContext`: the model, shape, per-sublayer hubs and
        hook tables. Only parameters under attributes named `petl*` may be created."""
        raise NotImplementedError

    def materialize(self, m: Module, model: Any, tensors: dict[str, Any]) -> Module:
        """Before saving: replace training devices by what they produce (default: as is)."""
        return m

    def peft_method(self, m: Module) -> str | None:
        """The PEFT method this spec maps to ('lora', 'prefix', …), or None (no PEFT format)."""
        return None

    def check_peft(self, mods: tuple[Module, ...], realized: Any) -> bool:
        """Whether PEFT can hold these modules (all of this kind) as one adapter; raises
        UnipetlError for a specific reason, returns False for the generic 'not expressible'."""
        return False

    def export_peft(self, realized: Any, config: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """Fill `config` (adapter_config.json fields); return the tensors by PEFT key and the
        key prefix for the task head's `modules_to_save` tensors."""
        raise UnipetlError(f"export --format peft: kind {self.name!r} has no PEFT export.")


class ExtraKind:
    """A whole-model kind: one field of `Variant` rather than a `Module` (BitFit, prompt
    tuning, full fine-tuning; the variant with none of them and no modules is the linear probe).

    `field` is the Variant attribute it reads; `describe_rank` orders it in descriptions
    (registration order orders validation and counts); `trains_everything`: the backbone and an
    untied LM head train too (full fine-tuning), which excludes every other module and extra.
    """

    name: ClassVar[str] = ""
    field: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    describe_rank: ClassVar[int] = 0
    trains_everything: ClassVar[bool] = False
    families: ClassVar[tuple[str, ...]] = ALL_FAMILIES

    def validate(self, v: Any) -> None:
        """Type checks of the field; raises UnipetlError naming field and value."""

    def active(self, v: Any) -> bool:
        return bool(getattr(v, self.field))

    def claims_noop(self, v: Any) -> bool:
        return True

    def describe(self, v: Any) -> str:
        raise NotImplementedError

    def count(self, v: Any, shape: ModelShape) -> tuple[str, int, int]:
        """(description, paper, trainable) from the model shape."""
        raise NotImplementedError

    def prepare(self, model: Any, v: Any, realized: Any) -> None:
        """Before modules are inserted (the backbone is frozen, the head trainable)."""

    def finish(self, model: Any, v: Any, realized: Any) -> None:
        """After modules are inserted."""

    def realized_paper(self, model: Any, backbone: list[tuple[str, Any]]) -> int:
        """Paper parameters measured on the model that no inserted module reports itself."""
        return 0

    def lr_kind(self, name: str) -> str | None:
        """The lr kind (spaces/lr.py) of trainable backbone tensor `name` if this extra trains it."""
        return None

    def peft_method(self, v: Any) -> str | None:
        """The PEFT method this extra alone exports to, or None (no PEFT format)."""
        return None

    def export_peft(self, realized: Any, config: dict[str, Any]) -> tuple[dict[str, Any], str]:
        raise UnipetlError(f"export --format peft: {self.name!r} has no PEFT export.")

    def examples(self) -> tuple[Any, ...]:
        """Small variants for the conformance suite."""
        return ()


KINDS: Registry[ModuleKind] = Registry("module kind")
EXTRAS: Registry[ExtraKind] = Registry("whole-model kind")


def register_extra(kind: ExtraKind) -> ExtraKind:
    """Plug a whole-model kind in (its `field` must be a field of `Variant`)."""
    return EXTRAS.register(kind.name, kind)


def all_extras() -> list[ExtraKind]:
    """Whole-model kinds in `_BUILTIN_EXTRAS` order, then others in registration order."""
    _load_builtin()
    names = EXTRAS.names()
    return [EXTRAS.get(n) for n in [n for n in _BUILTIN_EXTRAS if n in names] + [n for n in names if n not in _BUILTIN_EXTRAS]]


def active_extras(v: Any) -> list[ExtraKind]:
    return [k for k in all_extras() if k.active(v)]


def register_kind(kind: ModuleKind) -> ModuleKind:
    """Plug a kind in (one line per kind, in `_BUILTIN` order for the built-in ones)."""
    if not kind.name:
        raise UnipetlError(f"module kind {type(kind).__name__} has no `name`.")
    return KINDS.register(kind.name, kind)


def get_kind(name: str) -> ModuleKind:
    """The registered kind `name`; raises UnipetlError with a suggestion for an unknown one."""
    _load_builtin()
    return KINDS.get(name)


def kind_names() -> list[str]:
    """Registered kinds: the built-in ones in `_BUILTIN` order (whatever order their files
    were imported in), then the others in registration order."""
    _load_builtin()
    names = KINDS.names()
    return [n for n in _BUILTIN if n in names] + [n for n in names if n not in _BUILTIN]


def all_kinds() -> list[ModuleKind]:
    return [KINDS.get(n) for n in kind_names()]


def search_methods() -> list[SearchMethod]:
    """Every kind's search methods, in registration order."""
    return [sm for k in all_kinds() for sm in k.search_methods()]


# order = the search space's order of methods (prefix, mh_pa, lora, sa, pa)
_BUILTIN = ("heads", "lora", "adapter", "rslora", "ia3", "dora", "vera", "pissa", "olora")
_BUILTIN_EXTRAS = ("prompt", "bitfit", "full")
_loaded: list[bool] = []


def _load_builtin() -> None:
    if _loaded:
        return
    _loaded.append(True)
    for name in _BUILTIN + _BUILTIN_EXTRAS:
        importlib.import_module(f"unipetl.spaces.kind_{name}")


# --- helpers the kind files share -------------------------------------------------------------
_COMP_WORD = {"add": "", "scaled": "scaled ", "learned_scale": "learned-scale ", "gated": "gated "}


def comp_word(m: Module) -> str:
    """'scaled ', 'learned-scale ', 'gated ' or '' — the composition as a prefix word."""
    return _COMP_WORD[m.composition]


def scale_suffix(m: Module) -> str:
    """' s=4' for a fixed scale, ' s0=1' for a learned one's initial value, else ''."""
    if m.composition == "scaled":
        return f" s={m.scale:g}"
    return f" s0={m.scale:g}" if m.composition == "learned_scale" else ""
