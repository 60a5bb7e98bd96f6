"""Whole-model kind `prompt`: prompt tuning, l soft tokens prepended to the (encoder) input
embeddings (Lester et al. 2021, "The Power of Scale for Parameter-Efficient Prompt Tuning", §2).

Variant field `prompt_length` (l ≥ 0; 0 = off). Counts: paper = trainable = l·d (the prompt
rows, d = d_model; He et al. 2022 App. B). Not a no-op at init: the soft tokens change the
attention context. PEFT export: `PromptTuningConfig` (`prompt_embeddings` (l, d)).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from unipetl.spaces.kinds import ExtraKind, register_extra
from unipetl.spaces.registry import UnipetlError

if TYPE_CHECKING:  # pragma: no cover
    from unipetl.spaces.shapes import ModelShape


class PromptKind(ExtraKind):
    name = "prompt"
    field = "prompt_length"
    summary = "prompt tuning: l soft input tokens"
    describe_rank = 2

    def validate(self, v: Any) -> None:
        if isinstance(v.prompt_length, bool) or not isinstance(v.prompt_length, int) or v.prompt_length < 0:
            raise UnipetlError(f"`prompt_length` should be a non-negative integer, got {v.prompt_length!r}.")

    def claims_noop(self, v: Any) -> bool:
        return False

    def describe(self, v: Any) -> str:
        return f"prompt tuning l={v.prompt_length}"

    def count(self, v: Any, shape: ModelShape) -> tuple[str, int, int]:
        n = v.prompt_length * shape.token_dim  # l soft tokens as wide as the input embeddings (ELECTRA: embedding_size, not d_model)
        return f"prompt tuning l={v.prompt_length}", n, n

    def finish(self, model: Any, v: Any, realized: Any) -> None:
        from unipetl.spaces import families

        realized.handles += families.install_prompt(model, v.prompt_length)

    def peft_method(self, v: Any) -> str | None:
        return "prompt"

    def export_peft(self, realized: Any, config: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """PromptTuningConfig fields; `prompt_embeddings` (l, d); head key prefix `base_model.`."""
        from unipetl.spaces import families

        st = realized.shape.stacks[-1]
        emb = families.backbone(realized.model).petl_prompt.petl_prompt.detach()
        config.update(peft_type="PROMPT_TUNING", num_virtual_tokens=emb.shape[0], token_dim=realized.shape.token_dim, num_transformer_submodules=1,
                      num_attention_heads=st.n_heads, num_layers=st.n_layers, prompt_tuning_init="RANDOM")
        return {"prompt_embeddings": emb}, "base_model."

    def examples(self) -> tuple[Any, ...]:
        from unipetl.spaces.variant import Variant

        return (Variant(prompt_length=3),)


register_extra(PromptKind())
