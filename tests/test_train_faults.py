"""Training-loop faults, each as a kind: accumulation normalises over the whole window; the
saved weights are the ones whose metric was recorded."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from unipetl.evaluators.tasks import get_task
from unipetl.evaluators.train import accumulate
from unipetl.evaluators.trial import TrialConfig, run_trial
from unipetl.spaces.presets import parse_preset
from unipetl.spaces.realize import apply_variant
from unipetl.spaces.testing import randomize_variant, tiny_model

DATA = os.environ.get("UNIPETL_DATA_DIR") or str(Path(__file__).resolve().parents[2] / "shared" / "data")


def _seq2seq_batch(model: torch.nn.Module, sources: list[list[int]], targets: list[list[int]]) -> dict[str, torch.Tensor]:
    """What DataCollatorForSeq2Seq hands the loop: padded inputs, labels padded with -100, decoder inputs."""
    n, m = max(map(len, sources)), max(map(len, targets))
    ids = torch.tensor([s + [1] * (n - len(s)) for s in sources])
    mask = torch.tensor([[1] * len(s) + [0] * (n - len(s)) for s in sources])
    labels = torch.tensor([t + [-100] * (m - len(t)) for t in targets])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "decoder_input_ids": model.prepare_decoder_input_ids_from_labels(labels=labels)}


def _grads(model: torch.nn.Module, task: object, window: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    accumulate(task, model, window, label_smoothing=0.1)  # type: ignore[arg-type]
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(("family", "preset"), [("bart", "lora:r=4"), ("t5", "lora:r=4"), ("bart", "mam:l=3,r=4"), ("bart", "prompt:l=3")])
def test_accumulation_equals_one_batch_whatever_the_target_lengths(family: str, preset: str) -> None:
    """batch 2 × accumulation 1 == batch 1 × accumulation 2, targets of 2 and 9 tokens (was: relative error 1.01, cosine 0.85)."""
    model = tiny_model(family, "seq2seq", dropout_rate=0.0) if family == "t5" else tiny_model(family, "seq2seq", dropout=0.0, attention_dropout=0.0)
    apply_variant(model, parse_preset(preset))
    randomize_variant(model, std=0.3)
    model.train()
    task = get_task("xsum")
    src, tgt = [[5, 6, 7, 8], [9, 10, 11, 12, 13, 14]], [[20, 21], [30, 31, 32, 33, 34, 35, 36, 37, 38]]
    one = _grads(model, task, [_seq2seq_batch(model, src, tgt)])
    two = _grads(model, task, [_seq2seq_batch(model, src[:1], tgt[:1]), _seq2seq_batch(model, src[1:], tgt[1:])])
    assert one and set(one) == set(two)
    for n in one:  # relative to the gradient's norm (float error of padded vs unpadded attention is ~1e-6)
        assert (two[n] - one[n]).norm() <= 1e-5 * one[n].norm() + 1e-9, n


def test_classification_accumulation_with_a_short_last_micro_batch() -> None:
    model = tiny_model("bert", "cls", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    apply_variant(model, parse_preset("pa-ffn:r=4"))
    model.train()
    task = get_task("sst2")
    ids = torch.randint(5, 100, (3, 6), generator=torch.Generator().manual_seed(1))
    full = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([0, 1, 1])}
    parts = [{k: v[:2] for k, v in full.items()}, {k: v[2:] for k, v in full.items()}]  # 2 + 1 examples
    one, two = _grads(model, task, [full]), _grads(model, task, parts)
    for n in one:
        assert (two[n] - one[n]).norm() <= 1e-5 * one[n].norm() + 1e-9, n


@pytest.mark.parametrize("preset", ["lora:r=4", "prefix:l=3", "pa-ffn:r=4"])
def test_saved_weights_reproduce_the_recorded_metric(preset: str, tmp_path: Path) -> None:
    """The best evaluation's tensors are what the model ends with and what is saved; a reload scores the recorded metric."""
    from unipetl.evaluators.data import prepare
    from unipetl.evaluators.models import load_model
    from unipetl.evaluators.train import evaluate_split
    from unipetl.spaces.io import load_variant

    cfg = TrialConfig(task="rte", model="tiny-bert", variant=parse_preset(preset), data_dir=DATA, max_train_examples=64, max_eval_examples=32,
                      max_steps=8, batch_size=8, lr_scale=8.0, max_length=32, eval_every=1, warmup_ratio=0.0)
    rec = run_trial(cfg, out_dir=tmp_path)
    curve = [c["metrics"]["accuracy"] for c in rec["curve"]]
    assert rec["weights_step"] == rec["best_step"] and rec["metric"] == max(curve)
    task = get_task("rte")
    loaded = load_model("tiny-bert", task, data_dir=DATA, max_train=64, seed=0)
    load_variant(loaded.model, tmp_path)
    data = prepare(task, loaded.tokenizer, data_dir=DATA, max_train=64, max_eval=32, max_length=rec["train_settings"]["max_length"], model_key=loaded.key)
    again = evaluate_split(task, loaded.model, loaded.tokenizer, data.eval["eval"], batch_size=16, device=torch.device("cpu"))
    assert again["accuracy"] == rec["metric"]


