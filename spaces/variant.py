"""The variant spec: one point of the unified-view design space (He et al., ICLR 2022).

A `Variant` is a set of `Module`s, each placed at a *site* of every transformer layer, plus
whole-model extras (BitFit, prompt tuning, full fine-tuning). A `Module` states the four
design dimensions explicitly:

- functional form   `function`:    identity | relu | gelu | softmax
- insertion form    `insertion`:   sequential | parallel
- representation    `site` + `kind`: attention output (`kind="adapter"` at an attention site),
                    attention heads (`kind="heads"`: prefix tuning with softmax, MH PA with relu),
                    attention / FFN weight matrices (`kind="lora"` with `targets`; also
                    `rslora`, `dora`), keys / values / FFN intermediate (`kind="ia3"`),
                    FFN output (`kind="adapter"` at `site="ffn"`); every kind is one file,
                    `spaces/kind_<name>.py`, registered in `spaces/kinds.py`
- composition       `composition`: add | scaled (fixed s) | learned_scale | gated

Sites: `attn` is every attention sublayer the model has (encoder self, decoder self and decoder
cross attention); `self_attn` and `cross_attn` pick one kind; `ffn` is every FFN sublayer.
`stacks` restricts a module to the encoder or decoder stack; `layers` to some layer indices.

Specs are frozen, validated on construction, and round-trip losslessly through JSON.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from unipetl.spaces.kinds import ATTN_SITES, active_extras, all_extras, get_kind, kind_names  # noqa: F401  (ATTN_SITES: re-exported)
from unipetl.spaces.registry import UnipetlError, did_you_mean

Site = Literal["attn", "self_attn", "cross_attn", "ffn"]
Kind = str  # a registered module kind (spaces/kinds.py): adapter, heads, lora, …
Function = Literal["identity", "relu", "gelu", "softmax"]
Insertion = Literal["sequential", "parallel"]
Composition = Literal["add", "scaled", "learned_scale", "gated"]
Init = Literal["bert", "lora"]
Stack = Literal["encoder", "decoder"]
Target = Literal["q", "k", "v", "o", "w1", "w2"]

ATTN_TARGETS = ("q", "k", "v", "o")
FFN_TARGETS = ("w1", "w2")


def _choice(field_name: str, value: Any, literal: Any) -> None:
    choices = get_args(literal)
    if value not in choices:
        raise UnipetlError(f"`{field_name}` must be one of {list(choices)}, got {value!r}.{did_you_mean(str(value), choices)}")


def _positive_int(field_name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise UnipetlError(f"`{field_name}` should be a positive integer, got {value!r}.")


def _check_keys(cls: type, data: Any, where: str) -> None:
    if not isinstance(data, dict):
        raise UnipetlError(f"{where} must be a JSON object, got {type(data).__name__}.")
    known = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in known:
            raise UnipetlError(f"Unknown key {key!r} in {where}.{did_you_mean(str(key), known)}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Module:
    """One modification Δh inserted at one site of (some) layers."""

    site: Site
    kind: Kind
    size: int  # bottleneck r (adapter, LoRA) or number of slots l (heads: prefix / MH PA)
    function: Function = "relu"
    insertion: Insertion = "parallel"
    composition: Composition = "add"
    scale: float = 1.0  # s for `scaled`; the initial s for `learned_scale`
    targets: tuple[Target, ...] = ()  # LoRA: which weight matrices (q, k, v, o / w1, w2)
    init: Init = "bert"  # bert: W_down ~ N(0, 0.02); lora: kaiming-uniform W_down. W_up = 0 always.
    layernorm: bool = False  # LayerNorm on the adapter input
    layers: tuple[int, ...] | None = None  # None: every layer of the selected stacks
    stacks: tuple[Stack, ...] = ("encoder", "decoder")  # those the model has
    reparam: bool = False  # heads only: P = MLP(E) during training (Li & Liang)
    reparam_hidden: int = 512
    dropout: float = 0.0  # on the adapter / LoRA input

    def __post_init__(self) -> None:
        _choice("site", self.site, Site)
        if self.kind not in kind_names():
            raise UnipetlError(f"`kind` must be one of {sorted(kind_names())}, got {self.kind!r}.{did_you_mean(str(self.kind), kind_names())}")
        _choice("function", self.function, Function)
        _choice("insertion", self.insertion, Insertion)
        _choice("composition", self.composition, Composition)
        _choice("init", self.init, Init)
        _positive_int("size", self.size)
        if isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)) or not math.isfinite(self.scale) or self.scale <= 0:
            raise UnipetlError(f"`scale` should be a positive finite number, got {self.scale!r}.")
        object.__setattr__(self, "scale", float(self.scale))
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise UnipetlError(f"`dropout` should be in [0, 1), got {self.dropout!r}.")
        object.__setattr__(self, "targets", tuple(self.targets))
        object.__setattr__(self, "stacks", tuple(self.stacks))
        for t in self.targets:
            _choice("targets", t, Target)
        if len(set(self.targets)) != len(self.targets):
            raise UnipetlError(f"`targets` has duplicates: {list(self.targets)}.")
        if not self.stacks:
            raise UnipetlError("`stacks` must name at least one of ['encoder', 'decoder'], got [].")
        for s in self.stacks:
            _choice("stacks", s, Stack)
        if self.layers is not None:
            layers = tuple(self.layers)
            object.__setattr__(self, "layers", layers)
            for i in layers:
                if isinstance(i, bool) or not isinstance(i, int) or i < 0:
                    raise UnipetlError(f"`layers` must hold non-negative layer indices, got {i!r}.")
            if len(set(layers)) != len(layers) or not layers:
                raise UnipetlError(f"`layers` must be a non-empty list of distinct indices, got {list(layers)}.")
        if self.reparam:
            _positive_int("reparam_hidden", self.reparam_hidden)
        self._check_kind()

    def _check_kind(self) -> None:
        kind = get_kind(self.kind)
        kind.validate(self)  # each kind's own checks: spaces/kind_<name>.py
        if not kind.scale_applies(self):  # e.g. a gated LoRA (UniPELT): its gate replaces s
            object.__setattr__(self, "scale", 1.0)

    # --- description -------------------------------------------------------------------
    @property
    def s(self) -> float:
        """The fixed scale applied to Δh (1 for add and gated)."""
        return self.scale if self.composition in ("scaled", "learned_scale") else 1.0

    def describe(self) -> str:
        """Unified-view words, e.g. 'scaled parallel adapter r=512 s=4 @ffn'."""
        what = get_kind(self.kind).describe(self)
        where = f"@{self.site}"
        if self.layers is not None:
            where += f"[layers {','.join(map(str, self.layers))}]"
        if tuple(self.stacks) != ("encoder", "decoder"):
            where += f"[{'+'.join(self.stacks)}]"
        return f"{what} {where}"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["targets"] = list(self.targets)
        d["stacks"] = list(self.stacks)
        d["layers"] = None if self.layers is None else list(self.layers)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "module") -> Module:
        _check_keys(cls, data, where)
        kw = dict(data)
        for key in ("targets", "stacks", "layers"):
            if kw.get(key) is not None:
                if not isinstance(kw[key], (list, tuple)):
                    raise UnipetlError(f"`{key}` in {where} must be a list, got {kw[key]!r}.")
                kw[key] = tuple(kw[key])
        for key in ("site", "kind", "size"):
            if key not in kw:
                raise UnipetlError(f"{where} is missing the required key {key!r}.")
        try:
            return cls(**kw)
        except TypeError as err:  # pragma: no cover - keys were checked above
            raise UnipetlError(f"{where}: {err}") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class Variant:
    """A point of the design space: modules per site plus whole-model extras.

    The empty variant is the linear probe (only the task head trains). `full_finetune=True`
    trains every parameter and is the 100 % reference point.
    """

    modules: tuple[Module, ...] = ()
    bitfit: bool = False  # train every bias vector of the backbone
    prompt_length: int = 0  # prompt tuning: soft tokens prepended to the input embeddings
    full_finetune: bool = False
    name: str | None = None  # the preset string this variant came from, if any

    def __post_init__(self) -> None:
        object.__setattr__(self, "modules", tuple(self.modules))
        for m in self.modules:
            if not isinstance(m, Module):
                raise UnipetlError(f"`modules` must hold Module objects, got {type(m).__name__}.")
        for extra in all_extras():  # prompt, bitfit, full: spaces/kind_<name>.py
            extra.validate(self)
        if self.name is not None and not isinstance(self.name, str):
            raise UnipetlError(f"`name` should be a string, got {self.name!r}.")

    @property
    def is_probe(self) -> bool:
        return not (self.modules or active_extras(self))

    def describe(self) -> str:
        """The variant in unified-view terms, e.g. 'prefix l=30 @attn + scaled parallel adapter r=512 s=4 @ffn'."""
        extras = sorted(active_extras(self), key=lambda k: k.describe_rank)
        alone = [k for k in extras if k.trains_everything]
        if alone:
            return alone[0].describe(self)
        parts = [m.describe() for m in self.modules] + [k.describe(self) for k in extras]
        return " + ".join(parts) if parts else "linear probe (head only)"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "modules": [m.to_dict() for m in self.modules],
            "bitfit": self.bitfit,
            "prompt_length": self.prompt_length,
            "full_finetune": self.full_finetune,
        }

    def to_json(self, **kw: Any) -> str:
        return json.dumps(self.to_dict(), **kw)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Variant:
        _check_keys(cls, data, "variant")
        kw = dict(data)
        mods = kw.pop("modules", [])
        if not isinstance(mods, list):
            raise UnipetlError(f"`modules` in variant must be a list, got {mods!r}.")
        kw["modules"] = tuple(Module.from_dict(m, where=f"modules[{i}]") for i, m in enumerate(mods))
        return cls(**kw)

    @classmethod
    def from_json(cls, text: str) -> Variant:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise UnipetlError(f"variant JSON is malformed: {err.msg} at line {err.lineno} column {err.colno}.") from None
        except RecursionError:
            raise UnipetlError("variant JSON is nested too deeply to be a variant.") from None
        return cls.from_dict(data)

    @classmethod
    def from_file(cls, path: str) -> Variant:
        """A variant JSON file; every bad input is one UnipetlError that names the file (too large,
        not UTF-8 with the offset of the first bad byte, malformed, or a bad field)."""
        from unipetl.spaces.files import read_text_file

        text = read_text_file(path, "variant file", limit=4_000_000)
        try:
            return cls.from_json(text)
        except UnipetlError as err:
            raise UnipetlError(f"variant file {path!r}: {err}") from None

    def replace(self, **changes: Any) -> Variant:
        return dataclasses.replace(self, **changes)


def module_defaults() -> dict[str, Any]:
    """Default value of every optional Module field (used by reports and the search space)."""
    return {f.name: f.default for f in dataclasses.fields(Module) if f.default is not dataclasses.MISSING}


__all__ = ["Module", "Variant", "Site", "Kind", "Function", "Insertion", "Composition", "Init", "Stack", "Target", "field"]
