"""Method-aware default learning rates on the real model (slow tier, CI runs it).

SST-2 / MiniLM, 4,000 training sentences, 1 epoch, the full dev set (872), no `lr` given: every
method trains at its kinds' central rates (unipetl.spaces.lr). Before, the one default (1e-4)
left LoRA r=8 at chance (51.4 %). Measured on the quiet 2-core machine: LoRA 80.0, prefix 77.4,
MAM 77.1, PA 79.6; the floors leave room for float / thread-count differences.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from unipetl.evaluators.trial import TrialConfig, run_trial
from unipetl.spaces.lr import LR_CENTRAL
from unipetl.spaces.presets import parse_preset

DATA = os.environ.get("UNIPETL_DATA_DIR") or str(Path(__file__).resolve().parents[2] / "shared" / "data")
CASES = [("lora:r=8", 0.78, {"lora"}), ("prefix:l=16", 0.72, {"prefix"}), ("mam:l=16,r=16", 0.75, {"prefix", "adapter"}), ("pa-ffn:r=16", 0.77, {"adapter"})]


@pytest.mark.slow
@pytest.mark.parametrize(("preset", "floor", "kinds"), CASES)
def test_default_lr_trains_every_method(preset: str, floor: float, kinds: set[str]) -> None:
    rec = run_trial(TrialConfig(task="sst2", model="minilm", variant=parse_preset(preset), data_dir=DATA, max_train_examples=4000, epochs=1.0))
    assert rec["status"] == "ok" and rec["eval_examples"] == 872
    assert rec["lr"]["source"] == "method" and set(rec["lr"]["rates"]) == kinds | {"head"}
    assert all(rec["lr"]["rates"][k] == LR_CENTRAL[k] for k in kinds)
    assert rec["baseline_metric"] == pytest.approx(444 / 872, abs=0.02)  # majority class of the training subset, scored on dev
    assert rec["metric"] >= floor, f"{preset}: {rec['metric']:.4f} < {floor}"
