"""Kind `dora`: weight-decomposed LoRA (Liu et al. 2024, "DoRA", arXiv 2402.09353, §4.1, Eq. 5).

W' = m ⊙ (W + s·BA) / ‖W + s·BA‖_c: LoRA's update re-normalised per output feature (a row of
the (d_out, d_in) nn.Linear weight; the paper's "column" of W ∈ R^{d×k}), with a learned
magnitude m ∈ R^{d_out} initialised to ‖W‖_c. The norm is treated as a constant in the
backward pass (§4.3, as PEFT does). In the four dimensions (DESIGN.md §8): identity (low rank),
parallel, weight matrices, a new composition — magnitude-normalised; B = 0 and m = ‖W‖_c make
it an exact no-op at init. Still mergeable: W ← m ⊙ (W + s·BA) / ‖W + s·BA‖_c.

Output: h = W x + b + (m/‖·‖ − 1) ⊙ W x + (m/‖·‖) ⊙ s·B A x — the same as W' x + b.
Counts per sublayer instance: paper = trainable = LoRA's Σ_targets r·(d_in + d_out) plus the
magnitude Σ_targets d_out (it is stored per task, so the paper count includes it). RoBERTa-base
`dora:r=8` (q, v): 12·2·(8·1536 + 768) = 313,344, PEFT's printed trainable count (head aside).
PEFT export: `LoraConfig(use_dora=True)` with `lora_magnitude_vector` per module.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from unipetl.spaces.kind_lora import LoraKind, lora_dims
from unipetl.spaces.kinds import ATTN_SITES, KindPreset, SearchMethod, register_kind, scale_suffix
from unipetl.spaces.registry import UnipetlError

if TYPE_CHECKING:  # pragma: no cover
    from unipetl.spaces.shapes import StackShape
    from unipetl.spaces.variant import Module, Variant


class DoraKind(LoraKind):
    name = "dora"
    summary = "weight-decomposed LoRA: W' = m ⊙ (W + s·BA) / ‖W + s·BA‖ per output feature"

    def validate(self, m: Module) -> None:
        super().validate(m)
        if m.composition not in ("add", "scaled"):
            raise UnipetlError(f"`composition` of DoRA is 'scaled' or 'add' (its magnitude is the learned part), got {m.composition!r}.")

    def describe(self, m: Module) -> str:
        return f"DoRA r={m.size} [{','.join(m.targets)}]{scale_suffix(m)}"

    def signature(self, m: Module) -> tuple[str, ...]:
        return ("attn" if m.site in ATTN_SITES else "ffn", m.kind, m.function, m.insertion, "magnitude")

    def instance_counts(self, m: Module, st: StackShape, d: int) -> tuple[int, int]:
        return sum(m.size * (din + dout) + dout for t in m.targets for din, dout in lora_dims(t, st, d)), 0

    def build(self, m: Module, d: int, dims: dict[str, list[tuple[int, int]]], targets: dict[str, tuple[Any, slice | None]]) -> Any:
        dora = _torch_classes()(m, d, dims)
        dora.targets = targets
        dora.init_magnitude()
        return dora

    def examples(self) -> tuple[Module, ...]:
        from unipetl.spaces.variant import Module

        return (Module(site="attn", kind="dora", size=3, function="identity", composition="scaled", scale=2.0, targets=("q", "v"), init="lora"),
                Module(site="ffn", kind="dora", size=2, function="identity", composition="add", init="lora"))

    def search_methods(self) -> tuple[SearchMethod, ...]:
        return (SearchMethod("dora", self.name, ("attn", "ffn"), compositions=("add", "scaled"), fixed=(("function", "identity"), ("init", "lora")), default=False),)

    def presets(self) -> tuple[KindPreset, ...]:
        return (KindPreset("dora", "DoRA on W_q, W_v: LoRA re-normalised per output feature with a learned magnitude (Liu et al. 2024)", "r", _dora, display="DoRA"),)

    # --- PEFT --------------------------------------------------------------------------------
    def check_peft(self, mods: tuple[Module, ...], realized: Any) -> bool:
        super().check_peft(mods, realized)
        seen: set[int] = set()
        for dora in (m for m in realized.model.modules() if isinstance(m, _torch_classes())):
            for mod, slc in dora.targets.values():
                if slc is not None or id(mod) in seen:
                    raise UnipetlError("export --format peft: DoRA on a slice of a fused projection (GPT-2's c_attn), or twice on one projection, "
                                       "has no PEFT equivalent (PEFT normalises the whole weight once).")
                seen.add(id(mod))
        return True

    def export_peft(self, realized: Any, config: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """LoRA's export plus `use_dora` and each module's `lora_magnitude_vector` (d_out,)."""
        tensors, prefix = super().export_peft(realized, config)
        paths = {id(m): n for n, m in realized.model.named_modules()}
        for dora in (m for m in realized.model.modules() if isinstance(m, _torch_classes())):
            for key, (mod, _) in dora.targets.items():
                tensors[f"base_model.model.{paths[id(mod)]}.lora_magnitude_vector"] = dora.magnitude[key].detach()
        config.update(use_dora=True)
        return tensors, prefix


@functools.cache
def _torch_classes() -> Any:
    """The DoRA nn.Module (a `layers.Lora` subclass), defined on first use: this file is read
    without torch (specs, counts, reports)."""
    import torch
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    from unipetl.spaces.layers import Lora

    def rows(mod: nn.Module, slc: slice | None) -> torch.Tensor:
        """The base weight of a projection as (d_out, d_in), rows `slc` of a fused one."""
        w = mod.weight.T if isinstance(mod, Conv1D) else mod.weight
        return w if slc is None else w[slc]

    class Dora(Lora):
        """LoRA factors plus a magnitude m (d_out,) per target; `targets` must be set before
        `init_magnitude` (m = ‖W‖ per output feature)."""

        reads_weight = True  # the norm reads W and `apply` rescales the projection's whole output

        def init_magnitude(self) -> None:
            with torch.no_grad():
                self.magnitude = nn.ParameterDict({k: nn.Parameter(torch.linalg.norm(rows(mod, slc).float(), dim=1).to(mod.weight.dtype))
                                                   for k, (mod, slc) in self.targets.items()})

        def paper_params(self) -> int:
            return super().paper_params() + sum(p.numel() for p in self.magnitude.values())

        def _norm_scale(self, key: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
            mod, slc = self.targets[key]
            w = rows(mod, slc).to(dtype)
            f = self.factors[key]
            norm = torch.linalg.norm(w + self.s * (f.lora_B.weight @ f.lora_A.weight).detach().to(dtype), dim=1).detach()  # DoRA §4.3
            return w, self.magnitude[key].to(dtype) / norm

        def apply(self, key: str, inp: torch.Tensor, x: torch.Tensor | None, output: torch.Tensor, slc: slice | None) -> torch.Tensor:
            mod, _ = self.targets[key]
            _, scale = self._norm_scale(key, output.dtype)
            base = output if slc is None else output[..., slc]
            bias = getattr(mod, "bias", None)
            plain = base if bias is None else base - (bias if slc is None else bias[slc]).to(base.dtype)
            new = base + (scale - 1) * plain + scale * self.factors[key](inp).to(base.dtype) * self.s
            if slc is None:
                return new
            return torch.cat([output[..., : slc.start], new, output[..., slc.stop :]], dim=-1)

        def delta_weight_for(self, key: str) -> torch.Tensor:
            """W' − W for `merge_lora`: m ⊙ (W + s·BA) / ‖W + s·BA‖ − W, (out, in)."""
            w, scale = self._norm_scale(key, self.magnitude[key].dtype)
            return scale[:, None] * (w + self.factors[key].delta_weight() * self.s) - w

    return Dora


def _dora(r: int = 8, s: float = 2.0) -> Variant:
    from unipetl.spaces.variant import Module, Variant

    if s == "learned":
        raise UnipetlError("preset key `s` of 'dora' is a fixed scale (the magnitude is DoRA's learned part), got 'learned'.")

    return Variant(modules=(Module(site="attn", kind="dora", size=r, function="identity", composition="scaled", scale=float(s), targets=("q", "v"), init="lora"),))


register_kind(DoraKind())
