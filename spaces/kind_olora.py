"""Kind `olora`: LoRA started on the QR factors of W (Büyükakyüz 2024, "OLoRA", arXiv 2406.01775, §3).

PiSSA (`kind_pissa.py`) with a QR decomposition in place of the SVD: W = Q R of the target's
(d_out, d_in) weight (fp64 here), A₀ = R_r (the first r rows of R), B₀ = Q_r (the first r
orthonormal columns of Q), and the frozen base becomes the residual W_res = W − s·Q_r R_r (the
scale is not divided out, as in PEFT's `olora_init`). Not a no-op in its factors at init: the
effective base weight is the residual W − s·B₀A₀; the output at init equals the base.
Q_r R_r = Q_r Q_rᵀ W depends on the span of W's first r columns only, not on QR's sign choices.

Everything else is PiSSA's: the backbone stays untouched (A₀, B₀ are buffers, recomputed at
realization), counts are LoRA's, compositions add / scaled, merge W + s·(BA − B₀A₀), PEFT
export as a plain LoRA of rank 2r. PEFT's `olora_init` factors the stored weight without the
Conv1D transpose, so on GPT-2 (`fan_in_fan_out`) PEFT's OLoRA is not this method (its A gets
shape (r, d_out)); our export to plain LoRA loads there all the same.
"""

from __future__ import annotations

from typing import Any

from unipetl.spaces.kind_pissa import PissaKind
from unipetl.spaces.kinds import register_kind


class OloraKind(PissaKind):
    name = "olora"
    display = "OLoRA"
    decomposition = "QR"
    summary = ("LoRA whose A, B start at the first r rows of R / columns of Q of W = QR (Büyükakyüz 2024); not a no-op in its "
               "factors at init: the effective base weight is the residual W − s·B₀A₀ (outputs at init equal the base)")

    def principal_factors(self, w: Any, r: int) -> tuple[Any, Any]:
        """(R_r (r, d_in), Q_r (d_out, r)) of the reduced QR of w (d_out, d_in), in fp64."""
        import torch

        q, rr = torch.linalg.qr(w.detach().to(torch.float64))
        return rr[:r], q[:, :r]

    def principal_parts(self, w: Any, r: int, s: float) -> tuple[Any, Any]:
        return self.principal_factors(w, r)  # OLoRA subtracts s·Q_r R_r: no division by s


register_kind(OloraKind())
