"""Kind `adapter`: a bottleneck Δh = f(x·W_down)·W_up at a sublayer output (He et al. 2022, §3, Eq. 4-10).

Sequential (Houlsby et al. 2019, Pfeiffer et al. 2021) reads the sublayer output h; parallel
(He et al. §4.1) reads the sublayer input x. Composition: add, scaled (fixed s), learned scale
or a sigmoid gate read from x (UniPELT, Mao et al. 2022). W_up = 0 at init: always a no-op.

Counts per sublayer instance (DESIGN.md §2): paper 2·r·d (W_down d×r, W_up r×d); trainable
adds the biases r + d, a LayerNorm 2·d, a gate d + 1, a learned scale 1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from unipetl.spaces.kinds import ModuleKind, SearchMethod, comp_word, register_kind, scale_suffix

if TYPE_CHECKING:  # pragma: no cover
    from unipetl.spaces.accounting import SiteInstance
    from unipetl.spaces.shapes import StackShape
    from unipetl.spaces.variant import Module


class AdapterKind(ModuleKind):
    name = "adapter"
    summary = "bottleneck adapter at the attention / FFN output (sequential or parallel)"
    insertion_varies = True

    def describe(self, m: Module) -> str:
        fn = "" if m.function == "relu" else f" ({m.function})"
        return f"{comp_word(m)}{m.insertion} adapter{fn} r={m.size}{scale_suffix(m)}"

    def instance_counts(self, m: Module, st: StackShape, d: int) -> tuple[int, int]:
        extra = m.size + d + (2 * d if m.layernorm else 0)  # down / up biases, LayerNorm
        return 2 * m.size * d, extra

    def examples(self) -> tuple[Module, ...]:
        from unipetl.spaces.variant import Module

        return (Module(site="ffn", kind="adapter", size=4, insertion="parallel", composition="scaled", scale=2.0),
                Module(site="attn", kind="adapter", size=3, insertion="sequential", composition="gated", layernorm=True, function="gelu"))

    def search_methods(self) -> tuple[SearchMethod, ...]:
        return (
            SearchMethod("sa", self.name, ("attn", "ffn"), samples_function=True, fixed=(("insertion", "sequential"),)),
            SearchMethod("pa", self.name, ("attn", "ffn"), samples_function=True, fixed=(("insertion", "parallel"),)),
        )

    def insert(self, ctx: Any, m: Module, index: int, insts: list[SiteInstance]) -> None:
        from unipetl.spaces.layers import Adapter

        for inst in insts:
            hub = ctx.hub(ctx.refs(inst))
            (hub.sequential if m.insertion == "sequential" else hub.parallel).append(Adapter(m, ctx.d))


register_kind(AdapterKind())
