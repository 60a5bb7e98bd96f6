"""Named methods of the unified view as `Variant` builders, addressed by preset strings.

A preset string is `NAME[:key=value,...]`, e.g. `prefix:l=200`, `lora:r=8`,
`mam:l=30,r=512,s=4`, `scaled-pa:r=64,s=learned`. Size keys: `l` (prefix / prompt / MH PA
slots), `r` (rank / bottleneck), `s` (scale, or `learned`). A few presets take more
(`mlp` = prefix reparametrization width, `lora_r` for UniPELT). Anything else a variant can say
goes through a variant JSON file.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass

from unipetl.spaces.kinds import all_kinds
from unipetl.spaces.registry import Registry, UnipetlError, did_you_mean
from unipetl.spaces.variant import Module, Variant


@dataclass(frozen=True, slots=True)
class Preset:
    name: str
    build: Callable[..., Variant]
    summary: str
    size_key: str | None  # the key that sizes the preset to a budget (None: fixed size)
    display: str | None = None  # how reports write it, for presets of kind files (reports.frontier.DISPLAY has the rest)

    @property
    def defaults(self) -> dict[str, object]:
        return {k: p.default for k, p in inspect.signature(self.build).parameters.items()}


logger = logging.getLogger(__name__)
PRESETS: Registry[Preset] = Registry("preset")


def preset(name: str, summary: str, size_key: str | None = None, aliases: tuple[str, ...] = ()) -> Callable[[Callable[..., Variant]], Callable[..., Variant]]:
    def wrap(fn: Callable[..., Variant]) -> Callable[..., Variant]:
        PRESETS.register(name, Preset(name, fn, summary, size_key), aliases=aliases)
        return fn

    return wrap


def _scale(s: float | str) -> tuple[str, float]:
    """`s` → (composition, scale): a number is a fixed scale, 'learned' a learned one (init 1)."""
    if s == "learned":
        return "learned_scale", 1.0
    return "scaled", float(s)


def _prefix(l: int, mlp: int) -> Module:
    return Module(site="attn", kind="heads", size=l, function="softmax", composition="gated", reparam=mlp > 0, reparam_hidden=mlp or 512)


def _adapter(site: str, r: int, insertion: str, composition: str = "add", scale: float = 1.0) -> Module:
    return Module(site=site, kind="adapter", size=r, function="relu", insertion=insertion, composition=composition, scale=scale)  # type: ignore[arg-type]


@preset("houlsby", "sequential ReLU adapters after attention and FFN (Houlsby et al. 2019)", "r")
def houlsby(r: int = 64) -> Variant:
    return Variant(modules=(_adapter("attn", r, "sequential"), _adapter("ffn", r, "sequential")))


@preset("pfeiffer", "sequential ReLU adapter after the FFN only (Pfeiffer et al. 2021)", "r")
def pfeiffer(r: int = 64) -> Variant:
    return Variant(modules=(_adapter("ffn", r, "sequential"),))


@preset("prefix", "prefix tuning: l learned keys/values in every attention (Li & Liang 2021)", "l", aliases=("prefix-tuning",))
def prefix(l: int = 30, mlp: int = 0) -> Variant:
    return Variant(modules=(_prefix(l, mlp),))


@preset("lora", "LoRA on attention W_q, W_v, scaled add s = alpha / r (Hu et al. 2021)", "r")
def lora(r: int = 8, s: float | str = 2.0) -> Variant:
    comp, scale = _scale(s)
    return Variant(modules=(Module(site="attn", kind="lora", size=r, function="identity", composition=comp, scale=scale, targets=("q", "v"), init="lora"),))  # type: ignore[arg-type]


@preset("lora-ffn", "LoRA on the FFN W_1, W_2", "r")
def lora_ffn(r: int = 8, s: float | str = 2.0) -> Variant:
    comp, scale = _scale(s)
    return Variant(modules=(Module(site="ffn", kind="lora", size=r, function="identity", composition=comp, scale=scale, targets=("w1", "w2"), init="lora"),))  # type: ignore[arg-type]


@preset("bitfit", "tune every bias vector of the backbone (Ben Zaken et al. 2021)")
def bitfit() -> Variant:
    return Variant(bitfit=True)


@preset("prompt", "prompt tuning: l soft tokens prepended to the input (Lester et al. 2021)", "l", aliases=("prompt-tuning",))
def prompt(l: int = 20) -> Variant:
    return Variant(prompt_length=l)


@preset("pa-attn", "parallel adapter at attention, simple add", "r")
def pa_attn(r: int = 64) -> Variant:
    return Variant(modules=(_adapter("attn", r, "parallel"),))


@preset("pa-ffn", "parallel adapter at the FFN, simple add", "r", aliases=("pa",))
def pa_ffn(r: int = 64) -> Variant:
    return Variant(modules=(_adapter("ffn", r, "parallel"),))


@preset("sa-attn", "sequential adapter at attention, simple add", "r")
def sa_attn(r: int = 64) -> Variant:
    return Variant(modules=(_adapter("attn", r, "sequential"),))


@preset("sa-ffn", "sequential adapter at the FFN, simple add", "r")
def sa_ffn(r: int = 64) -> Variant:
    return Variant(modules=(_adapter("ffn", r, "sequential"),))


@preset("mh-pa", "multi-head parallel adapter: head-wise ReLU(x W_q P_k^T) P_v, simple add", "l")
def mh_pa(l: int = 30) -> Variant:
    return Variant(modules=(Module(site="attn", kind="heads", size=l, function="relu", composition="add"),))


@preset("scaled-pa", "scaled parallel adapter at the FFN (s fixed, or s=learned)", "r")
def scaled_pa(r: int = 64, s: float | str = 4.0) -> Variant:
    comp, scale = _scale(s)
    return Variant(modules=(_adapter("ffn", r, "parallel", comp, scale),))


@preset("mam", "MAM adapter: prefix at attention + scaled parallel adapter at the FFN (He et al. 2022)", "r")
def mam(l: int = 30, r: int = 512, s: float | str = 4.0, mlp: int = 0) -> Variant:
    comp, scale = _scale(s)
    return Variant(modules=(_prefix(l, mlp), _adapter("ffn", r, "parallel", comp, scale)))


@preset("unipelt", "UniPELT: gated LoRA (q, v) + prefix + gated sequential adapter at the FFN (Mao et al. 2022)", "r")
def unipelt(l: int = 10, r: int = 48, lora_r: int = 8) -> Variant:
    # no `s`: the LoRA's gate replaces its scale (Mao et al. 2022, §3; NO_EFFECT)
    return Variant(
        modules=(
            Module(site="attn", kind="lora", size=lora_r, function="identity", composition="gated", targets=("q", "v"), init="lora"),
            _prefix(l, 0),
            Module(site="ffn", kind="adapter", size=r, function="relu", insertion="sequential", composition="gated"),
        )
    )


@preset("full", "full fine-tuning (the 100 % reference)", aliases=("full-ft", "finetune"))
def full() -> Variant:
    return Variant(full_finetune=True)


@preset("probe", "linear probe: only the task head trains", aliases=("linear-probe", "head"))
def probe() -> Variant:
    return Variant()


# named methods of kinds that live in their own files (spaces/kind_<name>.py `presets()`)
for _kind in all_kinds():
    for _p in _kind.presets():
        PRESETS.register(_p.name, Preset(_p.name, _p.build, _p.summary, _p.size_key, _p.display))


# keys a preset once took that change nothing it builds: accepted (names stored by earlier versions must
# still parse) and dropped, with a warning that says why
NO_EFFECT = {("unipelt", "s"): "UniPELT's gate replaces LoRA's scale (Mao et al. 2022), so `s` changes nothing; it is dropped"}


def _value(key: str, raw: str) -> object:
    if key == "s" and raw == "learned":
        return raw
    try:
        return int(raw)
    except ValueError:
        pass
    try:
        return float(raw)
    except ValueError:
        raise UnipetlError(f"preset key `{key}` must be a number, got {raw!r}.") from None


def parse_preset(text: str) -> Variant:
    """`NAME[:key=value,...]` → Variant (its `name` is the normalized preset string)."""
    if not isinstance(text, str) or not text.strip():
        raise UnipetlError(f"preset must be a non-empty string like 'lora:r=8', got {text!r}.")
    name, _, args = text.strip().partition(":")
    p = PRESETS.get(name.strip())
    defaults = p.defaults
    kwargs: dict[str, object] = {}
    for item in filter(None, (a.strip() for a in args.split(","))):
        key, eq, raw = item.partition("=")
        key = key.strip()
        if not eq:
            raise UnipetlError(f"preset argument {item!r} of {p.name!r} must look like key=value.")
        if (p.name, key) in NO_EFFECT:
            logger.warning("preset %r: %s.", text.strip(), NO_EFFECT[(p.name, key)])
            continue
        if key not in defaults:
            hint = did_you_mean(key, list(defaults)) if defaults else " It takes no arguments."
            raise UnipetlError(f"Unknown key {key!r} for preset {p.name!r}.{hint}")
        value = _value(key, raw.strip())
        if key == "s":
            if value != "learned" and (not isinstance(value, (int, float)) or value <= 0):
                raise UnipetlError(f"preset key `s` should be a positive number or 'learned', got {raw.strip()!r}.")
        elif key == "mlp":
            if not isinstance(value, int) or value < 0:
                raise UnipetlError(f"preset key `mlp` should be a non-negative integer, got {raw.strip()!r}.")
        elif not isinstance(value, int) or value <= 0:
            raise UnipetlError(f"preset key `{key}` should be a positive integer, got {raw.strip()!r}.")
        kwargs[key] = value
    variant = p.build(**kwargs)
    merged = {**defaults, **kwargs}
    label = p.name + (":" + ",".join(f"{k}={merged[k]}" for k in defaults) if defaults else "")
    return variant.replace(name=label)


def preset_names() -> list[str]:
    return PRESETS.names()
