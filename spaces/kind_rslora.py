"""Kind `rslora`: rank-stabilized LoRA, s = α / √r (Kalajdzievski 2023, arXiv 2312.03732, Eq. 4, Thm 3.2).

LoRA's update s·BA with the scale divided by √r instead of r, so that learning does not slow
down as the rank grows. In the four dimensions (DESIGN.md §8): identity, parallel, weight
matrices, scaled add. The spec's `scale` holds α (not s): s = scale / √size. B = 0 at init:
a no-op. Counts are LoRA's (paper Σ_targets r·(d_in + d_out); DESIGN.md §2). PEFT:
`LoraConfig(use_rslora=True, lora_alpha=α)`; its printed trainable count equals our trainable
count (+ the task head).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from unipetl.spaces.kind_lora import LoraKind
from unipetl.spaces.kinds import KindPreset, SearchMethod, register_kind
from unipetl.spaces.registry import UnipetlError

if TYPE_CHECKING:  # pragma: no cover
    from unipetl.spaces.variant import Module, Variant


class RsLoraKind(LoraKind):
    name = "rslora"
    summary = "rank-stabilized LoRA: s·BA with s = α / √r"
    peft_rslora = True

    def validate(self, m: Module) -> None:
        super().validate(m)
        if m.composition != "scaled":
            raise UnipetlError(f"`composition` of rsLoRA is 'scaled' (s = α / √r, α in `scale`), got {m.composition!r}.")

    def lora_scale(self, m: Module) -> float:
        return m.scale / math.sqrt(m.size)

    def peft_alpha(self, r: int, s: float) -> float:
        return s * math.sqrt(r)  # PEFT with use_rslora: scaling = lora_alpha / √r

    def describe(self, m: Module) -> str:
        return f"rsLoRA r={m.size} [{','.join(m.targets)}] alpha={m.scale:g}"

    def examples(self) -> tuple[Module, ...]:
        from unipetl.spaces.variant import Module

        return (Module(site="attn", kind="rslora", size=4, function="identity", composition="scaled", scale=8.0, targets=("q", "v"), init="lora"),)

    def search_methods(self) -> tuple[SearchMethod, ...]:
        fixed = (("function", "identity"), ("init", "lora"), ("composition", "scaled"), ("scale", 16.0))
        return (SearchMethod("rslora", self.name, ("attn", "ffn"), compositions=(), fixed=fixed, default=False),)

    def presets(self) -> tuple[KindPreset, ...]:
        return (KindPreset("rslora", "rank-stabilized LoRA on W_q, W_v: s = alpha / sqrt(r) (Kalajdzievski 2023)", "r", _rslora, display="rsLoRA"),)


def _rslora(r: int = 8, a: int = 16) -> Variant:
    from unipetl.spaces.variant import Module, Variant

    return Variant(modules=(Module(site="attn", kind="rslora", size=r, function="identity", composition="scaled", scale=float(a), targets=("q", "v"), init="lora"),))


register_kind(RsLoraKind())