def test_best_step_before_the_last_is_what_is_saved(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Force the best evaluation to an early step: the saved weights are that step's, not the last."""
    from unipetl.evaluators import train as train_mod

    real = train_mod.evaluate_split
    scores = iter([0.9, 0.1, 0.2, 0.3])
    snapshots: list[dict[str, torch.Tensor]] = []

    def fake(task, model, tokenizer, ds, **kw):  # type: ignore[no-untyped-def]
        out = real(task, model, tokenizer, ds, **kw)
        snapshots.append({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})
        return {**out, "accuracy": next(scores)}

    monkeypatch.setattr(train_mod, "evaluate_split", fake)
    cfg = TrialConfig(task="rte", model="tiny-bert", variant=parse_preset("lora:r=4"), data_dir=DATA, max_train_examples=64, max_eval_examples=16,
                      max_steps=4, batch_size=8, max_length=32, eval_every=1, warmup_ratio=0.0)
    rec = run_trial(cfg, out_dir=tmp_path)
    assert (rec["best_step"], rec["weights_step"], rec["metric"]) == (1, 1, 0.9)
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "adapter.safetensors"))
    first, last = snapshots[0], snapshots[-1]
    changed = [n for n in first if not torch.equal(first[n], last[n])]
    assert changed  # training moved the weights after step 1 …
    for n in changed:  # … and the file holds step 1's
        key = next(k for k in saved if k.endswith(n) or n.endswith(k))
        assert torch.equal(saved[key], first[n]), n


@pytest.mark.parametrize("model", ["tiny-bert", "tiny-roberta", "tiny-gpt2", "tiny-llama", "tiny-bart"])
def test_prompt_tokens_leave_room_in_the_position_table(model: str, tmp_path: Path) -> None:
    """Inputs at the tokenization limit plus l soft tokens must fit the model's positions
    (was: tiny-bert, prompt:l=8, 150-word texts → "RuntimeError … (136) must match … (128)")."""
    import json

    words = ["good", "bad", "movie", "plot", "actor", "scene"]
    rows = [{"text": " ".join(words[(i + j) % 6] for j in range(150)), "label": i % 2} for i in range(16)]
    for split in ("train", "dev"):
        (tmp_path / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    (tmp_path / "long.yaml").write_text("name: long\nkind: classification\ndata_files: {train: train.jsonl, eval: dev.jsonl}\n"
                                        "text_fields: [text]\nlabel_field: label\nmetrics: [accuracy]\nmax_length: 512\n", encoding="utf-8")
    cfg = TrialConfig(task=str(tmp_path / "long.yaml"), model=model, variant=parse_preset("prompt:l=8"), max_steps=1, batch_size=4)
    rec = run_trial(cfg)
    assert rec["status"] == "ok", rec["error"]
    assert rec["train_settings"]["max_length"] == 128 - 8  # 128 usable positions in every tiny config (RoBERTa: 130 − 2)
