"""Save → load a variant into a fresh base model: identical logits, only the trained tensors stored,
mismatches refused with one clear line, safetensors only."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from unipetl.spaces.io import ADAPTER_FILE, META_FILE, VARIANT_FILE, load_variant, read_saved, save_variant
from unipetl.spaces.presets import parse_preset
from unipetl.spaces.realize import apply_variant, variant_state_dict
from unipetl.spaces.registry import UnipetlError
from unipetl.spaces.testing import tiny_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")

FAMILIES = {"bert": "cls", "roberta": "cls", "bart": "seq2seq", "mbart": "seq2seq", "t5": "seq2seq", "gpt2": "causal", "llama": "causal"}
PRESETS = ["lora:r=2", "prefix:l=3", "mam:l=3,r=4", "houlsby:r=4", "prompt:l=3", "bitfit", "unipelt:l=2,r=4,lora_r=2", "probe"]
# every preset on at least three families, every family with at least four presets (the full
# product is what tests/test_realize.py covers for counts; here each case is a save + reload)
CASES = [
    ("lora:r=2", "bert"), ("lora:r=2", "mbart"), ("lora:r=2", "t5"), ("lora:r=2", "llama"), ("lora:r=2", "gpt2"),
    ("prefix:l=3", "bert"), ("prefix:l=3", "bart"), ("prefix:l=3", "t5"), ("prefix:l=3", "gpt2"), ("prefix:l=3", "llama"),
    ("mam:l=3,r=4", "roberta"), ("mam:l=3,r=4", "bart"), ("mam:l=3,r=4", "t5"), ("mam:l=3,r=4", "llama"),
    ("houlsby:r=4", "bert"), ("houlsby:r=4", "mbart"), ("houlsby:r=4", "gpt2"),
    ("prompt:l=3", "roberta"), ("prompt:l=3", "t5"), ("prompt:l=3", "gpt2"), ("prompt:l=3", "llama"),
    ("bitfit", "bert"), ("bitfit", "bart"), ("bitfit", "gpt2"),
    ("unipelt:l=2,r=4,lora_r=2", "roberta"), ("unipelt:l=2,r=4,lora_r=2", "mbart"), ("unipelt:l=2,r=4,lora_r=2", "llama"),
    ("probe", "bert"), ("probe", "bart"), ("probe", "llama"),
]
assert all(f in FAMILIES and p.split(":")[0] in {q.split(":")[0] for q in PRESETS} for p, f in CASES)


def inputs(family: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(5, 100, (2, 7), generator=g)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 5:] = 0  # padding must reach every attention after the reload too
    out = {"input_ids": ids, "attention_mask": mask}
    if FAMILIES[family] == "seq2seq":
        out["decoder_input_ids"] = torch.randint(5, 100, (2, 4), generator=g)
    return out


def logits(model: torch.nn.Module, family: str) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs(family)).logits


def trained(family: str, preset: str, *, seed: int = 0) -> tuple[object, torch.Tensor]:
    """A realized tiny model whose trainable tensors were moved off their init (so the test means something)."""
    model = tiny_model(family, FAMILIES[family], seed=seed)
    realized = apply_variant(model, parse_preset(preset))
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.2)
    return realized, logits(model, family)


def untouched(model: torch.nn.Module) -> bool:
    return getattr(model, "_unipetl_realized", None) is None and not any("petl" in n for n, _ in model.named_parameters())


@pytest.mark.parametrize(("preset", "family"), CASES)
def test_roundtrip_identical_logits_and_only_trained_tensors(preset: str, family: str, tmp_path: Path) -> None:
    realized, ref = trained(family, preset)
    save_variant(realized, tmp_path, base_model_id=f"tiny-{family}")
    stored = load_file(str(tmp_path / ADAPTER_FILE))
    # exactly the trainable tensors: names, and element count == realized trainable count incl. head
    assert set(stored) == set(variant_state_dict(realized.model))
    assert sum(t.numel() for t in stored.values()) == realized.counts.trainable_params + realized.head_params
    assert realized.realized_trainable_params() == realized.counts.trainable_params
    meta = json.loads((tmp_path / META_FILE).read_text())
    assert meta["tensors"]["head_params"] == realized.head_params
    assert sum(stored[n].numel() for n in meta["head"]["tensors"]) == realized.head_params
    assert all("petl" not in n for n in meta["head"]["tensors"])
    assert meta["counts"]["paper_params"] == realized.counts.paper_params

    fresh = tiny_model(family, FAMILIES[family], seed=0)
    if stored:  # (a probe on a tied LM head trains nothing) the perturbed tensors really change the output
        base = logits(fresh, family)
        assert base.shape != ref.shape or (base - ref).abs().max() > 1e-4
    loaded = load_variant(fresh, tmp_path)
    assert loaded.variant.to_dict() == realized.variant.to_dict()
    assert torch.allclose(logits(fresh, family), ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", ["bart", "gpt2"])
def test_prefix_reparam_stores_mlp_or_materialized_prefixes(family: str, tmp_path: Path) -> None:
    realized, ref = trained(family, "prefix:l=3,mlp=8")
    head = realized.head_params
    save_variant(realized, tmp_path / "mlp", base_model_id="tiny")
    save_variant(realized, tmp_path / "flat", base_model_id="tiny", materialize_prefixes=True)
    mlp = load_file(str(tmp_path / "mlp" / ADAPTER_FILE))
    flat = load_file(str(tmp_path / "flat" / ADAPTER_FILE))
    # default: what trained (MLP + embedding) == trainable count; materialized: what the paper counts
    assert sum(t.numel() for t in mlp.values()) == realized.counts.trainable_params + head
    assert sum(t.numel() for t in flat.values()) == realized.counts.paper_params + head
    assert realized.counts.paper_params < realized.counts.trainable_params
    assert not any(m["reparam"] for m in json.loads((tmp_path / "flat" / VARIANT_FILE).read_text())["modules"])
    assert json.loads((tmp_path / "flat" / META_FILE).read_text())["prefixes"] == "materialized"
    for sub in ("mlp", "flat"):
        fresh = tiny_model(family, FAMILIES[family])
        load_variant(fresh, tmp_path / sub)
        assert torch.allclose(logits(fresh, family), ref, atol=1e-6, rtol=0)


def _rewrite(path: Path, change: object) -> None:
    tensors = load_file(str(path))
    change(tensors)  # type: ignore[operator]
    save_file(tensors, str(path))


@pytest.fixture(scope="module")
def saved_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    realized, _ = trained("bert", "lora:r=2")
    return save_variant(realized, tmp_path_factory.mktemp("bert_lora"), base_model_id="tiny-bert")


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def _first_key(t: dict) -> str:
    return sorted(k for k in t if "petl" in k)[0]


MISMATCHES = {
    "other model type": (lambda d: None, lambda: tiny_model("gpt2", "causal"), "trained on a 'bert' model"),
    "other shape": (lambda d: None, lambda: tiny_model("bert", "cls", num_hidden_layers=3), "`stacks` differs"),
    "other weights": (lambda d: None, lambda: tiny_model("bert", "cls", seed=1), "weights fingerprint mismatch"),
    "other num_labels": (lambda d: None, lambda: tiny_model("bert", "cls", num_labels=3), "num_labels 2"),
    "other head": (lambda d: None, lambda: tiny_model("bert", "base"), "BertForSequenceClassification head"),
    "missing tensor": (lambda d: _rewrite(d / ADAPTER_FILE, lambda t: t.pop(_first_key(t))), None, "lacks the tensor"),
    "extra tensor": (lambda d: _rewrite(d / ADAPTER_FILE, lambda t: t.update({"bert.petl_evil": torch.zeros(3)})), None, "'bert.petl_evil' is not one"),
    "wrong shape": (lambda d: _rewrite(d / ADAPTER_FILE, lambda t: t.update({_first_key(t): torch.zeros(3, 32)})), None, "has shape (3, 32)"),
    "variant edited": (lambda d: (d / VARIANT_FILE).write_text((d / VARIANT_FILE).read_text().replace('"size": 2', '"size": 3')), None, "has shape (2, 32)"),
    "corrupt weights": (lambda d: (d / ADAPTER_FILE).write_bytes(b"\x00garbage" * 10), None, "not a readable safetensors file"),
    "pickle weights": (lambda d: (d / ADAPTER_FILE).write_bytes(pickle.dumps({"x": 1})), None, "not a readable safetensors file"),
    "malformed json": (lambda d: (d / VARIANT_FILE).write_text("{not json"), None, "malformed JSON"),
    "unknown variant key": (lambda d: (d / VARIANT_FILE).write_text('{"modulez": []}'), None, "Unknown key 'modulez'"),
    "other format": (lambda d: (d / META_FILE).write_text('{"format": 99}'), None, "`format` must be 1, got 99"),
    "no weights": (lambda d: (d / ADAPTER_FILE).unlink(), None, "lacks its weights file"),
    "not a variant dir": (lambda d: [f.unlink() for f in list(d.iterdir())], None, "is not a saved variant"),
}


@pytest.mark.parametrize("case", list(MISMATCHES))
def test_mismatched_load_fails_with_one_clear_line(case: str, saved_bert: Path, tmp_path: Path) -> None:
    tamper, make_model, expected = MISMATCHES[case]
    d = _copy(saved_bert, tmp_path / "v")
    tamper(d)
    before = {f.name: f.read_bytes() for f in d.iterdir()}
    model = make_model() if make_model else tiny_model("bert", "cls")
    with pytest.raises(UnipetlError) as err:
        load_variant(model, d)
    msg = str(err.value)
    assert expected in msg and "\n" not in msg, msg
    assert untouched(model)  # checks run before anything is applied
    assert {f.name: f.read_bytes() for f in d.iterdir()} == before  # nothing stored changed


def test_other_weights_load_when_asked(saved_bert: Path) -> None:
    model = tiny_model("bert", "cls", seed=1)
    realized = load_variant(model, saved_bert, check_weights=False)
    assert realized.variant.modules[0].kind == "lora"


def test_loading_never_unpickles(saved_bert: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_a: object, **_k: object) -> None:
        raise AssertionError("pickle / torch.load must never run when loading a variant")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch.serialization, "load", refuse)
    load_variant(tiny_model("bert", "cls"), saved_bert)


def test_run_out_dir_layout_loads(tmp_path: Path) -> None:
    """`unipetl run` directories (record.json + variant.safetensors) load too, tensors checked."""
    realized, ref = trained("bart", "mam:l=3,r=4")
    save_file({k: v.contiguous() for k, v in variant_state_dict(realized.model).items()}, str(tmp_path / "variant.safetensors"))
    (tmp_path / "record.json").write_text(json.dumps({"schema": 1, "model": "tiny-bart", "variant": realized.variant.to_dict()}))
    saved = read_saved(tmp_path)
    assert saved.base_model_id == "tiny-bart"
    fresh = tiny_model("bart", "seq2seq")
    load_variant(fresh, tmp_path)
    assert torch.allclose(logits(fresh, "bart"), ref, atol=1e-6, rtol=0)


def test_save_needs_a_realized_model(tmp_path: Path) -> None:
    with pytest.raises(UnipetlError, match="no variant applied"):
        save_variant(tiny_model("bert", "cls"), tmp_path, base_model_id="x")
    assert not any(tmp_path.iterdir())
