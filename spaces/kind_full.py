"""Whole-model kind `full`: full fine-tuning, the 100 % reference point (He et al. 2022, Table 1).

Variant field `full_finetune` (true / false): every backbone parameter trains, an untied LM
head too; it cannot be combined with modules or other extras. Counts: paper = trainable = the
backbone's parameters. The *linear probe* is no kind at all: the variant with no modules and no
extras, where only the task head trains (`Variant.is_probe`). No PEFT format.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from unipetl.spaces.kinds import ExtraKind, register_extra
from unipetl.spaces.registry import UnipetlError

if TYPE_CHECKING:  # pragma: no cover
    from unipetl.spaces.shapes import ModelShape


class FullKind(ExtraKind):
    name = "full"
    field = "full_finetune"
    summary = "full fine-tuning: every weight"
    trains_everything = True

    def validate(self, v: Any) -> None:
        if not isinstance(v.full_finetune, bool):
            raise UnipetlError(f"`full_finetune` should be true or false, got {v.full_finetune!r}.")
        if v.full_finetune and (v.modules or v.bitfit or v.prompt_length):
            raise UnipetlError("`full_finetune` trains every weight; it cannot be combined with modules, bitfit or prompt_length.")

    def describe(self, v: Any) -> str:
        return "full fine-tuning"

    def count(self, v: Any, shape: ModelShape) -> tuple[str, int, int]:
        return "full fine-tuning", shape.base_params, shape.base_params

    def realized_paper(self, model: Any, backbone: list[tuple[str, Any]]) -> int:
        return sum(p.numel() for _, p in backbone)

    def lr_kind(self, name: str) -> str | None:
        return "full"

    def examples(self) -> tuple[Any, ...]:
        from unipetl.spaces.variant import Variant

        return (Variant(full_finetune=True),)


register_extra(FullKind())
