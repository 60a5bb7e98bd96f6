"""Whole-model kind `bitfit`: train every bias vector of the backbone (Ben Zaken et al. 2022,
"BitFit: Simple Parameter-efficient Fine-tuning for Transformer-based Masked Language-models", §2).

Variant field `bitfit` (true / false). Counts: paper = trainable = every backbone bias
(`ModelShape.bias_params`; He et al. 2022 App. B count them as stored). Models without biases
(LLaMA, T5) are refused. A no-op at init (the biases keep their values). No PEFT format.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from unipetl.spaces.kinds import ExtraKind, register_extra
from unipetl.spaces.registry import UnipetlError

if TYPE_CHECKING:  # pragma: no cover
    from unipetl.spaces.shapes import ModelShape


class BitFitKind(ExtraKind):
    name = "bitfit"
    field = "bitfit"
    summary = "BitFit: every backbone bias vector"
    describe_rank = 1
    families = ("bert", "roberta", "bart", "mbart", "gpt2", "qwen2")  # LLaMA and T5 have no biases

    def validate(self, v: Any) -> None:
        if not isinstance(v.bitfit, bool):
            raise UnipetlError(f"`bitfit` should be true or false, got {v.bitfit!r}.")

    def describe(self, v: Any) -> str:
        return "BitFit"

    def count(self, v: Any, shape: ModelShape) -> tuple[str, int, int]:
        if shape.bias_params == 0:
            raise UnipetlError(f"`bitfit`: model {shape.name or shape.model_type!r} has no bias vectors to tune.")
        return "BitFit (all backbone biases)", shape.bias_params, shape.bias_params

    def prepare(self, model: Any, v: Any, realized: Any) -> None:
        from unipetl.spaces.realize import _backbone_params

        for n, p in _backbone_params(model):
            if n.endswith(".bias"):
                p.requires_grad_(True)

    def realized_paper(self, model: Any, backbone: list[tuple[str, Any]]) -> int:
        return sum(p.numel() for n, p in backbone if n.endswith(".bias"))

    def lr_kind(self, name: str) -> str | None:
        return "bitfit" if name.endswith(".bias") else None

    def examples(self) -> tuple[Any, ...]:
        from unipetl.spaces.variant import Variant

        return (Variant(bitfit=True),)


register_extra(BitFitKind())
