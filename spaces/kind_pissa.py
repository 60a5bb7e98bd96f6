"""Kind `pissa`: LoRA started on the principal singular triplets of W (Meng et al. 2024, "PiSSA", arXiv 2404.02948, §3).

LoRA's update s·BA, but A and B start at A₀ = √(S_r/s)·V_rᵀ, B₀ = U_r·√(S_r/s) from the SVD
W = U S Vᵀ of the target's (d_out, d_in) weight (fp64 here; rows `slc` of a fused one), and the
frozen base becomes the residual W_res = W − s·B₀A₀ = W − U_r S_r V_rᵀ. So the factors are
not zero at init (B₀ ≠ 0): the effective base weight is the residual W − s·B₀A₀, and training
moves the principal part. OLoRA (`kind_olora.py`) is the same with a QR instead of the SVD.

The backbone's weights are never changed: the module keeps A₀, B₀ as frozen buffers (clones of
the factors' initial values) and computes W x + b − s·B₀A₀ x + s·B A x, which is
W_res x + b + s·B A x, PEFT's form. Hence the stored backbone stays pristine (weights
fingerprint, the workers' kept backbone, load onto a fresh base), and — because A = A₀, B = B₀
at init and both terms go through the same kernels — a fresh module changes no output bit: a
no-op at init in outputs (`claims_noop`), though not in its factors. Dropout applies to the
trained path only, as in PEFT.

A₀, B₀ are recomputed at realization (also after `load_variant`) rather than saved: they are a
function of W alone — B₀A₀ does not depend on the SVD's / QR's sign choices — so the saved file
is LoRA's size and counts are LoRA's: paper = trainable = Σ_targets r·(d_in + d_out). Rank
needs r ≤ min(d_in, d_out) of every target. Compositions: add (s = 1) or scaled; a gate or a
learned scale would make the split of W depend on the input / on training and is refused.
Merge: W ← W + s·(BA − B₀A₀).

PEFT: equal to `LoraConfig(init_lora_weights="pissa")` with lora_alpha = s·r on unfused
projections (tests/test_pissa_olora.py). Export: a plain LoRA of rank 2r on the *original* base,
A' = [A; A₀], B' = [B, −B₀], lora_alpha = s·2r (PEFT's own "convert PiSSA to LoRA" form), which
`PeftModel.from_pretrained` loads onto the untouched base. A slice of a fused projection
(GPT-2's c_attn) decomposes only its rows here, while PEFT would decompose the whole fused
matrix: refused for export.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, ClassVar

from unipetl.spaces.kind_lora import LoraKind, _lora_tensors
from unipetl.spaces.kinds import KindPreset, SearchMethod, get_kind, register_kind, scale_suffix
from unipetl.spaces.registry import UnipetlError

if TYPE_CHECKING:  # pragma: no cover
    from unipetl.spaces.variant import Module, Variant


class PissaKind(LoraKind):
    name = "pissa"
    display: ClassVar[str] = "PiSSA"
    decomposition: ClassVar[str] = "SVD"
    summary = ("LoRA whose A, B start at the top-r SVD factors of W (Meng et al. 2024); not a no-op in its factors at init: "
               "the effective base weight is the residual W − s·B₀A₀ (outputs at init equal the base)")

    def validate(self, m: Module) -> None:
        super().validate(m)
        if m.composition not in ("add", "scaled"):
            raise UnipetlError(f"`composition` of {self.display} is 'scaled' or 'add' (s·B₀A₀ is split off W once), got {m.composition!r}.")

    def principal_factors(self, w: Any, r: int) -> tuple[Any, Any]:
        """(A₀ (r, d_in), B₀ (d_out, r)) with B₀A₀ the rank-r principal part of w (d_out, d_in), in
        fp64; `principal_parts` divides by the scale. PiSSA: √S_r·V_rᵀ and U_r·√S_r."""
        import torch

        u, sv, vh = torch.linalg.svd(w.detach().to(torch.float64), full_matrices=False)
        root = sv[:r].sqrt()
        return root[:, None] * vh[:r], u[:, :r] * root

    def principal_parts(self, w: Any, r: int, s: float) -> tuple[Any, Any]:
        """A₀, B₀ such that s·B₀A₀ is the part of w the factors take over. PiSSA divides S_r by s
        (both factors by √s, PEFT's `pissa_init`); OLoRA does not."""
        a0, b0 = self.principal_factors(w, r)
        return a0 / s**0.5, b0 / s**0.5

    def claims_noop(self, m: Module) -> bool:
        return True  # outputs: the −s·B₀A₀x and s·BAx terms cancel bit for bit at init

    def describe(self, m: Module) -> str:
        s = "s*" if m.composition == "scaled" else ""
        return f"{self.display} r={m.size} [{','.join(m.targets)}]{scale_suffix(m)} (A,B start at the {self.decomposition} of W, base W - {s}B0A0)"

    def examples(self) -> tuple[Module, ...]:
        from unipetl.spaces.variant import Module

        return (Module(site="attn", kind=self.name, size=3, function="identity", composition="scaled", scale=0.5, targets=("q", "k", "v", "o"), init="lora"),
                Module(site="ffn", kind=self.name, size=2, function="identity", composition="add", init="lora"))

    def search_methods(self) -> tuple[SearchMethod, ...]:
        return (SearchMethod(self.name, self.name, ("attn", "ffn"), compositions=("add", "scaled"), fixed=(("function", "identity"), ("init", "lora")), default=False),)

    def presets(self) -> tuple[KindPreset, ...]:
        what = {"pissa": "principal singular vectors of W (Meng et al. 2024)", "olora": "QR factors of W (Büyükakyüz 2024)"}[self.name]
        return (KindPreset(self.name, f"LoRA on W_q, W_v started at the {what}; base W - s·B0A0", "r", functools.partial(_preset, self.name), display=self.display),)

    def build(self, m: Module, d: int, dims: dict[str, list[tuple[int, int]]], targets: dict[str, tuple[Any, slice | None]]) -> Any:
        lora = _torch_classes()(m, d, dims)
        lora.targets = targets
        lora.init_from_base()
        return lora

    # --- PEFT --------------------------------------------------------------------------------
    def check_peft(self, mods: tuple[Module, ...], realized: Any) -> bool:
        super().check_peft(mods, realized)
        seen: set[int] = set()
        for lora in (m for m in realized.model.modules() if isinstance(m, _torch_classes())):
            for mod, slc in lora.targets.values():
                if slc is not None or id(mod) in seen:
                    raise UnipetlError(f"export --format peft: {self.display} on a slice of a fused projection (GPT-2's c_attn), or twice on one "
                                       f"projection, has no PEFT equivalent (PEFT takes the {self.decomposition} of the whole weight once).")
                seen.add(id(mod))
        return True

    def peft_tensors(self, model: Any) -> tuple[dict[str, Any], dict[str, tuple[int, float]], bool]:
        """A plain LoRA of rank 2r on the original base: A' = [A; A₀], B' = [B, −B₀], same s —
        s·B'A' = s·(BA − B₀A₀), our update relative to W (PEFT's PiSSA / OLoRA → LoRA conversion)."""
        import torch

        tensors, scales, conv = _lora_tensors(model)
        paths = {id(m): n for n, m in model.named_modules()}
        for lora in (m for m in model.modules() if isinstance(m, _torch_classes())):
            for key, (mod, _) in lora.targets.items():
                path = paths[id(mod)]
                a0, b0 = lora.initial(key)
                a, b = tensors[f"{path}.lora_A.weight"], tensors[f"{path}.lora_B.weight"]
                tensors[f"{path}.lora_A.weight"] = torch.cat([a, a0.to(a.dtype)], dim=0)
                tensors[f"{path}.lora_B.weight"] = torch.cat([b, -b0.to(b.dtype)], dim=1)
                r, s = scales[path]
                scales[path] = (2 * r, s)
        return tensors, scales, conv


@functools.cache
def _torch_classes() -> Any:
    """The nn.Module of PiSSA / OLoRA (a `layers.Lora` subclass), defined on first use: this file
    is read without torch (specs, counts, reports)."""
    import torch
    from torch.nn import functional as F  # noqa: N812
    from transformers.pytorch_utils import Conv1D

    from unipetl.spaces.layers import Lora

    class ResidualLora(Lora):
        """LoRA factors started at (A₀, B₀), kept as buffers `init_A_<key>` / `init_B_<key>`; the
        output is W x + b + s·(B A x − B₀ A₀ x). `targets` must be set before `init_from_base`."""

        lr_kind = "lora"  # spaces/lr.py: LoRA's central rate

        def init_from_base(self) -> None:
            kind = get_kind(self.spec.kind)
            with torch.no_grad():
                for key, (mod, slc) in self.targets.items():
                    w = mod.weight.T if isinstance(mod, Conv1D) else mod.weight
                    w = w if slc is None else w[slc]
                    if self.spec.size > min(w.shape):
                        raise UnipetlError(f"`size` of {kind.display} must be at most min(d_in, d_out) = {min(w.shape)} of target "
                                           f"{key.rsplit('_', 1)[0]!r}, got {self.spec.size}.")
                    f = self.factors[key]
                    if w.device.type != "meta" and f.lora_A.weight.device.type != "meta":  # a meta skeleton (io's dry run) has no values
                        a0, b0 = kind.principal_parts(w, self.spec.size, self.s)
                        f.lora_A.weight.copy_(a0)
                        f.lora_B.weight.copy_(b0)
                    # clones of the factors as initialised: converted along with them, so A = A₀, B = B₀ bit for bit
                    self.register_buffer(f"init_A_{key}", f.lora_A.weight.detach().clone(), persistent=False)
                    self.register_buffer(f"init_B_{key}", f.lora_B.weight.detach().clone(), persistent=False)

        def initial(self, key: str) -> tuple[torch.Tensor, torch.Tensor]:
            """(A₀, B₀) of one target."""
            return getattr(self, f"init_A_{key}"), getattr(self, f"init_B_{key}")

        def delta(self, key: str, inp: torch.Tensor, x: torch.Tensor | None) -> torch.Tensor:
            a0, b0 = self.initial(key)
            return super().delta(key, inp, x) - F.linear(F.linear(inp, a0), b0) * self.s

        def delta_weight_for(self, key: str) -> torch.Tensor:
            """s·(BA − B₀A₀) for `merge_lora`, (out, in)."""
            a0, b0 = self.initial(key)
            return (self.factors[key].delta_weight() - b0 @ a0) * self.s

    return ResidualLora


def _preset(kind: str, r: int = 8, s: float = 2.0) -> Variant:
    from unipetl.spaces.variant import Module, Variant

    if s == "learned":
        raise UnipetlError(f"preset key `s` of {kind!r} is a fixed scale (a learned one would move the split of W), got 'learned'.")
    return Variant(modules=(Module(site="attn", kind=kind, size=r, function="identity", composition="scaled", scale=float(s), targets=("q", "v"), init="lora"),))


register_kind(PissaKind())
