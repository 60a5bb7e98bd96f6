"""`unipetl run` end to end: record.json, the variant's weights (reloadable), bad input → exit 2, and the slow MiniLM check."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from helpers import DATA
from safetensors.torch import load_file

from unipetl.evaluators.models import load_model
from unipetl.evaluators.tasks import get_task
from unipetl.search.cli import main
from unipetl.spaces.io import load_variant
from unipetl.spaces.presets import parse_preset
from unipetl.spaces.realize import apply_variant


def test_run_writes_record_and_reloadable_weights(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from unipetl.evaluators import train as train_mod

    captured: dict[str, torch.nn.Module] = {}
    real = train_mod.train_and_evaluate

    def spy(task, model, *a, **kw):  # type: ignore[no-untyped-def]
        captured["model"] = model
        return real(task, model, *a, **kw)

    monkeypatch.setattr(train_mod, "train_and_evaluate", spy)
    out = tmp_path / "run"
    rc = main(["run", "--task", "sst2", "--model", "tiny-bert", "--preset", "mam:l=4,r=8,s=2", "--data-dir", DATA, "--max-train-examples", "32",
               "--max-eval-examples", "16", "--max-steps", "3", "--batch-size", "8", "--lr", "1e-3", "--max-length", "32", "--seed", "1", "--out", str(out)])
    assert rc == 0
    stdout = capsys.readouterr().out
    rec = json.loads((out / "record.json").read_text())
    assert f"accuracy = {rec['metric']:.4f}" in stdout
    for key in ("status", "task", "model", "variant", "paper_params", "trainable_params", "paper_percent", "metrics", "wall_seconds"):
        assert key in rec
    assert (rec["status"], rec["task"], rec["model"], rec["seed"]) == ("ok", "sst2", "tiny-bert", 1)
    assert rec["preset"].startswith("mam:") and rec["train_settings"]["steps"] == 3
    tensors = load_file(str(out / "adapter.safetensors"))
    assert all("petl" in k or k.startswith("classifier") for k in tensors)
    assert sum(t.numel() for t in tensors.values()) == rec["trainable_params"] + rec["head_params"]

    # reload into a fresh model with the same variant: the trained model's logits, to 1e-5
    fresh = load_model("tiny-bert", get_task("sst2"), data_dir=DATA, max_train=32, seed=1)
    realized = load_variant(fresh.model, out)  # safetensors + variant.json + identity checks
    assert realized.variant == parse_preset("mam:l=4,r=8,s=2")
    ids = torch.tensor([[1, 5, 9, 14, 2, 0], [1, 7, 3, 2, 0, 0]])
    mask = (ids != 0).long()
    trained = captured["model"].eval()
    realized.model.eval()
    with torch.no_grad():
        want = trained(input_ids=ids, attention_mask=mask).logits
        got = realized.model(input_ids=ids, attention_mask=mask).logits
        untrained = apply_variant(load_model("tiny-bert", get_task("sst2"), data_dir=DATA, max_train=32, seed=1).model,
                                  parse_preset("mam:l=4,r=8,s=2")).model.eval()(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(untrained, want, atol=1e-4)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--task", "sst3", "--model", "tiny-bert", "--preset", "lora"], "Unknown task 'sst3'. Did you mean: sst2?"),
        (["--task", "sst2", "--model", "minilmm", "--preset", "lora", "--data-dir", DATA], "Unknown model 'minilmm'. Did you mean: minilm?"),
        (["--task", "sst2", "--model", "tiny-bert", "--preset", "lora", "--data-dir", DATA, "--batch-size", "0"], "`batch_size` should be a positive integer, got 0."),
        (["--task", "sst2", "--model", "tiny-bert", "--preset", "lora", "--data-dir", "/nonexistent/dir"], "`data_dir` '/nonexistent/dir' is not a directory."),
    ],
)
def test_bad_input_exits_2_with_one_line(argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["run", *argv, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err == f"unipetl run: error: {message}"
    assert not (tmp_path / "o").exists()


def test_failed_trial_exits_1_and_still_writes_the_record(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["run", "--task", "rte", "--model", "tiny-bert", "--preset", "full", "--data-dir", DATA, "--max-train-examples", "16",
               "--max-eval-examples", "8", "--max-steps", "3", "--batch-size", "8", "--lr", "1e30", "--max-length", "32", "--out", str(tmp_path)])
    assert rc == 1
    rec = json.loads((tmp_path / "record.json").read_text())
    assert rec["status"] == "failed" and rec["error"].startswith("loss became")
    assert not (tmp_path / "adapter.safetensors").exists()
    assert "trial failed: loss became" in capsys.readouterr().err


@pytest.mark.slow
def test_minilm_lora_sst2_reaches_78(tmp_path: Path) -> None:
    """4,000 SST-2 examples, 1 epoch, full dev set, LoRA r=8 on the packaged MiniLM: ≥ 78 % dev accuracy."""
    t0 = time.perf_counter()
    rc = main(["run", "--task", "sst2", "--model", "minilm", "--preset", "lora:r=8", "--data-dir", DATA, "--max-train-examples", "4000",
               "--epochs", "1", "--lr", "2e-3", "--batch-size", "32", "--out", str(tmp_path)])
    wall = time.perf_counter() - t0
    rec = json.loads((tmp_path / "record.json").read_text())
    assert rc == 0 and rec["status"] == "ok"
    assert rec["train_settings"]["eval_examples"]["eval"] == 872
    print(f"minilm lora r=8 sst2: accuracy {rec['metric']:.4f}, wall {wall:.0f} s")
    assert rec["metric"] >= 0.78
