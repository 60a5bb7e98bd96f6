"""`unipetl count` for the methods after 2022 on the paper's models gives the README's formulas."""

from __future__ import annotations

import pytest

from unipetl.spaces.accounting import count
from unipetl.spaces.presets import parse_preset
from unipetl.spaces.shapes import resolve_shape

# d, layers with attention sublayers (self + cross), FFN sublayers, d_ffn
ROBERTA = dict(d=768, attn=12, ffn=12, d_ffn=3072)
BART = dict(d=1024, attn=36, ffn=24, d_ffn=4096)


def formula(preset: str, d: int, attn: int, ffn: int, d_ffn: int) -> int:
    """README, "Methods after 2022": exact paper counts (= trainable counts, head excluded)."""
    r = 8
    return {
        "rslora:r=8": attn * 2 * r * (d + d),  # LoRA's 4·r·d per attention sublayer (q, v)
        "dora:r=8": attn * 2 * (r * (d + d) + d),  # + the magnitude, d_out per target
        "ia3": attn * 2 * d + ffn * d_ffn,  # l_k, l_v per attention sublayer; l_ff per FFN
        "pissa:r=8": attn * 2 * r * (d + d),  # LoRA's: B0A0 is a function of W (recomputed), not stored per task
        "olora:r=8": attn * 2 * r * (d + d),
        "vera:r=256": attn * 2 * (256 + d),  # λ_d (r) + λ_b (d_out) per target (q, v); the frozen pair is regenerated, not stored
    }[preset]


@pytest.mark.parametrize("preset", ["rslora:r=8", "dora:r=8", "ia3", "vera:r=256", "pissa:r=8", "olora:r=8"])
@pytest.mark.parametrize(("model", "dims"), [("roberta-base", ROBERTA), ("bart-large", BART)])
def test_counts_follow_the_readme_formulas(model: str, dims: dict[str, int], preset: str) -> None:
    c = count(parse_preset(preset), resolve_shape(model))
    assert c.paper_params == c.trainable_params == formula(preset, **dims)


def test_reference_values() -> None:
    roberta, bart = resolve_shape("roberta-base"), resolve_shape("bart-large")
    presets = ("rslora:r=8", "dora:r=8", "ia3", "vera:r=256", "pissa:r=8", "olora:r=8")
    assert [count(parse_preset(p), roberta).paper_params for p in presets] == [294_912, 313_344, 55_296, 24_576, 294_912, 294_912]
    assert [count(parse_preset(p), bart).paper_params for p in presets] == [1_179_648, 1_253_376, 172_032, 92_160, 1_179_648, 1_179_648]
