"""The training loop: trainable-only updates, pruning, best evaluation, accumulation, NaN → failed, the record."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import DATA

from unipetl.evaluators import train as train_mod
from unipetl.evaluators.record import RECORD_KEYS
from unipetl.evaluators.trial import TrialConfig, run_trial
from unipetl.spaces.presets import parse_preset
from unipetl.spaces.registry import UnipetlError


def _cfg(**kw: object) -> TrialConfig:
    base = dict(task="rte", model="tiny-bert", variant=parse_preset("lora:r=4"), data_dir=DATA, max_train_examples=32, max_eval_examples=8,
                max_steps=4, batch_size=8, lr=1e-3, max_length=32, eval_every=2)
    base.update(kw)
    return TrialConfig(**base)  # type: ignore[arg-type]


def test_record_has_exactly_the_contract_fields() -> None:
    rec = run_trial(_cfg())
    assert tuple(rec) == RECORD_KEYS
    assert rec["schema"] == 1 and rec["status"] == "ok" and rec["error"] is None and rec["fidelity"] == "final"
    assert rec["preset"] == parse_preset("lora:r=4").name == "lora:r=4,s=2.0" and rec["variant"]["modules"][0]["kind"] == "lora"
    # LoRA on q, v of 2 layers, d = 32, r = 4: 2 · 2 · 4 · (32 + 32) = 1,024; head = classifier 32·2 + 2 = 66 (the pooler is backbone)
    assert (rec["paper_params"], rec["trainable_params"], rec["head_params"]) == (1024, 1024, 66)
    assert rec["paper_fraction"] == pytest.approx(rec["paper_params"] / rec["base_params"])
    assert rec["paper_percent"] == pytest.approx(100 * rec["paper_fraction"])
    assert rec["train_tokens_per_second"] > 0 and rec["step_seconds"] > 0 and rec["peak_memory_bytes"] > 0 and rec["wall_seconds"] > 0
    assert rec["versions"]["torch"] == torch.__version__ and "transformers" in rec["versions"]
    assert rec["device"] == "cpu" and rec["seed"] == 0 and rec["train_settings"]["lr"] == 1e-3
    json.loads(json.dumps(rec))


def test_peak_memory_is_this_trials_not_the_processes() -> None:
    """A worker runs many trials in one process: a trial's peak must not be a larger earlier one's,
    nor include memory freed before it that the C heap kept resident."""
    import sys

    import numpy as np

    from unipetl.evaluators import memory

    run_trial(_cfg())  # imports, data and model caches: what every later trial of this process finds resident
    before = memory.rss_bytes()
    blob = np.ones(400 * 2**20, dtype=np.uint8)  # 400 MiB resident, then freed: the process's lifetime peak includes it
    del blob
    assert memory.peak_rss_bytes() >= before + 300 * 2**20  # the process's peak (and ru_maxrss, the old reading) holds the blob
    rec = run_trial(_cfg())
    assert sys.platform.startswith("linux") and rec["peak_memory_kind"] == memory.CPU_RESET
    assert 0.8 * before <= rec["peak_memory_bytes"] < before + 150 * 2**20  # a repeat tiny-bert trial adds little

    # freed but resident: 300 chunks of 1 MiB below glibc's mmap threshold (raised by freeing a 16 MiB block) stay in the heap
    big = bytearray(16 * 2**20)
    del big
    chunks = [bytearray(2**20) for _ in range(300)]
    last = chunks[-1]  # pins the heap's top, so glibc cannot shrink it on its own
    del chunks
    assert memory.rss_bytes() > before + 200 * 2**20
    again = run_trial(_cfg())
    assert 0.8 * before <= again["peak_memory_bytes"] < before + 150 * 2**20, "the peak counted memory freed before the trial"
    assert 0 <= again["peak_memory_growth_bytes"] < 150 * 2**20 and again["peak_memory_growth_bytes"] <= again["peak_memory_bytes"] - 0.5 * before
    assert len(last) == 2**20


def test_best_evaluation_is_kept_and_seeds_reproduce() -> None:
    a = run_trial(_cfg(max_steps=6, eval_every=1, seed=3))
    vals = [c["metrics"]["accuracy"] for c in a["curve"]]
    assert [c["step"] for c in a["curve"]] == [1, 2, 3, 4, 5, 6]
    assert a["metric"] == max(vals) and a["best_step"] == a["curve"][vals.index(max(vals))]["step"]
    assert a["metrics"] == a["curve"][vals.index(max(vals))]["metrics"]
    b = run_trial(_cfg(max_steps=6, eval_every=1, seed=3))
    assert [c["loss"] for c in a["curve"]] == pytest.approx([c["loss"] for c in b["curve"]], abs=1e-6)


def test_report_true_prunes() -> None:
    seen: list[tuple[int, float]] = []

    def report(step: int, value: float) -> bool:
        seen.append((step, value))
        return step >= 2

    rec = run_trial(_cfg(max_steps=8, eval_every=1), report=report)
    assert rec["status"] == "pruned" and rec["fidelity"] == "partial"
    assert [s for s, _ in seen] == [1, 2] and len(rec["curve"]) == 2 and rec["train_settings"]["steps"] == 2


def test_grad_accumulation_and_epochs_count_steps() -> None:
    # 32 examples / batch 8 = 4 micro-batches per epoch; accumulating 2 → 2 optimizer steps per epoch
    rec = run_trial(_cfg(max_steps=None, epochs=2, grad_accum=2, eval_every=None))
    assert rec["train_settings"]["steps"] == 4 and [c["step"] for c in rec["curve"]] == [2, 4]


def test_only_trainable_parameters_change(monkeypatch: pytest.MonkeyPatch) -> None:
    captured: dict[str, object] = {}
    real = train_mod.train_and_evaluate

    def spy(task, model, *a, **kw):  # type: ignore[no-untyped-def]
        captured["before"] = {n: p.detach().clone() for n, p in model.named_parameters()}
        captured["model"] = model
        return real(task, model, *a, **kw)

    monkeypatch.setattr(train_mod, "train_and_evaluate", spy)
    rec = run_trial(_cfg(variant=parse_preset("pa-ffn:r=4")))
    assert rec["status"] == "ok"
    model = captured["model"]
    before = captured["before"]
    for n, p in model.named_parameters():  # type: ignore[attr-defined]
        changed = not torch.equal(before[n], p.detach())  # type: ignore[index]
        if p.requires_grad and ("classifier" in n or "petl" in n and "up" in n):
            assert changed, n
        if not p.requires_grad:
            assert not changed, n


def test_nan_loss_ends_as_failed() -> None:
    # a learning rate of 1e30 blows the weights up after the first step: the loss turns inf / nan
    rec = run_trial(_cfg(lr=1e30, max_steps=4, variant=parse_preset("full")))
    assert rec["status"] == "failed" and rec["fidelity"] == "partial"
    assert rec["error"].startswith("loss became") and ("nan" in rec["error"] or "inf" in rec["error"])
    assert rec["metric"] is None


def test_exception_during_training_ends_as_failed(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_a: object, **_k: object) -> torch.Tensor:
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(train_mod, "_loss_sum", boom)
    rec = run_trial(_cfg())
    assert rec["status"] == "failed" and rec["error"] == "RuntimeError: CUDA out of memory (simulated)"


def test_bad_config_raises_before_training() -> None:
    with pytest.raises(UnipetlError, match=r"`batch_size` should be a positive integer, got 0"):
        _cfg(batch_size=0)
    with pytest.raises(UnipetlError, match=r"Unknown key 'learning_rate' in trial config"):
        TrialConfig.from_dict({"task": "rte", "model": "tiny-bert", "variant": {}, "learning_rate": 1.0})
    with pytest.raises(UnipetlError, match=r"`layers` holds 7"):
        run_trial(_cfg(variant=parse_preset("lora:r=2").replace(modules=(parse_preset("lora:r=2").modules[0].__class__(site="ffn", kind="adapter", size=2, layers=(7,)),))))
    cfg = _cfg()
    assert TrialConfig.from_dict(cfg.to_dict()) == cfg
