"""PEFT export: LoRA / prompt / prefix variants load with `peft.PeftModel.from_pretrained` on a
fresh base model and give our logits; other variants are refused with one clear line."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pytest
import torch

from unipetl.spaces.peft_export import CONFIG_FILE, WEIGHTS_FILE, export_peft
from unipetl.spaces.presets import parse_preset
from unipetl.spaces.realize import apply_variant
from unipetl.spaces.registry import UnipetlError
from unipetl.spaces.testing import tiny_model
from unipetl.spaces.variant import Module, Variant

os.environ.setdefault("HF_HUB_OFFLINE", "1")
peft = pytest.importorskip("peft")  # a test dependency (pyproject [test]); CI installs it

HEADS = {"bert": "cls", "t5": "seq2seq", "bart": "seq2seq", "gpt2": "causal", "llama": "causal"}


def realized_and_inputs(family: str, variant: str | Variant) -> tuple[object, dict[str, torch.Tensor]]:
    model = tiny_model(family, HEADS[family])
    realized = apply_variant(model, parse_preset(variant) if isinstance(variant, str) else variant)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():  # move every trained tensor off its init (B = 0 would make LoRA a no-op)
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.2)
    ids = torch.randint(5, 100, (2, 7), generator=g)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 5:] = 0
    inputs = {"input_ids": ids, "attention_mask": mask}
    if HEADS[family] == "seq2seq":
        inputs["decoder_input_ids"] = ids[:, :4]
    return realized, inputs


def peft_logits(family: str, directory: Path, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = peft.PeftModel.from_pretrained(tiny_model(family, HEADS[family]), str(directory)).eval()
        with torch.no_grad():
            return pm(**inputs).logits


def ours(realized: object, inputs: dict[str, torch.Tensor], **extra: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return realized.model(**inputs, **extra).logits  # type: ignore[attr-defined]


LORA_CASES = [
    ("bert", "lora:r=2"),  # classifier head through modules_to_save
    ("llama", "lora:r=2"),  # GQA: v_proj narrower than q_proj
    ("gpt2", "lora:r=2"),  # fused Conv1D c_attn: q and v slices → one block-structured rank-4 LoRA
    ("gpt2", "lora-ffn:r=2"),
    ("bart", "lora:r=2"),  # encoder self, decoder self and cross attention
    ("llama", Variant(modules=(Module(site="attn", kind="lora", size=2, function="identity", composition="scaled", scale=3.0, targets=("q", "k", "v", "o")),
                               Module(site="ffn", kind="lora", size=3, function="identity", composition="add", targets=("w1",), layers=(1,))))),
]


@pytest.mark.parametrize(("family", "variant"), LORA_CASES, ids=[f"{f}-{v if isinstance(v, str) else 'mixed'}" for f, v in LORA_CASES])
def test_lora_export_loads_in_peft_with_same_logits(family: str, variant: str | Variant, tmp_path: Path) -> None:
    realized, inputs = realized_and_inputs(family, variant)
    export_peft(realized, tmp_path, base_model_name_or_path=f"tiny-{family}")
    config = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert config["peft_type"] == "LORA"
    if isinstance(variant, str) and family != "gpt2":
        module = realized.variant.modules[0]
        assert config["r"] == module.size and config["lora_alpha"] == module.scale * module.size  # alpha = s·r
    got, ref = peft_logits(family, tmp_path, inputs), ours(realized, inputs)
    assert torch.allclose(got, ref, atol=1e-5, rtol=0), (got - ref).abs().max()


def test_lora_export_keys_follow_peft_naming(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    realized, _ = realized_and_inputs("bert", "lora:r=2")
    export_peft(realized, tmp_path, base_model_name_or_path="tiny-bert")
    keys = set(load_file(str(tmp_path / WEIGHTS_FILE)))
    assert "base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight" in keys
    assert "base_model.model.bert.encoder.layer.1.attention.self.value.lora_B.weight" in keys
    assert "base_model.model.classifier.weight" in keys
    assert len(keys) == 2 * 2 * 2 + 2  # 2 layers × (q, v) × (A, B) + classifier weight / bias


@pytest.mark.parametrize("family", ["bert", "t5", "gpt2", "llama"])
def test_prompt_export_same_logits(family: str, tmp_path: Path) -> None:
    realized, inputs = realized_and_inputs(family, "prompt:l=3")
    export_peft(realized, tmp_path, base_model_name_or_path=f"tiny-{family}")
    got, ref = peft_logits(family, tmp_path, inputs), ours(realized, inputs)
    assert got.shape == ref.shape
    assert torch.allclose(got, ref, atol=1e-5, rtol=0), (got - ref).abs().max()


@pytest.mark.parametrize(("family", "preset"), [("gpt2", "prefix:l=3"), ("llama", "prefix:l=3"), ("llama", "prefix:l=3,mlp=8")])
def test_prefix_export_equals_ours_with_positions_shifted_by_l(family: str, preset: str, tmp_path: Path) -> None:
    """PEFT keeps the prefix in the KV cache, so real tokens sit at positions l..l+n-1; ours are
    position-free. The export is exactly our model with position_ids shifted by l — and differs
    from it unshifted (absolute positions in GPT-2, unrotated prefix keys vs rotated queries in LLaMA)."""
    realized, inputs = realized_and_inputs(family, preset)
    export_peft(realized, tmp_path, base_model_name_or_path=f"tiny-{family}")
    got = peft_logits(family, tmp_path, inputs)
    shifted = ours(realized, inputs, position_ids=torch.arange(3, 10).expand(2, -1))
    assert torch.allclose(got, shifted, atol=1e-5, rtol=0), (got - shifted).abs().max()
    assert (got - ours(realized, inputs)).abs().max() > 1e-3


@pytest.mark.parametrize(("family", "preset", "expected"), [
    ("bert", "houlsby:r=4", "not expressible in PEFT"),
    ("bert", "mam:l=3,r=4", "not expressible in PEFT"),
    ("bert", "bitfit", "no PEFT format"),
    ("llama", "unipelt:l=2,r=4,lora_r=2", "not expressible in PEFT"),
    ("bert", "lora:r=2,s=learned", "composition 'learned_scale'"),
    ("bert", "prefix:l=3", "decoder-only models"),
    ("bart", "prefix:l=3", "decoder-only models"),
])
def test_refused_variants_one_line(family: str, preset: str, expected: str, tmp_path: Path) -> None:
    realized, _ = realized_and_inputs(family, preset)
    with pytest.raises(UnipetlError) as err:
        export_peft(realized, tmp_path / "out", base_model_name_or_path="x")
    assert expected in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_cli_export_from_saved_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from unipetl.search.cli import main
    from unipetl.spaces.io import save_variant

    realized, inputs = realized_and_inputs("llama", "lora:r=2")
    save_variant(realized, tmp_path / "saved", base_model_id="tiny-llama")
    rc = main(["export", "--from", str(tmp_path / "saved"), "--format", "peft", "--out", str(tmp_path / "peft"), "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["peft_type"] == "LORA" and out["base_model_name_or_path"] == "tiny-llama"
    got, ref = peft_logits("llama", tmp_path / "peft", inputs), ours(realized, inputs)
    assert torch.allclose(got, ref, atol=1e-5, rtol=0)
    before = (tmp_path / "peft" / WEIGHTS_FILE).read_bytes()
    assert main(["export", "--from", str(tmp_path / "saved"), "--format", "peft", "--out", str(tmp_path / "peft")]) == 2
    assert "--force" in capsys.readouterr().err
    assert (tmp_path / "peft" / WEIGHTS_FILE).read_bytes() == before


@pytest.mark.parametrize(("setup", "expected"), [("houlsby", "not expressible in PEFT"), ("missing", "does not exist"), ("empty", "is not a saved variant")])
def test_cli_export_bad_input_exit_2(setup: str, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from unipetl.search.cli import main
    from unipetl.spaces.io import save_variant

    src = tmp_path / "saved"
    if setup == "houlsby":
        realized, _ = realized_and_inputs("bert", "houlsby:r=4")
        save_variant(realized, src, base_model_id="tiny-bert")
    elif setup == "empty":
        src.mkdir()
    rc = main(["export", "--from", str(src), "--format", "peft", "--out", str(tmp_path / "peft")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and expected in err and "\n" not in err, err
    assert not (tmp_path / "peft").exists()
