"""Benchmarks: the pure summaries on known inputs (fast), and each script end to end with --quick (slow).

The --quick runs are smoke tests only: they check that every script runs, writes its JSON and
Markdown, and that the numbers in them are consistent (no timing assertions: the machines are
shared and noisy).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import common, reproduce_sst2, search_efficiency  # noqa: E402


def _rec(acc: float, status: str = "ok") -> dict:
    return {"status": status, "metric": acc if status == "ok" else None, "preset": "x", "paper_percent": 0.487, "trainable_percent": 0.5,
            "step_seconds": 1.0}


def test_median_ratio_and_mean_std() -> None:
    assert common.median_ratio([(1.0, 2.0), (3.0, 3.0), (8.0, 2.0)]) == 1.0
    assert common.median_ratio([(1.0, 0.0), (2.0, 1.0)]) == 2.0  # a zero anchor is skipped
    assert common.fmt_mean_std([0.80, 0.82, 0.84]) == "82.0 ± 2.0"
    assert common.fmt_mean_std([0.5]) == "50.0 ± 0.0"


def test_peak_rss_reset_measures_only_what_follows() -> None:
    blob = bytearray(200 * 2**20)  # touch 200 MiB, then free it
    blob[:: 4096] = b"\x01" * len(blob[:: 4096])
    del blob
    before = common.peak_rss_bytes()
    if not common.reset_peak_rss():
        pytest.skip("no /proc/self/clear_refs on this platform")
    assert common.peak_rss_bytes() < before - 150 * 2**20


def test_make_batch_is_deterministic() -> None:
    a = common.make_batch("seq2seq", 120, 4, 16, 8, seed=1)
    b = common.make_batch("seq2seq", 120, 4, 16, 8, seed=1)
    assert all((a[k] == b[k]).all() for k in a)
    assert a["labels"].shape == (4, 8) and int(a["input_ids"].min()) >= 5


def test_reproduce_lessons_verdicts() -> None:
    records = {
        "full": [_rec(0.90), _rec(0.92)], "mam": [_rec(0.905), _rec(0.905)],
        "pa-ffn": [_rec(0.86), _rec(0.88)], "sa-ffn": [_rec(0.80), _rec(0.80)],
        "scaled-pa": [_rec(0.87), _rec(0.874)],  # +0.2 points, well inside the seed noise
        "pa-attn@2%": [_rec(0.85), _rec(0.85)], "pa-ffn@2%": [_rec(0.84), _rec(0.84), _rec(0.0, "failed")],
    }
    s = reproduce_sst2.summarize(records)
    lessons = {x["lesson"]: x for x in s["lessons"]}
    assert lessons["parallel > sequential (FFN, 0.5 %)"]["verdict"] == "holds (same sign on all 2 seeds)"
    assert lessons["parallel > sequential (FFN, 0.5 %)"]["difference"] == pytest.approx(0.07)
    assert lessons["parallel > sequential (FFN, 0.5 %)"]["paired"] == pytest.approx([0.06, 0.08])  # per seed: same data order, same head init
    assert lessons["scaled add (s = 4) > simple add (PA at FFN, 0.5 %)"]["verdict"] == "holds (mixed: better on 1 of 2 seeds)"
    assert lessons["FFN > attention at a larger budget (PA, 2 %)"]["verdict"] == "does not hold (same sign on all 2 seeds)"
    assert lessons["MAM close to full fine-tuning"]["difference"] == pytest.approx(-0.005)
    assert lessons["MAM close to full fine-tuning"]["verdict"].startswith("holds")
    assert "parallel > sequential (attention, 0.5 %)" not in lessons  # neither side was run
    row = next(r for r in s["rows"] if r["method"] == "pa-ffn@2%")
    assert row["seeds"] == 2 and row["failed"] == 1 and row["mean"] == pytest.approx(0.84)


def test_reproduce_methods_are_sized_by_accounting() -> None:
    from unipetl.spaces.accounting import count
    from unipetl.spaces.shapes import resolve_shape

    shape = resolve_shape("minilm")
    for m in reproduce_sst2.METHODS:
        if m.budget is None:
            continue
        frac = count(reproduce_sst2.resolve(m), shape).paper_params / shape.base_params
        assert 0.8 * m.budget < frac <= m.budget, m.label
    assert reproduce_sst2.resolve(reproduce_sst2.METHODS[-1]).name == "pa-ffn:r=98"  # 2 %: 4608·r ≤ 454,264


def test_search_efficiency_summary() -> None:
    def h(points: list[tuple[str | None, float, float]]) -> list[dict]:
        from unipetl.reports.frontier import hypervolume

        out, fr, me = [], [], []
        for i, (preset, f, m) in enumerate(points):
            fr.append(f)
            me.append(m)
            out.append({"trial": i, "preset": preset, "variant": None, "paper_fraction": f, "metric": m, "hypervolume": hypervolume(fr, me),
                        "hypervolume_over_chance": hypervolume(fr, me, ref_metric=0.72)})
        return out

    grid = h([("lora", 0.005, 0.80), ("prefix", 0.001, 0.75)])
    better = h([(None, 0.004, 0.70), (None, 0.0005, 0.81), (None, 0.01, 0.5)])
    worse = h([(None, 0.004, 0.60)])
    s = search_efficiency.summarize({"grid": grid, "default": better, "random": worse})
    rows = {r["study"]: r for r in s["rows"]}
    assert rows["grid"]["trials_to_grid_hv"] == 2
    assert rows["default"]["trials_to_grid_hv"] == 2  # (0.0005, 0.81) dominates both grid points
    assert rows["random"]["trials_to_grid_hv"] is None
    # over a 72 % reference the grid's prefix (75 %) still counts but the default's first point (70 %) does not
    assert rows["grid"]["trials_to_grid_hv_over_chance"] == 2 and rows["default"]["trials_to_grid_hv_over_chance"] == 2
    assert rows["default"]["final_hypervolume_over_chance"] == pytest.approx(math.log10(1 / 0.0005) * (0.81 - 0.72))
    rep = search_efficiency.summarize_repeats([{"grid": grid, "default": better, "random": worse}, {"grid": grid, "default": worse, "random": better}])
    assert rep["medians"]["default"]["trials_to_grid_hv"] == {"values": [2, None], "median": None}  # unreached counts as ∞: median of (2, ∞)
    assert rep["medians"]["grid"]["trials_to_grid_hv"] == {"values": [2, 2], "median": 2}
    assert s["dominance"]["default"] == {"lora": True, "prefix": True}
    assert s["dominance"]["random"] == {"lora": False, "prefix": False}


def test_grid_presets_fill_the_ladder() -> None:
    names = search_efficiency.grid_presets(24)
    assert len(names) == 24 == len(set(names))
    assert names[0] == "pa-ffn:r=24" and "bitfit" in names and "lora:r=4,s=2.0" in names


def _run(script: str, tmp_path: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--quick", "--out", str(tmp_path)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


@pytest.mark.slow
def test_overhead_quick(tmp_path: Path) -> None:
    proc = _run("overhead.py", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp_path / "overhead_quick.json").read_text())
    assert data["lora_equivalence"]["max_abs_diff"] <= 1e-5
    assert data["lora_equivalence"]["max_abs_change_vs_base"] > 1e-3  # the copied LoRA weights really act
    assert {r["anchor"] for r in data["rows"]} == {"peft", "adapters"}
    for r in data["rows"]:
        assert r["anchor_trainable"] == r["unipetl_trainable"]  # same method, same sizes
        assert r["time_ratio"] > 0 and r["memory_ratio"] > 0
        assert r["anchor_saved_mb"] > 0 and r["unipetl_saved_mb"] > 0  # activations kept for backward, measured on both sides
    assert data["anchor_versions"]["transformers"].startswith("4.")
    assert "time ratio" in (tmp_path / "overhead_quick.md").read_text()


@pytest.mark.slow
def test_reproduce_sst2_quick(tmp_path: Path) -> None:
    proc = _run("reproduce_sst2.py", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp_path / "reproduce_sst2_quick.json").read_text())
    rows = {r["method"]: r for r in data["rows"]}
    assert set(rows) == {"probe", "lora"}
    assert rows["lora"]["paper_percent"] == pytest.approx(100 * 110592 / 22713216)
    assert rows["probe"]["paper_percent"] == 0
    for r in rows.values():
        assert r["seeds"] == 1 and 0.0 <= r["mean"] <= 1.0


@pytest.mark.slow
def test_search_efficiency_quick(tmp_path: Path) -> None:
    proc = _run("search_efficiency.py", tmp_path, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp_path / "search_efficiency_quick.json").read_text())
    assert set(data["histories"]) == {"grid", "random", "default"}
    for kind, hist in data["histories"].items():
        assert len(hist) == 3, kind
        hv = [p["hypervolume"] for p in hist]
        assert hv == sorted(hv) and hv[-1] > 0  # a hypervolume never shrinks as trials are added
    assert [p["preset"] for p in data["histories"]["grid"]] == search_efficiency.grid_presets(3)
    assert all(p["preset"] is None for p in data["histories"]["random"])
