"""The nn modules a variant inserts: adapters, LoRA factors, head-wise prefixes, prompts.

Every module can report its *paper* parameter count (README, "Parameter accounting") so the
realized model can be checked against `unipetl.spaces.accounting` exactly. Every parallel / LoRA /
scaled module starts as an exact no-op (W_up = 0, B = 0, P_v = 0 for MH PA) so a fresh variant
computes the base model.
Names of inserted parameters contain `petl` because the attributes holding these modules on
the host model are all called `petl_*`.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import nn

from unipetl.spaces.kinds import get_kind
from unipetl.spaces.variant import Module

logger = logging.getLogger(__name__)

_ACTS = {"identity": nn.Identity, "relu": nn.ReLU, "gelu": nn.GELU}


def _init_down(weight: torch.Tensor, init: str) -> None:
    """bert: N(0, 0.02) (Houlsby); lora: kaiming-uniform(a=√5), the nn.Linear / LoRA default."""
    if init == "lora":
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    else:
        nn.init.normal_(weight, std=0.02)


class Composition(nn.Module):
    """h ← h + c(x)·Δh: add (c = 1), scaled (fixed s), learned_scale (s a parameter), gated.

    The gate is a per-token scalar sigmoid(x·W_g + b_g) read from the sublayer input x
    (UniPELT); a fixed scale is a buffer-free float so it costs no parameters.
    """

    def __init__(self, spec: Module, d_model: int) -> None:
        super().__init__()
        self.mode = spec.composition
        self.fixed = spec.scale if spec.composition == "scaled" else 1.0
        self.scale = nn.Parameter(torch.tensor(float(spec.scale))) if spec.composition == "learned_scale" else None
        self.gate = nn.Linear(d_model, 1) if spec.composition == "gated" else None

    def forward(self, delta: torch.Tensor, x: torch.Tensor | None) -> torch.Tensor:
        if self.scale is not None:
            return self.scale * delta
        if self.gate is not None:
            if x is None:
                raise RuntimeError("gated composition needs the sublayer input, which was not captured")
            return torch.sigmoid(self.gate(x)) * delta
        return delta * self.fixed if self.fixed != 1.0 else delta


class Adapter(nn.Module):
    """Δh = f(LN?(drop(in))·W_down + b_down)·W_up + b_up, composed onto the sublayer output."""

    def __init__(self, spec: Module, d_model: int) -> None:
        super().__init__()
        self.sequential = spec.insertion == "sequential"
        self.norm = nn.LayerNorm(d_model) if spec.layernorm else None
        self.drop = nn.Dropout(spec.dropout)
        self.down = nn.Linear(d_model, spec.size)
        self.act = _ACTS[spec.function]()
        self.up = nn.Linear(spec.size, d_model)
        _init_down(self.down.weight, spec.init)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.comp = Composition(spec, d_model)

    def paper_params(self) -> int:
        return self.down.weight.numel() + self.up.weight.numel()

    def delta(self, inp: torch.Tensor, x: torch.Tensor | None) -> torch.Tensor:
        z = self.drop(inp)
        if self.norm is not None:
            z = self.norm(z)
        return self.comp(self.up(self.act(self.down(z))), x)


class LoraFactor(nn.Module):
    """One low-rank update s·(x A)B of one weight matrix (or column slice of a fused one)."""

    def __init__(self, d_in: int, d_out: int, r: int, init: str, dropout: float) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.lora_A = nn.Linear(d_in, r, bias=False)
        self.lora_B = nn.Linear(r, d_out, bias=False)
        _init_down(self.lora_A.weight, init)
        nn.init.zeros_(self.lora_B.weight)

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        return self.lora_B(self.lora_A(self.drop(inp)))

    def delta_weight(self) -> torch.Tensor:
        """B·A as an (out, in) matrix, the nn.Linear weight layout."""
        return self.lora_B.weight @ self.lora_A.weight


class Lora(nn.Module):
    """LoRA on some projections of one sublayer; one gate / learned scale shared by its targets."""

    def __init__(self, spec: Module, d_model: int, dims: dict[str, list[tuple[int, int]]]) -> None:
        super().__init__()
        self.spec = spec
        self.s = get_kind(spec.kind).lora_scale(spec)  # α/r for LoRA, α/√r for rsLoRA
        self.factors = nn.ModuleDict(
            {f"{t}_{i}": LoraFactor(din, dout, spec.size, spec.init, spec.dropout) for t, pairs in dims.items() for i, (din, dout) in enumerate(pairs)}
        )
        self.comp = Composition(spec, d_model)
        self.merged = False

    def paper_params(self) -> int:
        return sum(p.numel() for f in self.factors.values() for p in (f.lora_A.weight, f.lora_B.weight))

    def delta(self, key: str, inp: torch.Tensor, x: torch.Tensor | None) -> torch.Tensor:
        out = self.factors[key](inp)
        if self.comp.mode == "scaled":
            return out * self.s
        return self.comp(out, x)

    def apply(self, key: str, inp: torch.Tensor, x: torch.Tensor | None, output: torch.Tensor, slc: slice | None) -> torch.Tensor:
        """The projection's output (B, T, d_out) with this target's update added (to columns
        `slc` of a fused projection); `inp` is the projection's input, `x` what a gate reads.
        Variants of LoRA (DoRA) override this."""
        d = self.delta(key, inp, x).to(output.dtype)
        if slc is None:
            return output + d
        return torch.cat([output[..., : slc.start], output[..., slc] + d, output[..., slc.stop :]], dim=-1)

    def delta_weight_for(self, key: str) -> torch.Tensor:
        """s·B·A of one target, (out, in); only for add / scaled LoRA (`mergeable`)."""
        return self.factors[key].delta_weight() * self.s

    # DoRA sets this: its update reads the projection's weight (and output), so folding it is exact
    # only where it is the sole inserted module on that projection (`realize.merge_plan`)
    reads_weight = False

    @property
    def mergeable(self) -> bool:
        """Whether the update is one fixed matrix per target (add / scaled composition), foldable
        into the base weight; a gate or learned scale depends on the input."""
        return self.spec.composition not in ("gated", "learned_scale")

    def merge(self) -> None:
        """Fold `delta_weight_for` into every target's weight (columns `slc` of GPT-2's fused
        Conv1D, stored (in, out)); afterwards the projection hook skips this module. Exact only as
        `realize.merge_plan` orders it; callers go through `Realized.merge` / `merge_lora`."""
        from transformers.pytorch_utils import Conv1D

        with torch.no_grad():
            for key, (mod, slc) in self.targets.items():
                dw = self.delta_weight_for(key)
                if isinstance(mod, Conv1D):
                    mod.weight[:, slc if slc is not None else slice(None)] += dw.T.to(mod.weight.dtype)
                else:
                    mod.weight += dw.to(mod.weight.dtype)
        self.merged = True


class HeadSlots(nn.Module):
    """P_k, P_v: l learned rows of key / value width per KV head, at one attention sublayer.

    softmax (prefix tuning): concatenated before the layer's keys / values (spaces.attention).
    relu / gelu / identity (MH PA): Δhead = s·f(q·P_kᵀ·scaling)·P_v added to each head's output,
    with P_v = 0 at init so the module starts as a no-op. With `reparam` the slots come from a
    shared `PrefixMLP` (one per stack and attention kind) instead of own parameters.
    """

    def __init__(self, spec: Module, n_kv_heads: int, head_dim: int, *, mlp: PrefixMLP | None = None, mlp_index: int = 0) -> None:
        super().__init__()
        self.spec = spec
        self.prefix = spec.function == "softmax"
        self.n_kv, self.head_dim, self.l = n_kv_heads, head_dim, spec.size
        self.act = None if self.prefix else _ACTS[spec.function]()
        self.s = spec.scale if spec.composition == "scaled" else 1.0
        self.scale = nn.Parameter(torch.tensor(float(spec.scale))) if spec.composition == "learned_scale" else None
        self._mlp = [mlp]  # a list: the shared MLP is registered once, on the backbone, not here
        self.mlp_index = mlp_index
        if mlp is None:
            self.petl_k = nn.Parameter(torch.empty(n_kv_heads, spec.size, head_dim))
            self.petl_v = nn.Parameter(torch.empty(n_kv_heads, spec.size, head_dim))
            if self.prefix:
                nn.init.normal_(self.petl_k, std=1.0)
                nn.init.normal_(self.petl_v, std=1.0)
            else:
                _init_down(self.petl_k.view(-1, head_dim), spec.init)
                nn.init.zeros_(self.petl_v)

    def paper_params(self) -> int:
        return 2 * self.l * self.n_kv * self.head_dim

    def kv(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(P_k, P_v), each (n_kv_heads, l, head_dim)."""
        mlp = self._mlp[0]
        if mlp is None:
            return self.petl_k, self.petl_v
        return mlp.slots(self.mlp_index)

    def mh_delta(self, query: torch.Tensor, scaling: float) -> torch.Tensor:
        """MH PA: (B, H, Q, hd) queries → (B, H, Q, hd) per-head additions."""
        pk, pv = self.kv()
        groups = query.shape[1] // self.n_kv
        if groups > 1:
            pk, pv = pk.repeat_interleave(groups, 0), pv.repeat_interleave(groups, 0)
        scores = torch.einsum("bhqd,hld->bhql", query, pk.to(query.dtype)) * scaling
        out = torch.einsum("bhql,hld->bhqd", self.act(scores), pv.to(query.dtype))
        s = self.scale if self.scale is not None else self.s
        return out * s


