"""Realizing a `Variant` on a transformers model: freeze, insert, hook, count.

`apply_variant(model, variant)` freezes every backbone parameter, inserts the variant's modules
at the places `accounting.site_instances` names (so analytic and realized counts cannot drift),
and leaves the task head trainable (full fine-tuning: everything trains). Insertion uses
forward hooks on the projections found by `unipetl.spaces.families`, not module replacement, so the
backbone's parameter names — and therefore its checkpoints — stay untouched; every inserted
parameter lives under an attribute called `petl*`.

- sequential adapter: out-projection hook, h ← h + comp(Δ(h));
- parallel adapter / gates: a pre-hook on the sublayer's first projection captures x, the
  out-projection hook adds comp(Δ(x));
- LoRA: hooks on the targeted projections add s·(x A)B (column slices of GPT-2's fused c_attn);
  a gate reads the sublayer input x or the projection's own input, by target (families);
- head-wise slots (prefix, MH PA): `unipetl.spaces.attention`;
- prompt tuning: `families.install_prompt` hooks on the (encoder) input path.

Every hook is a bound method of an inserted module or a callable object holding them, never a
closure, so `copy.deepcopy` of a realized model gives a model whose hooks use its own modules.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from unipetl.spaces import attention, families
from unipetl.spaces.accounting import Counts, SiteInstance, count, site_instances
from unipetl.spaces.kinds import active_extras, get_kind
from unipetl.spaces.layers import Lora
from unipetl.spaces.registry import UnipetlError
from unipetl.spaces.shapes import ModelShape, shape_from_config
from unipetl.spaces.variant import Variant

logger = logging.getLogger(__name__)


class SiteHub(nn.Module):
    """The modules of one sublayer instance, and the sublayer input x captured for them.

    x (B, T, d) is captured by a pre-hook on the sublayer's first projection (`refs.reads`) and
    dropped again by the hook on its output projection, which runs last in the same sublayer
    call: no activation outlives the call (a held one would pin memory and the autograd graph,
    and make `copy.deepcopy` of a model after a training step fail on a non-leaf tensor).
    """

    def __init__(self) -> None:
        super().__init__()
        self.sequential = nn.ModuleList()
        self.parallel = nn.ModuleList()
        self.loras = nn.ModuleList()
        self.x: torch.Tensor | None = None

    def capture(self, _module: nn.Module, args: tuple[Any, ...]) -> None:
        self.x = args[0]

    def apply(self, _module: nn.Module, _args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        h, x = output, self.x
        self.x = None
        for a in self.sequential:
            h = h + a.delta(h, x)
        for a in self.parallel:
            h = h + a.delta(x, x)
        return h


def projection_dims(mod: nn.Module, slc: slice | None) -> tuple[int, int]:
    """(d_in, d_out) of a projection (nn.Linear or GPT-2's Conv1D), or of a column slice of it."""
    if isinstance(mod, Conv1D):
        d_in, d_out = mod.weight.shape
    else:
        d_out, d_in = mod.weight.shape
    if slc is not None:
        d_out = slc.stop - slc.start
    return d_in, d_out


class LoraHook:
    """Forward hook of one projection: adds s·(x A)B of every LoRA that targets it.

    A callable object rather than a closure: `copy.deepcopy` of the model copies it with the
    model and remaps its LoRA modules and hubs to the copy's (a closure would keep the original's).
    Each entry: (lora, factor key, output column slice or None, hub whose captured sublayer input
    the gate reads — or None: the gate reads the projection's own input; see
    `families.INNER_TARGETS`, which decides this from the target, never from tensor shapes).
    """

    def __init__(self, entries: list[tuple[Lora, str, slice | None, SiteHub | None]]) -> None:
        self.entries = entries
        self.handle: Any = None  # set on registration; `Realized.merge` removes it once every entry is folded

    def __call__(self, _module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        inp = args[0]
        for lora, key, slc, hub in self.entries:
            if lora.merged:
                continue
            output = lora.apply(key, inp, inp if hub is None else hub.x, output, slc)
        return output


@dataclass
class Realized:
    """A model with a variant applied; `counts` are the analytic ones (accounting.py)."""

    model: nn.Module
    variant: Variant
    shape: ModelShape
    counts: Counts
    head_params: int
    handles: list[Any] = field(default_factory=list, repr=False)
    lora_hooks: list[LoraHook] = field(default_factory=list, repr=False)

    def realized_paper_params(self) -> int:
        """The paper count measured on the inserted modules (must equal counts.paper_params)."""
        extras = active_extras(self.variant)
        backbone = _backbone_params(self.model)
        if any(k.trains_everything for k in extras):
            return sum(k.realized_paper(self.model, backbone) for k in extras)
        # every inserted module that stores paper parameters says how many (`paper_params()`)
        total = sum(m.paper_params() for m in self.model.modules() if callable(getattr(m, "paper_params", None)))
        total += sum(k.realized_paper(self.model, backbone) for k in extras)
        return total

    def realized_trainable_params(self) -> int:
        """requires-grad parameters, task head excluded (must equal counts.trainable_params)."""
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad) - self.head_params

    def merge_lora(self) -> None:
        """Fold every LoRA's update into the base weights (W + s·BA, Hu et al. 2022 §4.1; DoRA,
        VeRA, PiSSA / OLoRA their own W' − W); afterwards the LoRA hooks are skipped. All or none:
        raises UnipetlError when a LoRA is gated / learned-scale (its update depends on the input),
        or shares a projection with an output-scaled (IA)³ vector (its hook acts first and would
        scale the folded update) or, for DoRA, with anything else — folding it alone there would
        change the function; `merge` folds what it can exactly."""
        loras = [m for m in self.model.modules() if isinstance(m, Lora) and not m.merged]
        for lora in loras:
            if not lora.mergeable:
                raise UnipetlError(f"merge_lora: composition {lora.spec.composition!r} LoRA depends on the input or a learned scale and cannot be merged.")
        on = _participants(self.model)
        for lora in loras:
            for mod, _ in lora.targets.values():
                others = [p for p in on[id(mod)][1] if p is not lora]
                # an output-scaled (IA)³ hook fires first and would scale the folded update too; DoRA reads W
                if any(not isinstance(p, Lora) and not p.on_input for p in others) or (others and (lora.reads_weight or any(isinstance(p, Lora) and p.reads_weight for p in others))):
                    raise UnipetlError(f"merge_lora: a {lora.spec.kind} module shares projection {type(mod).__name__} with "
                                       f"{', '.join(sorted({type(p).__name__ for p in others}))}; folding it alone would change the function — use Realized.merge().")
        for lora in loras:
            lora.merge()
        self._drop_folded_hooks()

    def _drop_folded_hooks(self) -> None:
        """Remove the projection hooks whose every LoRA is folded: a folded model then makes no
        call per pass that a plain one does not (the latency of a fully folded variant is the
        backbone's). The removal acts on this model's hook tables only (a deep copy's handles
        point at the copy's)."""
        for hook in self.lora_hooks:
            if hook.handle is not None and all(lora.merged for lora, *_ in hook.entries):
                hook.handle.remove()
                hook.handle = None

    def merge(self) -> int:
        """Fold every inserted module whose update is a fixed linear map of the weights into them,
        exactly (`merge_plan`): add / scaled LoRA and its variants, and (IA)³ vectors (Liu et al.
        2022 §3.3). What stays a hook (`merge_plan`): gated / learned-scale LoRA, an input-scaled
        vector beside one of those, and everything on a projection DoRA shares; adapters,
        prefixes and prompts are not folded and block nothing. Returns how many modules were folded
        (LoRA modules + (IA)³ vectors). The realized model computes the same function afterwards
        (to float rounding); it is for inference (latency, export)."""
        loras, vectors = merge_plan(self.model)
        for mod, vec in vectors:  # output-scaled first: their hooks fire before the LoRA hook of the same projection
            if not vec.on_input:
                vec.merge_into(mod)
        for lora in loras:
            lora.merge()
        for mod, vec in vectors:  # input-scaled last: W (l ⊙ x) + ΔW (l ⊙ x) = (W + ΔW) diag(l) x
            if vec.on_input:
                vec.merge_into(mod)
        self._drop_folded_hooks()
        return len(loras) + len(vectors)


def _participants(model: nn.Module) -> dict[int, tuple[nn.Module, list[Any]]]:
    """Per projection (by id): the module and the unmerged inserted modules that act on it — LoRA
    modules (through the projection hook) and (IA)³ vectors (`petl_ia3`)."""
    on: dict[int, tuple[nn.Module, list[Any]]] = {}
    for lora in (m for m in model.modules() if isinstance(m, Lora) and not m.merged):
        for mod, _ in lora.targets.values():
            parts = on.setdefault(id(mod), (mod, []))[1]
            if lora not in parts:
                parts.append(lora)
    for mod in model.modules():
        for vec in getattr(mod, "petl_ia3", ()):
            if not vec.merged:
                on.setdefault(id(mod), (mod, []))[1].append(vec)
    return on


def merge_plan(model: nn.Module) -> tuple[list[Lora], list[tuple[nn.Module, Any]]]:
    """Which inserted modules `Realized.merge` folds: (LoRA modules, (projection, (IA)³ vector)).

    Exactness rests on the hook order of `_insert_modules`: (IA)³ hooks are registered by the
    kind's `insert`, before the projection's LoRA hook, so on one projection
    y = l_out ⊙ (W (l_in ⊙ x) + b) + Σ_j g_j · ΔW_j (l_in ⊙ x), each LoRA reading the (scaled)
    input and its gate, never the output. Hence:

    - a projection carrying DoRA beside anything else is left whole (DoRA reads W and the output);
    - an output-scaled vector folds (diag(l_out) on W and b: it acts first);
    - an add / scaled LoRA folds when none of its projections is left whole (additive updates
      commute, also with a gated one that stays);
    - an input-scaled vector folds when every LoRA on its projection folds (a LoRA left as a hook
      must keep reading l_in ⊙ x); `Realized.merge` folds it last, W ← (W + ΔW) diag(l_in).

    Gated / learned-scale LoRA never fold. tests/test_merge.py pins the equivalence in float64
    to 1e-10 on eight families (encoders, GPT-2's fused Conv1D, gated FFNs, encoder-decoders)."""
    on = _participants(model)
    whole = {k for k, (_, parts) in on.items() if len(parts) > 1 and any(isinstance(p, Lora) and p.reads_weight for p in parts)}
    loras = list(dict.fromkeys(p for _, parts in on.values() for p in parts if isinstance(p, Lora)))
    folded = [lora for lora in loras if lora.mergeable and not any(id(m) in whole for m, _ in lora.targets.values())]
    done = set(map(id, folded))
    vectors = [(mod, p) for k, (mod, parts) in on.items() if k not in whole for p in parts if not isinstance(p, Lora)
               and (not p.on_input or all(id(q) in done for q in parts if isinstance(q, Lora)))]
    return folded, vectors


def _backbone_params(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Named backbone parameters (not the head, not inserted modules)."""
    base = families.backbone(model)
    head = {id(p) for p in _head_params(model)}
    return [(n, p) for n, p in base.named_parameters() if id(p) not in head and "petl" not in n]


def _head_params(model: nn.Module, include_lm_head: bool = False) -> list[nn.Parameter]:
    """Parameters of a new task head: outside the backbone, and not a pretrained LM head."""
    base = families.backbone(model)
    if base is model:
        return []
    inside = {id(p) for p in base.parameters()}
    # a language-model head (tied or not) is pretrained, like the embeddings: it stays frozen;
    # only a newly initialized task head (classifier / regressor) trains
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if out is not None and not include_lm_head:  # full fine-tuning trains an untied LM head too
        inside |= {id(p) for p in out.parameters()}
    return [p for p in model.parameters() if id(p) not in inside]


def apply_variant(model: nn.Module, variant: Variant) -> Realized:
    """Freeze the backbone, insert the variant's modules, leave the head trainable."""
    if getattr(model, "_unipetl_realized", None) is not None:
        raise UnipetlError("model already has a variant applied; start from a fresh model.")
    if not isinstance(variant, Variant):
        raise UnipetlError(f"`variant` must be a Variant, got {type(variant).__name__}.")
    # the backbone as instantiated (e.g. RoBERTa's classifier drops the pooler AutoModel has):
    # counts and fractions refer to the parameters this model really has
    backbone = _backbone_params(model)
    shape = shape_from_config(
        model.config,
        base_params=sum(p.numel() for _, p in backbone),
        bias_params=sum(p.numel() for n, p in backbone if n.endswith(".bias")),
    )
    counts = count(variant, shape)  # validates sites / layers / stacks before anything changes
    extras = active_extras(variant)  # whole-model kinds: spaces/kind_prompt.py, kind_bitfit.py, kind_full.py
    everything = any(k.trains_everything for k in extras)
    head = _head_params(model, include_lm_head=everything)
    head_ids = {id(p) for p in head}
    for p in model.parameters():
        p.requires_grad_(everything or id(p) in head_ids)
    realized = Realized(model, variant, shape, counts, sum(p.numel() for p in head))
    host = {id(m) for m in model.modules()}
    for k in extras:
        k.prepare(model, variant, realized)
    _insert_modules(model, variant, shape, realized)
    for k in extras:
        k.finish(model, variant, realized)
    for m in model.modules():  # new modules start in train mode: they follow the host's (dropout off in an eval-mode model)
        if id(m) not in host:
            m.train(model.training)
    model._unipetl_realized = realized  # type: ignore[assignment]
    logger.info("applied %s: paper %d, trainable %d (+ head %d)", variant.describe(), counts.paper_params, counts.trainable_params, realized.head_params)
    return realized


class InsertContext:
    """What a kind's `insert` (spaces/kind_<name>.py) builds on: the model and its shape, one
    `SiteHub` per sublayer output, and the table of projection hooks (LoRA-like kinds)."""

    def __init__(self, model: nn.Module, shape: ModelShape, handles: list[Any]) -> None:
        self.model, self.shape, self.d = model, shape, shape.d_model
        self.realized_handles = handles  # hooks a kind registers itself (removable with the variant)
        self.stacks = {s.name: s for s in shape.stacks}
        self.base = families.backbone(model)
        self.hubs: dict[int, tuple[SiteHub, families.SublayerRefs]] = {}
        self.projection_hooks: dict[int, tuple[nn.Module, list[tuple[Any, str, slice | None, SiteHub | None]]]] = {}
        self.uses_slots = False  # a kind added head-wise slots: attention must use them

    def refs(self, inst: SiteInstance) -> families.SublayerRefs:
        return families.sublayer(self.model, inst.stack, inst.sublayer, inst.layer)

    def hub(self, refs: families.SublayerRefs) -> SiteHub:
        """The sublayer's hub (created on first use): sequential / parallel modules and x."""
        if id(refs.out) not in self.hubs:
            hub = SiteHub()
            refs.out.petl = hub
            self.hubs[id(refs.out)] = (hub, refs)
        return self.hubs[id(refs.out)][0]

    def hook_projection(self, mod: nn.Module, entry: tuple[Any, str, slice | None, SiteHub | None]) -> None:
        """Add (module, factor key, column slice, gate hub) to the forward hook of projection `mod`."""
        self.projection_hooks.setdefault(id(mod), (mod, []))[1].append(entry)


def _insert_modules(model: nn.Module, variant: Variant, shape: ModelShape, realized: Realized) -> None:
    dev_dtype = next(model.parameters())
    ctx = InsertContext(model, shape, realized.handles)
    for mi, spec in enumerate(variant.modules):
        get_kind(spec.kind).insert(ctx, spec, mi, site_instances(spec, shape, f"modules[{mi}]"))
    for hub, _refs in ctx.hubs.values():
        hub.to(device=dev_dtype.device, dtype=dev_dtype.dtype)
    # order matters: capture x first, then LoRA on projections, then the sublayer-output hook
    for hub, refs in ctx.hubs.values():
        realized.handles.append(refs.reads.register_forward_pre_hook(hub.capture))
    for mod, entries in ctx.projection_hooks.values():
        hook = LoraHook(entries)
        hook.handle = mod.register_forward_hook(hook)
        realized.handles.append(hook.handle)
        realized.lora_hooks.append(hook)
    for hub, refs in ctx.hubs.values():  # also where x is dropped again, so every hub gets it
        realized.handles.append(refs.out.register_forward_hook(hub.apply))
    if ctx.uses_slots:
        attention.use_slots(model)
        # slots have no position: on a left-padded decoder-only batch, tokens must keep theirs
        realized.handles += families.install_positions(model)
    for n, p in model.named_parameters():
        if "petl" in n:
            p.requires_grad_(True)
            if p.dtype != dev_dtype.dtype or p.device != dev_dtype.device:
                p.data = p.data.to(device=dev_dtype.device, dtype=dev_dtype.dtype)


def variant_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the trainable tensors (the variant's modules and the task head), by parameter name."""
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def load_variant_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Copy a `variant_state_dict` into a model realized with the same variant (strict)."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    unexpected = sorted(set(state_dict) - set(params))
    missing = sorted(set(params) - set(state_dict))
    if unexpected:
        raise UnipetlError(f"variant state dict has a tensor the model does not train: {unexpected[0]!r} ({len(unexpected)} in all).")
    if missing:
        raise UnipetlError(f"variant state dict lacks the trainable tensor {missing[0]!r} ({len(missing)} in all).")
    for n, t in state_dict.items():
        if tuple(t.shape) != tuple(params[n].shape):
            raise UnipetlError(f"variant state dict tensor {n!r} has shape {tuple(t.shape)}, the model expects {tuple(params[n].shape)}.")
    with torch.no_grad():
        for n, t in state_dict.items():
            params[n].copy_(t.to(params[n].dtype))
