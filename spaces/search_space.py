"""The search-space encoding: a define-by-run function from an Optuna trial to a `Variant`.

Dimensions, per site (attention, FFN), as in He et al. §4:
  method       attention: none | prefix | mh_pa | lora | sa | pa;  FFN: none | lora | sa | pa
               (each kind file adds its methods, `ModuleKind.search_methods`; the later ones —
               rslora, dora, ia3 — are opt-in: a study file's `attention_methods` / `ffn_methods`)
  function     relu | gelu | identity           (adapters and MH PA; prefix is softmax, LoRA identity)
  composition  add | scaled | learned_scale | gated   (prefix is always gated; MH PA never is)
  scale        s for `scaled` (a categorical list)
  placement    all | upper | lower layers
  sizes        *derived*, never sampled: see below

Why sizes are derived from the budget instead of sampled and checked with constraints.
Optuna 5 offers `trial.set_constraint`, but a constraint only tells the sampler *after* the
trial that a point was infeasible: the trial would still be asked, stored and (unless we skip
it by hand) trained, and random / TPE samplers keep proposing infeasible sizes at a rate that
grows as the budget shrinks (at 0.1 % most (r, l) pairs are over budget). Instead we sample the
*share* of the budget each site receives (`attn.share`) and the fraction of the budget used
(`budget_use`) and derive r / l as the largest integer that fits, using the analytic paper count
(`unipetl.spaces.accounting.count`, affine in the size: VeRA's λ_b and DoRA's magnitude do not
grow with r). Every sample is feasible by construction, no trial is wasted, and the sampled
numbers are smooth, budget-independent quantities that TPE models well. Methods whose smallest
instance (size 1) does not fit are removed from the choice lists once per study (the lists
depend only on shape, budget and the study file, so every trial of a study sees the same
distributions).

The same function serves `optuna.Study.ask()` trials, `optuna.trial.FixedTrial` in tests and
Ray Tune's `OptunaSearch(space=define_by_run)`, since it only calls `trial.suggest_*`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any, Protocol

from unipetl.spaces.accounting import count
from unipetl.spaces.kinds import SearchMethod, search_methods
from unipetl.spaces.lr import LR_SCALE_RANGE
from unipetl.spaces.presets import PRESETS, parse_preset
from unipetl.spaces.registry import UnipetlError, did_you_mean
from unipetl.spaces.shapes import ModelShape
from unipetl.spaces.variant import Module, Variant

logger = logging.getLogger(__name__)

# each kind says which methods it adds (spaces/kind_<name>.py `search_methods`), in registry order
METHODS: dict[str, SearchMethod] = {sm.name: sm for sm in search_methods()}
ATTN_METHODS = ("none", *(sm.name for sm in METHODS.values() if "attn" in sm.sites))
FFN_METHODS = ("none", *(sm.name for sm in METHODS.values() if "ffn" in sm.sites))
# the default space: the 2022 methods; the later ones (rslora, …) join when a study file lists them
DEFAULT_ATTN_METHODS = tuple(m for m in ATTN_METHODS if m == "none" or METHODS[m].default)
DEFAULT_FFN_METHODS = tuple(m for m in FFN_METHODS if m == "none" or METHODS[m].default)
FUNCTIONS = ("relu", "gelu", "identity")
COMPOSITIONS = ("add", "scaled", "learned_scale", "gated")
PLACEMENTS = ("all", "upper", "lower")
# named methods enqueued first in every study, sized to the budget (frontier mode: to a ladder of shares of it)
DEFAULT_PRESETS = ("mam", "lora", "pa-ffn", "scaled-pa", "prefix", "houlsby")


class SuggestTrial(Protocol):
    def suggest_categorical(self, name: str, choices: Any) -> Any: ...
    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float: ...


def _subset(field: str, value: Any, allowed: tuple[Any, ...]) -> tuple[Any, ...]:
    if not isinstance(value, (list, tuple)) or not value:
        raise UnipetlError(f"space `{field}` must be a non-empty list, got {value!r}.")
    for v in value:
        if v not in allowed:
            raise UnipetlError(f"space `{field}` holds unknown value {v!r}.{did_you_mean(str(v), [str(a) for a in allowed])}")
    return tuple(dict.fromkeys(value))


@dataclass(frozen=True, slots=True, kw_only=True)
class SpaceConfig:
    """Restrictions / extensions of the space, read from the `space:` section of a study file."""

    attention_methods: tuple[str, ...] = DEFAULT_ATTN_METHODS
    ffn_methods: tuple[str, ...] = DEFAULT_FFN_METHODS
    functions: tuple[str, ...] = ("relu", "gelu")
    compositions: tuple[str, ...] = COMPOSITIONS
    scales: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)
    placements: tuple[str, ...] = ("all", "upper")
    attn_share: tuple[float, float] = (0.1, 0.9)  # share of the used budget given to attention
    budget_use: tuple[float, float] = (0.5, 1.0)  # fraction of the budget a variant uses (log-uniform)
    max_size: int | None = None  # cap on r / l (default: d_model)
    presets: tuple[str, ...] = DEFAULT_PRESETS
    lr_scale: tuple[float, float] = LR_SCALE_RANGE  # shared multiplier on each kind's central lr (log-uniform; [1, 1] fixes it)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "attention_methods", _subset("attention_methods", self.attention_methods, ATTN_METHODS))
        set_(self, "ffn_methods", _subset("ffn_methods", self.ffn_methods, FFN_METHODS))
        if set(self.attention_methods) | set(self.ffn_methods) == {"none"}:
            raise UnipetlError("space: `attention_methods` and `ffn_methods` are both ['none']; nothing to search.")
        set_(self, "functions", _subset("functions", self.functions, FUNCTIONS))
        set_(self, "compositions", _subset("compositions", self.compositions, COMPOSITIONS))
        set_(self, "placements", _subset("placements", self.placements, PLACEMENTS))
        if not isinstance(self.scales, (list, tuple)) or not self.scales:
            raise UnipetlError(f"space `scales` must be a non-empty list, got {self.scales!r}.")
        for s in self.scales:
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or s <= 0:
                raise UnipetlError(f"space `scales` must hold positive numbers, got {s!r}.")
        set_(self, "scales", tuple(float(s) for s in self.scales))
        lr_rng = self.lr_scale
        if (not isinstance(lr_rng, (list, tuple)) or len(lr_rng) != 2 or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in lr_rng)
                or not 0 < float(lr_rng[0]) <= float(lr_rng[1]) or not all(math.isfinite(float(x)) for x in lr_rng)):
            raise UnipetlError(f"space `lr_scale` must be a [low, high] pair with 0 < low <= high, got {lr_rng!r}.")
        set_(self, "lr_scale", (float(lr_rng[0]), float(lr_rng[1])))
        for name in ("attn_share", "budget_use"):
            rng = getattr(self, name)
            if not isinstance(rng, (list, tuple)) or len(rng) != 2 or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in rng):
                raise UnipetlError(f"space `{name}` must be a [low, high] pair, got {rng!r}.")
            lo, hi = float(rng[0]), float(rng[1])
            if not 0 < lo <= hi <= 1:
                raise UnipetlError(f"space `{name}` must satisfy 0 < low <= high <= 1, got {list(rng)!r}.")
            set_(self, name, (lo, hi))
        if self.max_size is not None and (isinstance(self.max_size, bool) or not isinstance(self.max_size, int) or self.max_size <= 0):
            raise UnipetlError(f"space `max_size` should be a positive integer, got {self.max_size!r}.")
        if not isinstance(self.presets, (list, tuple)):
            raise UnipetlError(f"space `presets` must be a list of preset names, got {self.presets!r}.")
        for p in self.presets:
            PRESETS.get(str(p))  # raises "Unknown preset ... Did you mean"
        set_(self, "presets", tuple(self.presets))

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> SpaceConfig:
        data = data or {}
        if not isinstance(data, dict):
            raise UnipetlError(f"`space` must be a mapping, got {type(data).__name__}.")
        known = [f.name for f in dataclasses.fields(cls)]
        for key in data:
            if key not in known:
                raise UnipetlError(f"Unknown key {key!r} in space.{did_you_mean(str(key), known)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    def to_dict(self) -> dict[str, Any]:
        return {f.name: list(getattr(self, f.name)) if isinstance(getattr(self, f.name), tuple) else getattr(self, f.name) for f in dataclasses.fields(self)}


# --- budgets ------------------------------------------------------------------------------


def parse_budget(text: str | float | int, shape: ModelShape) -> float:
    """'0.5%' → 0.005; '0.005' → 0.005 (a fraction); '50000' → 50000 paper params / backbone."""
    raw = str(text).strip()
    try:
        if raw.endswith("%"):
            frac = float(raw[:-1]) / 100.0
        elif raw.lstrip("+-").isdigit():
            n = int(raw)
            if n <= 0 or n > shape.base_params:
                raise UnipetlError(f"`budget` of {n} parameters must be in 1..{shape.base_params:,} (the backbone), got {raw!r}.")
            return n / shape.base_params
        else:
            frac = float(raw)
    except ValueError:
        raise UnipetlError(f"`budget` must look like 0.5%, 0.005 or 50000 (paper parameters), got {raw!r}.") from None
    if not math.isfinite(frac) or not 0 < frac <= 1:
        raise UnipetlError(f"`budget` must be in (0, 100%] of the backbone, got {raw!r}.")
    return frac


def budget_params(budget_fraction: float, shape: ModelShape) -> int:
    """The budget in paper parameters (an absolute budget round-trips exactly through its fraction)."""
    exact = budget_fraction * shape.base_params
    nearest = round(exact)
    return int(nearest if abs(exact - nearest) <= 1e-6 * max(1.0, exact) else math.floor(exact))


# --- modules of each method ---------------------------------------------------------------


def _module(site: str, method: str, size: int, *, function: str = "relu", composition: str = "add", scale: float = 1.0, layers: tuple[int, ...] | None = None) -> Module:
    return METHODS[method].module(site, size, function=function, composition=composition, scale=scale, layers=layers)


def unit_cost(site: str, method: str, shape: ModelShape, layers: tuple[int, ...] | None = None) -> int:
    """Paper count of the method at size 1."""
    return count(Variant(modules=(_module(site, method, 1, layers=layers),)), shape).paper_params


def cost_line(site: str, method: str, shape: ModelShape, layers: tuple[int, ...] | None = None) -> tuple[int, int]:
    """(fixed, per unit of size): the paper count is fixed + size · per-unit. Affine, not linear:
    VeRA's λ_b (d_out per target) and DoRA's magnitude are there at any r; 0 for the other kinds."""
    one = unit_cost(site, method, shape, layers)
    step = count(Variant(modules=(_module(site, method, 2, layers=layers),)), shape).paper_params - one
    return one - step, step


def _fit(avail: int, fixed: int, unit: int, cap: int) -> int:
    """The largest size ≤ cap whose cost fixed + size · unit fits `avail` (at least 1); a sizeless
    method (unit 0: (IA)³, whose count does not depend on a size) is always size 1."""
    return 1 if unit == 0 else min(cap, max(1, (avail - fixed) // unit))


def feasible_methods(shape: ModelShape, budget_fraction: float, cfg: SpaceConfig) -> tuple[list[str], list[str]]:
    """Attention and FFN choice lists whose size-1 instance on every layer fits the budget.

    Raises when no non-empty variant fits (the budget is smaller than any module)."""
    b = budget_params(budget_fraction, shape)
    attn = [m for m in cfg.attention_methods if m == "none" or unit_cost("attn", m, shape) <= b]
    ffn = [m for m in cfg.ffn_methods if m == "none" or unit_cost("ffn", m, shape) <= b]
    if set(attn) | set(ffn) <= {"none"}:
        cheapest = min(unit_cost(s, m, shape) for s, ms in (("attn", cfg.attention_methods), ("ffn", cfg.ffn_methods)) for m in ms if m != "none")
        raise UnipetlError(
            f"`budget` of {b:,} paper parameters ({100 * budget_fraction:.4g} %) is smaller than any non-empty variant of the space "
            f"on {shape.name or shape.model_type} (the cheapest needs {cheapest:,})."
        )
    return attn, ffn


def _layers(placement: str, shape: ModelShape) -> tuple[int, ...] | None:
    n = min(s.n_layers for s in shape.stacks)
    if placement == "all" or n < 2:
        return None
    half = n // 2
    return tuple(range(half, n)) if placement == "upper" else tuple(range(half))


def _site_choices(trial: SuggestTrial, site: str, method: str, cfg: SpaceConfig) -> dict[str, Any]:
    """function / composition / scale of one site (parameter names are namespaced by method)."""
    out: dict[str, Any] = {}
    sm = METHODS[method]
    if sm.samples_function:
        out["function"] = trial.suggest_categorical(f"{site}.{method}.function", list(cfg.functions))
    if sm.compositions == ():
        return out
    allowed = sm.compositions if sm.compositions is not None else cfg.compositions
    comps = [c for c in cfg.compositions if c in allowed and c not in sm.excluded] or ["add"]
    comp = trial.suggest_categorical(f"{site}.{method}.composition", comps)
    out["composition"] = comp
    if comp == "scaled":
        out["scale"] = trial.suggest_categorical(f"{site}.{method}.scale", list(cfg.scales))
    return out


def suggest_variant(trial: SuggestTrial, shape: ModelShape, budget_fraction: float, space_cfg: SpaceConfig | None = None) -> Variant:
    """Sample one variant whose paper count is at most the budget (define-by-run).

    Sizes are derived, not sampled (see the module docstring): `budget_use` picks how much of
    the budget the variant spends, `attn.share` how it is split between the two sites."""
    cfg = space_cfg or SpaceConfig()
    b = budget_params(budget_fraction, shape)
    attn_choices, ffn_choices = feasible_methods(shape, budget_fraction, cfg)
    attn = trial.suggest_categorical("attn.method", attn_choices)
    if attn == "none":
        ffn_only = [m for m in ffn_choices if m != "none"]
        ffn = trial.suggest_categorical("ffn.method_alone", ffn_only) if ffn_only else "none"
    else:
        ffn = trial.suggest_categorical("ffn.method", ffn_choices)
    use = trial.suggest_float("budget_use", *cfg.budget_use, log=True) if cfg.budget_use[0] < cfg.budget_use[1] else cfg.budget_use[0]
    spend = max(1, int(b * use))
    cap = cfg.max_size or shape.d_model
    sites: list[tuple[str, str, dict[str, Any], tuple[int, ...] | None]] = []
    for site, method in (("attn", attn), ("ffn", ffn)):
        if method not in METHODS:  # "none"
            continue
        opts = _site_choices(trial, site, method, cfg)
        placement = trial.suggest_categorical(f"{site}.placement", list(cfg.placements))
        sites.append((site, method, opts, _layers(placement, shape)))
    lines = [cost_line(site, method, shape, layers) for site, method, _, layers in sites]
    fixed, units = [f for f, _ in lines], [u for _, u in lines]
    if len(sites) == 2:
        share = trial.suggest_float("attn.share", *cfg.attn_share) if cfg.attn_share[0] < cfg.attn_share[1] else cfg.attn_share[0]
        if fixed[0] + units[0] + fixed[1] + units[1] > b:  # both cannot fit even at size 1: keep the site with the larger share
            keep = 0 if share >= 0.5 else 1
            sites, fixed, units = [sites[keep]], [fixed[keep]], [units[keep]]
            sizes = [_fit(spend, fixed[0], units[0], cap)]
        else:
            s_attn = _fit(int(share * spend), fixed[0], units[0], cap)
            rest = spend - fixed[0] - s_attn * units[0] - fixed[1]  # what the FFN site's sized part may spend
            if rest < units[1]:  # not even size 1 there: size 1, and the attention site takes the rest of the budget
                s_ffn, s_attn = 1, _fit(b - fixed[1] - units[1], fixed[0], units[0], cap)
            else:
                s_ffn = min(cap, rest // units[1]) if units[1] else 1
            sizes = [s_attn, s_ffn]
    else:
        sizes = [_fit(spend, fixed[0], units[0], cap)]
    modules = tuple(_module(site, method, size, layers=layers, **opts) for (site, method, opts, layers), size in zip(sites, sizes, strict=True))
    variant = Variant(modules=modules)
    paper = count(variant, shape).paper_params
    if paper > b:  # pragma: no cover - the derivation above guarantees it; a bug if reached
        raise AssertionError(f"sampled variant {variant.describe()} has {paper} > budget {b} paper parameters")
    return variant


def suggest_lr_scale(trial: SuggestTrial, space_cfg: SpaceConfig | None = None) -> float:
    """The shared learning-rate multiplier (log-uniform over the space's `lr_scale` range): every
    kind of module then trains at its central rate × this (`unipetl.spaces.lr`), so the rate is
    searched together with the four design dimensions. Named methods are enqueued at 1."""
    cfg = space_cfg or SpaceConfig()
    lo, hi = cfg.lr_scale
    return trial.suggest_float("lr_scale", lo, hi, log=True) if lo < hi else lo


# --- named methods sized to the budget ----------------------------------------------------

_SIZE_KEYS = ("l", "r", "lora_r")


def size_preset(name: str, shape: ModelShape, budget_fraction: float) -> Variant | None:
    """The preset with its size key as large as the budget allows (None if size 1 does not fit).

    Other size keys (MAM's l, UniPELT's l / lora_r) keep their defaults, halved until the
    preset at size 1 fits, so MAM at a small budget becomes e.g. l=15 + the largest r."""
    p = PRESETS.get(name)
    b = budget_params(budget_fraction, shape)
    if p.size_key is None:
        v = parse_preset(p.name)
        return v if v.full_finetune or count(v, shape).paper_params <= b else None
    others = {k: int(v) for k, v in p.defaults.items() if k in _SIZE_KEYS and k != p.size_key and isinstance(v, int)}

    def paper(size: int) -> int:
        args = ",".join(f"{k}={v}" for k, v in {**others, p.size_key: size}.items())
        return count(parse_preset(f"{p.name}:{args}"), shape).paper_params

    while paper(1) > b:
        if not others or all(v == 1 for v in others.values()):
            return None
        others = {k: max(1, v // 2) for k, v in others.items()}
    lo, hi = 1, 2
    while paper(hi) <= b and hi < 1 << 20:
        lo, hi = hi, hi * 2
    while hi - lo > 1:  # paper(lo) <= b < paper(hi)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if paper(mid) <= b else (lo, mid)
    args = ",".join(f"{k}={v}" for k, v in {**others, p.size_key: lo}.items())
    return parse_preset(f"{p.name}:{args}")
