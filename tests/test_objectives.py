"""Frontiers over chosen objectives (reports.objectives): metric vs params, latency, … ."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from unipetl.reports.build import build_sections
from unipetl.reports.frontier import frontier_of, nondominated, pareto_mask
from unipetl.reports.load import frame, record_row
from unipetl.reports.objectives import COSTS, DEFAULT, parse_objectives
from unipetl.reports.summary import markdown
from unipetl.spaces.registry import UnipetlError

_spec = importlib.util.spec_from_file_location("report_records", Path(__file__).parent / "fixtures" / "report_records.py")
rr = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rr)  # type: ignore[union-attr]


def _with_latency(rec: dict, ms: float | None, batched: float | None = None) -> dict:
    return {**rec, "latency": None if ms is None else {"batch1_ms": 2 * ms, "batch_ms_per_example": batched or ms / 4, "batch_size": 64, "merged": 0,
                                                        "batch1_ratio": ms, "batch_ratio": (batched or ms / 4) / 2}}


def latency_set() -> list[dict]:
    """Params-frontier A (prefix), C (adapter), F (MAM); B (merged LoRA) is dominated in params
    but is the fastest; E is dominated on every objective; G has no latency measured."""
    return [
        _with_latency(rr.record("prefix:l=5", 0.001, 0.80), 9.0),   # A
        _with_latency(rr.record("lora:r=1", 0.002, 0.79), 5.0),     # B: slower-to-train but no inference cost
        _with_latency(rr.record("pa-ffn:r=8", 0.005, 0.85, named=False), 7.0),  # C
        _with_latency(rr.record("houlsby:r=4", 0.01, 0.85), 8.0),   # E: dominated by C (same metric, more params, slower)
        _with_latency(rr.record("mam:l=5,r=16,s=4", 0.02, 0.90), 12.0),  # F
        _with_latency(rr.record("sa-ffn:r=8", 0.004, 0.70), None),  # G: no latency
    ]


def _table(records: list[dict]) -> pl.DataFrame:
    return frame([record_row(r, study="s1", trial=i, state="COMPLETE") for i, r in enumerate(records)])


def test_parse_objectives_and_errors() -> None:
    assert parse_objectives(None) == DEFAULT == ("metric", "params")
    assert parse_objectives("accuracy,params,latency") == ("metric", "params", "latency")
    assert parse_objectives(["metric", "latency"]) == ("metric", "latency")
    for bad, msg in [("params,metric", "must start with the metric"), ("metric", "at least one cost"),
                     ("metric,latncy", "unknown cost 'latncy'.*latency"), ("metric,params,params", "names a cost twice")]:
        with pytest.raises(UnipetlError, match=msg):
            parse_objectives(bad)


def test_nondominated_agrees_with_the_2d_pareto_mask_and_handles_3d() -> None:
    f, m = [0.1, 0.1, 0.2, 0.05, 0.05], [0.5, 0.5, 0.5, 0.4, 0.6]
    assert nondominated([m, f], [True, False]).tolist() == pareto_mask(f, m).tolist()
    # a third objective rescues a point dominated in the first two
    lat = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert nondominated([m, f, lat], [True, False, False]).tolist() == [True, False, False, True, True]


def test_latency_objective_puts_the_fast_lora_on_the_frontier() -> None:
    df = _table(latency_set())
    assert frontier_of(df)["trial"].to_list() == [0, 2, 4]  # metric vs params: A, C, F (G is dominated by C)
    three = frontier_of(df, ("metric", "params", "latency"))
    assert sorted(three["trial"].to_list()) == [0, 1, 2, 4]  # B joins: fastest; E stays off; G cannot be placed
    assert three.filter(pl.col("trial") == 1)["latency_ratio"].to_list() == [5.0]
    two = frontier_of(df, ("metric", "latency"))
    assert sorted(two["trial"].to_list()) == [1, 2, 4]  # metric vs latency only: A (9 ms, 0.80) is dominated by C (7 ms, 0.85)


def test_latency_is_the_mean_over_seeds_of_a_design_point() -> None:
    recs = [_with_latency(r, ms) for r, ms in zip(rr.seeded("lora:r=1", 0.002, [0.79, 0.80, 0.81], 0), [4.0, 5.0, 9.0], strict=True)]
    front = frontier_of(_table(recs), ("metric", "latency"))
    assert front["latency_ratio"].to_list() == [pytest.approx(6.0)] and front["n_seeds"].to_list() == [3]


def test_report_shows_the_chosen_frontier(tmp_path: Path) -> None:
    sections = build_sections(_table(latency_set()), with_plots=False, objectives=("metric", "params", "latency"))
    md = markdown(sections, ["test"])
    assert "Frontier over accuracy ↑, paper params (fraction of the model) ↓, inference latency, batch 1 (× backbone) ↓" in md
    assert f"| {COSTS['latency'].label} |" in md and "| 0.2% | 5 | 0.79 (1 seed, no interval) |" in md


def test_report_cli_refuses_bad_objectives_with_one_line(tmp_path: Path) -> None:
    rec = tmp_path / "record.json"
    import json

    rec.write_text(json.dumps(latency_set()[0]))
    out = subprocess.run([sys.executable, "-m", "unipetl", "report", "--records", str(rec), "--objectives", "metric,speed", "--out", str(tmp_path / "r")],
                         capture_output=True, text=True)
    assert out.returncode == 2 and not (tmp_path / "r").exists()
    assert out.stderr.strip().count("\n") == 0 and "unknown cost 'speed'" in out.stderr
    ok = subprocess.run([sys.executable, "-m", "unipetl", "report", "--records", str(rec), "--objectives", "accuracy,params,latency",
                         "--out", str(tmp_path / "r"), "--quiet"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    html = (tmp_path / "r" / "report.html").read_text()
    assert html.count('data-x="latency_ratio"') == 1 and html.count('data-x="paper_fraction"') == 1


def test_memory_objective_is_the_growth_over_the_loaded_model() -> None:
    """The `memory` cost is peak_memory_growth_bytes (what training added over what was in use when
    the loop began), not the peak: on CPU the peak carries whatever the worker keeps resident. P has
    the larger peak (its worker kept a second backbone) but the smaller growth, so on (metric,
    memory) it dominates Q; a record from before the growth was measured cannot be placed; over
    seeds the design's figure is the largest growth."""
    MiB = 2**20
    p = {**rr.record("lora:r=1", 0.002, 0.80), "peak_memory_bytes": 1300 * MiB, "peak_memory_growth_bytes": 400 * MiB}
    q = {**rr.record("pa-ffn:r=8", 0.005, 0.79, named=False), "peak_memory_bytes": 1200 * MiB, "peak_memory_growth_bytes": 500 * MiB}
    old = {**rr.record("prefix:l=5", 0.001, 0.85), "peak_memory_bytes": 100 * MiB}  # no growth: an older record
    front = frontier_of(_table([p, q, old]), ("metric", "memory"))
    assert front["trial"].to_list() == [0] and front["peak_memory_growth_bytes"].to_list() == [400 * MiB]
    assert COSTS["memory"].of_record(p) == 400 * MiB and COSTS["memory"].of_record(old) is None
    seeds = [{**r, "peak_memory_growth_bytes": g} for r, g in zip(rr.seeded("lora:r=1", 0.002, [0.79, 0.80, 0.81], 0), [3, 9, 5], strict=True)]
    assert frontier_of(_table(seeds), ("metric", "memory"))["peak_memory_growth_bytes"].to_list() == [9]
