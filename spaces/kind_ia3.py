"""Kind `ia3`: (IA)³, learned per-channel rescaling of keys, values and the FFN intermediate.

Liu et al. 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context
Learning" (arXiv 2205.05638), §3.3: k ← l_k ⊙ (W_k x), v ← l_v ⊙ (W_v x), and the FFN becomes
(l_ff ⊙ γ(W_1 x)) W_2. In the four dimensions (DESIGN.md §8): functional form identity with no
projection, sequential insertion, representation keys / values / FFN intermediate, scaled
composition with a learned vector (h ← l ⊙ h). l = 1 at init: an exact no-op.

Spec: `targets` among q k v o (the projection's output is scaled) at attention, w1 (output) and
w2 (its *input*, the FFN intermediate) at the FFN; defaults (k, v) and (w2). `size` is always 1
(one vector per target), `function` identity, `insertion` sequential, `composition` scaled.

Counts per sublayer instance: paper = trainable = Σ_targets the scaled width — d_out of q k v o
w1 (a gated FFN has two W_1), d_in = d_ffn of w2. RoBERTa-base: 12·(768 + 768 + 3072) = 55,296;
BART-large: 36·2·1024 + 24·4096 = 172,032. These are PEFT's printed trainable counts (`IA3Config`
with target_modules k, v, fc2 and feedforward_modules fc2), the task head aside.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from unipetl.spaces.kind_lora import lora_dims
from unipetl.spaces.kinds import ATTN_SITES, KindPreset, ModuleKind, SearchMethod, register_kind
from unipetl.spaces.registry import UnipetlError

if TYPE_CHECKING:  # pragma: no cover
    from unipetl.spaces.accounting import SiteInstance
    from unipetl.spaces.shapes import StackShape
    from unipetl.spaces.variant import Module, Variant

ATTN_TARGETS = ("q", "k", "v", "o")
FFN_TARGETS = ("w1", "w2")
INPUT_SCALED = ("w2",)  # PEFT's `feedforward_modules`: the vector scales the projection's input


class Ia3Kind(ModuleKind):
    name = "ia3"
    summary = "(IA)^3: learned per-channel vectors scaling keys, values and the FFN intermediate"

    def validate(self, m: Module) -> None:
        for fld, want in (("function", "identity"), ("insertion", "sequential"), ("composition", "scaled")):
            if getattr(m, fld) != want:
                raise UnipetlError(f"`{fld}` of (IA)^3 is {want!r}, got {getattr(m, fld)!r}.")
        if m.size != 1:
            raise UnipetlError(f"`size` of (IA)^3 is 1 (one vector per target), got {m.size!r}.")
        if m.scale != 1.0:
            raise UnipetlError(f"`scale` of (IA)^3 is 1 (the learned vector is the scale), got {m.scale!r}.")
        if m.reparam:
            raise UnipetlError(f"`reparam` (prefix MLP) is for kind 'heads' only, got kind {m.kind!r}.")
        attn = m.site in ATTN_SITES
        allowed = ATTN_TARGETS if attn else FFN_TARGETS
        if not m.targets:
            object.__setattr__(m, "targets", ("k", "v") if attn else ("w2",))
        for t in m.targets:
            if t not in allowed:
                raise UnipetlError(f"`targets` at site {m.site!r} must be among {list(allowed)}, got {t!r}.")

    def describe(self, m: Module) -> str:
        return f"(IA)^3 [{','.join(m.targets)}]"

    def signature(self, m: Module) -> tuple[str, ...]:
        return ("attn" if m.site in ATTN_SITES else "ffn", m.kind, m.function, m.insertion, "vector")

    def instance_counts(self, m: Module, st: StackShape, d: int) -> tuple[int, int]:
        return sum(din if t in INPUT_SCALED else dout for t in m.targets for din, dout in lora_dims(t, st, d)), 0

    def examples(self) -> tuple[Module, ...]:
        return _ia3().modules

    def search_methods(self) -> tuple[SearchMethod, ...]:
        fixed = (("function", "identity"), ("insertion", "sequential"), ("composition", "scaled"), ("scale", 1.0))
        return (SearchMethod("ia3", self.name, ("attn", "ffn"), compositions=(), fixed=fixed, default=False, sized=False),)

    def presets(self) -> tuple[KindPreset, ...]:
        return (KindPreset("ia3", "(IA)^3: learned vectors scaling keys, values and the FFN intermediate (Liu et al. 2022)", None, _ia3, display="(IA)³"),)

    def insert(self, ctx: Any, m: Module, index: int, insts: list[SiteInstance]) -> None:
        from torch import nn

        from unipetl.spaces.realize import projection_dims

        vector_cls = _torch_classes()
        for inst in insts:
            refs = ctx.refs(inst)
            for t in m.targets:
                for mod, slc in refs.proj[t]:
                    d_in, d_out = projection_dims(mod, slc)
                    vec = vector_cls(d_in if t in INPUT_SCALED else d_out, slc, t in INPUT_SCALED)
                    if not hasattr(mod, "petl_ia3"):
                        mod.petl_ia3 = nn.ModuleList()
                    mod.petl_ia3.append(vec)
                    # the handle rides on the vector (a deep copy remaps it to the copy's hook table) so a fold can drop the hook
                    vec.hook_handle = mod.register_forward_pre_hook(vec.scale_input) if vec.on_input else mod.register_forward_hook(vec.scale_output)
                    ctx.realized_handles.append(vec.hook_handle)

    # --- PEFT --------------------------------------------------------------------------------
    def peft_method(self, m: Module) -> str | None:
        return "ia3"

    def check_peft(self, mods: tuple[Module, ...], realized: Any) -> bool:
        vector_cls = _torch_classes()
        if any(v.slice is not None for v in realized.model.modules() if isinstance(v, vector_cls)):
            raise UnipetlError("export --format peft: (IA)^3 on a slice of a fused projection (GPT-2's c_attn) scales only part of it; PEFT scales the whole.")
        return True

    def export_peft(self, realized: Any, config: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """IA3Config fields; tensors `base_model.model.<path>.ia3_l` shaped as PEFT's:
        (1, d_in) for feedforward (input-scaled) modules, (d_out, 1) otherwise."""
        from transformers.pytorch_utils import Conv1D

        vector_cls = _torch_classes()
        tensors: dict[str, Any] = {}
        targets, ff, conv = [], [], False
        for path, mod in realized.model.named_modules():
            vecs = [v for v in getattr(mod, "petl_ia3", []) if isinstance(v, vector_cls)]
            if not vecs:
                continue
            if len(vecs) > 1:
                raise UnipetlError(f"export --format peft: {path!r} carries {len(vecs)} (IA)^3 vectors; PEFT holds one per module.")
            v = vecs[0]
            conv |= isinstance(mod, Conv1D)
            targets.append(path)
            if v.on_input:
                ff.append(path)
            tensors[f"base_model.model.{path}.ia3_l"] = v.petl_l.detach().reshape((1, -1) if v.on_input else (-1, 1))
        config.update(peft_type="IA3", target_modules=targets, feedforward_modules=ff, fan_in_fan_out=conv, init_ia3_weights=True)
        return tensors, "base_model.model."


@functools.cache
def _torch_classes() -> Any:
    """The nn.Module of one (IA)^3 vector, defined on first use: this file is read without torch
    (specs, counts, reports) and imports it only when a model is built."""
    import torch
    from torch import nn

    class Ia3Vector(nn.Module):
        """l (width,) = 1 at init, scaling a projection's output (or its input, `on_input`);
        `slice`: the output columns of a fused projection this vector scales."""

        lr_kind = "ia3"  # its own central rate (spaces/lr.py): at the adapters' 2e-3 it stays at chance

        def __init__(self, width: int, slc: slice | None, on_input: bool) -> None:
            super().__init__()
            self.petl_l = nn.Parameter(torch.ones(width))
            self.slice, self.on_input = slc, on_input
            self.merged = False

        def merge_into(self, mod: nn.Module) -> None:
            """Fold l into the projection `mod` it scales, after which its hook passes through:
            output-scaled y = l ⊙ (W x + b) → W ← diag(l) W, b ← l ⊙ b (rows `slice` of a fused
            projection); input-scaled y = W (l ⊙ x) + b → W ← W diag(l). nn.Linear stores W as
            (out, in), GPT-2's Conv1D as (in, out). Liu et al. 2022 §3.3: l ⊙ W x = (l ⊙ W) x, so
            a single-task model runs at the base model's cost. Exact only as `realize.merge_plan`
            orders it."""
            from transformers.pytorch_utils import Conv1D

            conv = isinstance(mod, Conv1D)
            with torch.no_grad():
                lv = self.petl_l.to(mod.weight.dtype)
                if self.on_input:
                    mod.weight.mul_(lv[:, None] if conv else lv[None, :])
                else:
                    s = self.slice if self.slice is not None else slice(None)
                    if conv:
                        mod.weight[:, s] *= lv[None, :]
                    else:
                        mod.weight[s, :] *= lv[:, None]
                    if getattr(mod, "bias", None) is not None:
                        mod.bias[s] *= lv
            self.merged = True
            handle = getattr(self, "hook_handle", None)
            if handle is not None:  # a folded vector's hook would only return at once: drop it (no call per pass)
                handle.remove()

        def paper_params(self) -> int:
            return self.petl_l.numel()

        def scale_input(self, _module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
            if self.merged:
                return None
            return (args[0] * self.petl_l.to(args[0].dtype), *args[1:])

        def scale_output(self, _module: nn.Module, _args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor | None:
            if self.merged:
                return None
            lv = self.petl_l.to(output.dtype)
            if self.slice is None:
                return output * lv
            s = self.slice
            return torch.cat([output[..., : s.start], output[..., s] * lv, output[..., s.stop :]], dim=-1)

    return Ia3Vector


def _ia3() -> Variant:
    from unipetl.spaces.variant import Module, Variant

    kw: dict[str, Any] = {"kind": "ia3", "size": 1, "function": "identity", "insertion": "sequential", "composition": "scaled"}
    return Variant(modules=(Module(site="attn", targets=("k", "v"), **kw), Module(site="ffn", targets=("w2",), **kw)))


register_kind(Ia3Kind())