class PrefixMLP(nn.Module):
    """Li & Liang's reparametrization P = MLP(E) for every layer of one (stack, attention kind).

    E: l × d, Linear(d, hidden), tanh, Linear(hidden, 2·kv_dim·n_layers) — what accounting.py
    counts. Only the prefixes it produces are stored after training (paper count 2·l·kv_dim per
    layer); the MLP itself is a training device.
    """

    def __init__(self, l: int, d_model: int, hidden: int, n_layers: int, n_kv_heads: int, head_dim: int) -> None:
        super().__init__()
        self.l, self.n_layers, self.n_kv, self.head_dim = l, n_layers, n_kv_heads, head_dim
        self.petl_embedding = nn.Parameter(torch.randn(l, d_model) * 0.02)
        self.mlp = nn.Sequential(nn.Linear(d_model, hidden), nn.Tanh(), nn.Linear(hidden, 2 * n_kv_heads * head_dim * n_layers))

    def slots(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.mlp(self.petl_embedding).view(self.l, self.n_layers, 2, self.n_kv, self.head_dim)
        sel = out[:, index].permute(1, 2, 0, 3)  # (2, n_kv, l, hd)
        return sel[0], sel[1]


class SoftPrompt(nn.Module):
    """l soft tokens prepended to the (encoder) input embeddings (Lester et al. 2021)."""

    def __init__(self, init_rows: torch.Tensor) -> None:
        super().__init__()
        self.petl_prompt = nn.Parameter(init_rows.detach().clone())

    def paper_params(self) -> int:
        return self.petl_prompt.numel()

    def prepend(self, embeds: torch.Tensor) -> torch.Tensor:
        p = self.petl_prompt.to(embeds.dtype).unsqueeze(0).expand(embeds.shape[0], -1, -1)
        return torch.cat([p, embeds], dim=1)
