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

from benchmarks import common, findings_null, peak_memory, reproduce_sst2, rung_signal, search_efficiency  # noqa: E402


def _rec(acc: float | None, scale: float = 1.0, seed: int = 0, kind: str = "adapter", status: str = "ok") -> dict:
    """A trial record as `run_trial` writes it, with only the fields the summaries read."""
    return {"status": status, "metric": acc if status == "ok" else None, "seed": seed, "preset": "x", "paper_percent": 0.081,
            "trainable_percent": 0.09, "step_seconds": 0.2,
            "lr": {"rates": {kind: 2e-3 * scale, "head": 2e-3 * scale}, "source": "method", "scale": scale, "principal": kind}}


def _arm(sweep: dict[float, float | None], chosen: float, later: list[float | None]) -> list[dict]:
    """Seed-0 records at each scale (None: failed), then seeds 1, 2, … at `chosen` (None: failed)."""
    recs = [_rec(a, s, 0, status="ok" if a is not None else "failed") for s, a in sweep.items()]
    return recs + [_rec(a, chosen, k, status="ok" if a is not None else "failed") for k, a in enumerate(later, start=1)]


def test_median_ratio_and_mean_std() -> None:
    assert common.median_ratio([(1.0, 2.0), (3.0, 3.0), (8.0, 2.0)]) == 1.0
    assert common.median_ratio([(1.0, 0.0), (2.0, 1.0)]) == 2.0  # a zero anchor is skipped
    assert common.fmt_mean_std([0.80, 0.82, 0.84]) == "82.0 ± 2.0"
    assert common.fmt_mean_std([0.5]) == "50.0 ± 0.0"


def test_make_batch_is_deterministic() -> None:
    a = common.make_batch("seq2seq", 120, 4, 16, 8, seed=1)
    b = common.make_batch("seq2seq", 120, 4, 16, 8, seed=1)
    assert all((a[k] == b[k]).all() for k in a)
    assert a["labels"].shape == (4, 8) and int(a["input_ids"].min()) >= 5


def test_reproduce_chooses_the_lr_scale_from_seed_0() -> None:
    choose = reproduce_sst2.choose_scale
    assert choose([_rec(0.80, 0.5), _rec(0.84, 1.0), _rec(0.82, 2.0)]) == 1.0
    assert choose([_rec(0.80, 0.5), _rec(0.80, 1.0), _rec(0.80, 2.0)]) == 1.0  # a tie goes to the scale nearest 1
    assert choose([_rec(0.80, 0.5), _rec(0.80, 2.0)]) == 0.5  # equally far from 1 in log: the smaller
    assert choose([_rec(0.80, 0.5), _rec(None, 2.0, status="failed"), _rec(0.95, 2.0, seed=1)]) == 0.5  # failed and seed-1 records never choose
    assert choose([_rec(0.80, 0.5), _rec(0.90, 4.0)], scales=(0.5, 1.0, 2.0)) == 0.5  # a scale outside --lr-scales does not take part
    assert choose([_rec(None, 1.0, status="failed")]) is None and choose([]) is None


def test_reproduce_summary_and_paired_lessons() -> None:
    records = {
        ("pa-ffn", 0.001): _arm({0.5: 0.80, 1.0: 0.84, 2.0: None}, 1.0, [0.86, 0.82]) + [_rec(0.99, 2.0, seed=1)],  # a stale seed 1 at ×2: ignored
        ("sa-ffn", 0.001): _arm({0.5: 0.78, 1.0: 0.78, 2.0: 0.79}, 2.0, [0.80, 0.77]),
        ("prefix", 0.001): _arm({0.5: 0.69, 1.0: 0.70, 2.0: 0.70}, 1.0, [0.71, 0.69]),
        ("mam", 0.005): _arm({0.5: 0.83, 1.0: 0.835, 2.0: 0.80}, 1.0, [0.845, None]),
        ("full", None): _arm({0.5: 0.84, 1.0: 0.82, 2.0: 0.81}, 0.5, [0.85, 0.845]),
    }
    s = reproduce_sst2.summarize_runs(records)
    rows = {(r["method"], r["budget"]): r for r in s["rows"]}
    pa = rows[("pa-ffn", 0.001)]
    assert pa["chosen_scale"] == 1.0 and pa["lr_sweep"] == {0.5: 0.80, 1.0: 0.84, 2.0: "failed"}
    assert pa["rates"] == {"adapter": 2e-3, "head": 2e-3} and pa["by_seed"] == {0: 0.84, 1: 0.86, 2: 0.82}
    assert pa["seeds_ok"] == 3 and pa["failed"] == 0
    assert pa["mean"] == pytest.approx(0.84) and pa["std"] == pytest.approx(0.02)
    half = 4.302652729749464 * 0.02 / math.sqrt(3)  # t_{2, 0.975} · s / √n
    assert (pa["ci_lo"], pa["ci_hi"]) == (pytest.approx(0.84 - half), pytest.approx(0.84 + half))
    sa = rows[("sa-ffn", 0.001)]
    assert sa["chosen_scale"] == 2.0 and sa["rates"] == {"adapter": 4e-3, "head": 4e-3} and sa["by_seed"] == {0: 0.79, 1: 0.80, 2: 0.77}
    mam = rows[("mam", 0.005)]
    assert mam["seeds_ok"] == 2 and mam["failed"] == 1 and mam["mean"] == pytest.approx(0.84)
    assert rows[("full", None)]["chosen_scale"] == 0.5

    lessons = {(x["lesson"], x["budget"]): x for x in s["lessons"]}
    par = lessons[("parallel > sequential (FFN)", 0.001)]  # each side at its own chosen scale, paired by seed
    assert par["seeds"] == [0, 1, 2] and par["diffs"] == pytest.approx([0.05, 0.06, 0.05])
    d_half = 4.302652729749464 * (0.01 / math.sqrt(3)) / math.sqrt(3)  # sd of (5, 6, 5) points = 1/√3 point
    assert par["effect"] == pytest.approx(0.16 / 3) and par["ci_lo"] == pytest.approx(0.16 / 3 - d_half)
    assert par["verdict"] == "holds"
    prefix = lessons[("head-wise attention wins at a small budget: prefix > PA at FFN", 0.001)]
    assert prefix["diffs"] == pytest.approx([-0.14, -0.15, -0.13]) and prefix["verdict"] == "reversed"
    close = lessons[("MAM close to full fine-tuning (≤ 1 point below)", 0.005)]
    assert close["seeds"] == [0, 1]  # MAM's seed 2 failed: only the seeds both sides have are paired
    assert close["diffs"] == pytest.approx([-0.005, -0.005]) and close["verdict"] == "holds"  # 0.5 point below full FT, within the 1-point margin
    assert lessons[("parallel > sequential (FFN)", 0.005)]["verdict"] == "not run (pa-ffn @ 0.5 %, sa-ffn @ 0.5 %)"
    assert lessons[("MAM close to full fine-tuning (≤ 1 point below)", 0.001)]["verdict"] == "not run (mam @ 0.1 %)"
    picked = reproduce_sst2.summarize_runs(records, selected={("pa-ffn", 0.001), ("sa-ffn", 0.001)})["lessons"]
    assert [(x["lesson"], x["budget"]) for x in picked] == [("parallel > sequential (FFN)", 0.001)]


def test_reproduce_one_pair_is_inconclusive_and_too_wide_a_gap_is_reversed() -> None:
    one = reproduce_sst2.summarize_runs({("pa-ffn", 0.005): _arm({1.0: 0.9}, 1.0, []), ("sa-ffn", 0.005): _arm({1.0: 0.5}, 1.0, [])}, (1.0,))
    par = next(x for x in one["lessons"] if x["lesson"] == "parallel > sequential (FFN)" and x["budget"] == 0.005)
    assert par["verdict"] == "inconclusive" and par["effect"] == pytest.approx(0.4) and par["ci_lo"] is None  # never a verdict from one pair
    far = reproduce_sst2.summarize_runs({("mam", 0.005): _arm({1.0: 0.80}, 1.0, [0.81, 0.79]), ("full", None): _arm({1.0: 0.84}, 1.0, [0.86, 0.85])},
                                        (1.0,))
    close = next(x for x in far["lessons"] if x["lesson"].startswith("MAM") and x["budget"] == 0.005)
    assert close["effect"] == pytest.approx(-0.05) and close["verdict"] == "reversed"  # the whole interval is > 1 point below


def test_reproduce_arms_are_sized_by_accounting() -> None:
    from unipetl.spaces.accounting import count
    from unipetl.spaces.shapes import resolve_shape

    shape = resolve_shape("minilm")
    for budget in reproduce_sst2.BUDGETS:
        for method in reproduce_sst2.SIZED:
            variant = reproduce_sst2.resolve((method, budget))
            assert variant is not None, (method, budget)
            assert 0.8 * budget < count(variant, shape).paper_params / shape.base_params <= budget, (method, budget)
    assert reproduce_sst2.resolve(("mam", 0.001)).name == "mam:l=3,r=1,s=4.0,mlp=0"  # MAM's l halves until size 1 fits
    assert reproduce_sst2.resolve(("pa-ffn", 0.005)).name == "pa-ffn:r=24"
    assert reproduce_sst2.resolve(("prompt", None)).name == "prompt:l=20"
    assert reproduce_sst2.resolve(("pa-ffn", 1e-6)) is None  # size 1 does not fit: the run skips it and says so
    assert reproduce_sst2.record_path(Path("r"), ("pa-ffn", 0.001), 0.5, 2).name == "pa-ffn__0.1pct__x0.5__seed2.json"
    assert reproduce_sst2.record_path(Path("r"), ("full", None), 1.0, 0).name == "full__ref__x1__seed0.json"


def test_search_efficiency_summary() -> None:
    def h(points: list[tuple[str | None, float, float]], seconds: float = 10.0) -> list[dict]:
        from unipetl.reports.frontier import hypervolume

        out, fr, me = [], [], []
        for i, (preset, f, m) in enumerate(points):
            fr.append(f)
            me.append(m)
            out.append({"trial": i, "preset": preset, "variant": None, "paper_fraction": f, "metric": m, "hypervolume": hypervolume(fr, me),
                        "hypervolume_over_chance": hypervolume(fr, me, ref_metric=0.72), "elapsed_s": seconds * (i + 1)})
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
    # equal wall time: the grid ended at 20 s; the default had 2 points by then, random 1 (below chance: HV 0)
    assert rows["default"]["hv_over_chance_at_grid_wall"] == rows["default"]["final_hypervolume_over_chance"]
    assert rows["random"]["hv_over_chance_at_grid_wall"] == 0.0 and rows["grid"]["seconds_to_grid_hv_over_chance"] == 20.0
    assert rows["default"]["seconds_to_grid_hv_over_chance"] == 20.0 and rows["random"]["seconds_to_grid_hv_over_chance"] is None
    # multi-fidelity: pruned tickets are cheap (4 s each); it reaches the full search's final HV over chance at 12 s of 30 s
    mf = h([(None, 0.004, 0.70), (None, 0.01, 0.5), (None, 0.0005, 0.81)], seconds=4.0)
    m = search_efficiency.summarize({"grid": grid, "default": better, "mf": mf})["mf"]
    assert m["full_wall_s"] == 30.0 and m["mf_seconds"] == 12.0 and m["wall_ratio"] == pytest.approx(0.4)
    assert m["mf_hv_over_chance_at_half_wall"] == pytest.approx(math.log10(1 / 0.0005) * (0.81 - 0.72))
    over = search_efficiency.summarize_repeats([{"grid": grid, "default": better, "mf": mf}, {"grid": grid, "default": better, "mf": worse}])
    assert over["mf_wall_ratio"] == {"values": [pytest.approx(0.4), None], "median": None}
    # an even count of repeats: a median trial number between two is printed as such, not refused
    two = search_efficiency.summarize_repeats([{"grid": grid, "default": better}, {"grid": grid, "default": h([(None, 0.004, 0.70), (None, 0.01, 0.5),
                                                                                                          (None, 0.0005, 0.81)])}])
    assert two["medians"]["default"]["trials_to_grid_hv_over_chance"] == {"values": [2, 3], "median": 2.5}
    table = search_efficiency.render_repeats(two, 2)
    assert "| default | 2, 3 | 2.5 |" in table and "| grid | 2, 2 | 2 |" in table


def test_rung_signal_on_known_curves() -> None:
    """Spearman ρ, the flat count and the front kept by MO-ASHA's top ⌊n/3⌋, per step and repeat."""
    ln2 = math.log(2)
    fa = [(0.001, 0.80), (0.002, 0.85), (0.004, 0.70), (0.0005, 0.60), (0.003, 0.75), (0.0002, 0.55)]  # final front: trials 0, 1, 3, 5
    rows = [{"repeat": 0, "trial": i, "paper_fraction": f, "metric": a, "losses": {7: ln2, 42: round(1 - a, 2)}} for i, (f, a) in enumerate(fa)]
    # repeat 1: trial 0 dominates the others at the end, but at step 49 the rung keeps trial 1
    rows += [{"repeat": 1, "trial": i, "paper_fraction": f, "metric": a, "losses": {49: v}} for i, (f, a, v) in enumerate([(0.001, 0.9, 0.5), (0.002, 0.5, 0.1), (0.003, 0.5, 0.2)])]
    got = {r["step"]: r for r in rung_signal.analyze(rows)}
    assert sorted(got) == [7, 42, 49]
    # step 7: every head still at ln 2, no order from the loss; the rank is then by size alone (5 and 3, both on the front)
    assert got[7]["spearman"] is None and got[7]["near_ln2"] == 6 and got[7]["front_recall"] == {0: {"kept": 2, "front": 4, "n": 6}}
    # step 42: loss = 1 − accuracy, a perfect order; the rung's first front is the final front, and the top 2 of 6 are on it
    assert got[42]["spearman"] == pytest.approx(1.0) and got[42]["near_ln2"] == 0 and got[42]["front_recall"] == {0: {"kept": 2, "front": 4, "n": 6}}
    # step 49: ranks (3, 1, 2) against (1, 2.5, 2.5): ρ = −1.5 / √3; the one kept (trial 1, the larger HV contribution) is not on the front
    assert got[49]["spearman"] == pytest.approx(-1.5 / math.sqrt(3)) and got[49]["front_recall"] == {1: {"kept": 0, "front": 1, "n": 3}}
    assert got[42]["front3_recall"] == {}  # no latency figures: no 3-objective view


def test_rung_signal_ranks_a_three_objective_front_both_ways() -> None:
    """Four designs of one size: accuracy 0.9 / 0.8 / 0.7 / 0.6 with batch-1 latency 1.3 / 1.2 /
    1.1 / 1.0 — every one is on the 3-objective front. At the rung the loss follows accuracy; a
    rung of 4 keeps 1. Ranked (loss, params) it keeps the most accurate design; ranked with
    latency all four are on the rung's first front and the hypervolume contributions decide
    (reference just past the worst point, so an inner point contributes most): it keeps the
    second — 1 of 4 either way, one front design gained and one lost."""
    rows = [{"repeat": 0, "trial": i, "paper_fraction": 0.004, "metric": a, "latency": lat, "losses": {42: 1 - a}}
            for i, (a, lat) in enumerate([(0.9, 1.3), (0.8, 1.2), (0.7, 1.1), (0.6, 1.0)])]
    (got,) = rung_signal.analyze(rows)
    assert got["front3_recall"] == {0: {"front": 4, "legacy": 1, "costs": 1, "n": 4, "gained": 1, "lost": 1}}
    # inside that one front the ε-net and crowding keep the lowest loss (an extreme) where hv keeps the inner design;
    # MO-ASHA's own decision, trial by trial: the first is kept (top 1 of 1), and each later one loses to an earlier one
    orders = got["by_order"][0]
    assert orders["kept3"] == {"hv": [1], "eps-net": [0], "crowding": [0]} and orders["cut_in_front3"]
    assert orders["async3"] == {"hv": [0], "eps-net": [0], "crowding": [0]} and orders["sampled_front3"] == [0, 1, 2, 3]
    text = rung_signal.render([got], ["x"], {}, 4)
    assert "| 42 | 1 of 1 | 1 of 4 | 1 of 4 (+1 / −1) | 1 of 4 (+1 / −1) |" in text
    assert "eps-net against hv: kept at more steps 1 designs, at fewer 1 (of 4; sign test p ≈ 1)" in text
    # six designs, keep 2: the slow accurate pair leads on (loss, params); latency brings in the fast one
    rows = [{"repeat": 0, "trial": i, "paper_fraction": 0.004, "metric": a, "latency": lat, "losses": {42: 1 - a}}
            for i, (a, lat) in enumerate([(0.9, 1.3), (0.89, 1.3), (0.7, 1.3), (0.69, 1.3), (0.68, 1.3), (0.6, 1.0)])]
    (got,) = rung_signal.analyze(rows)
    assert got["front3_recall"] == {0: {"front": 2, "legacy": 1, "costs": 2, "n": 6, "gained": 1, "lost": 0}}
    assert "1 → 2 of 2 (+1 / −0)" in rung_signal.render([got], ["x"], {}, 6)


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
    assert set(rows) == {"probe", "lora"} and rows["lora"]["budget"] == 0.005 and rows["probe"]["budget"] is None
    assert rows["lora"]["paper_percent"] == pytest.approx(100 * 110592 / 22713216)
    assert rows["probe"]["paper_percent"] == 0
    assert rows["lora"]["rates"] == {"lora": 2e-3, "head": 2e-3} and rows["probe"]["rates"] == {"head": 2e-2}  # central rates × 1
    for r in rows.values():
        assert r["chosen_scale"] == 1.0 and r["seeds_ok"] == 1 and 0.0 <= r["mean"] <= 1.0 and r["ci_lo"] is None
    records = sorted(p.name for p in (tmp_path / "reproduce_sst2_quick" / "records").iterdir())
    assert records == ["lora__0.5pct__x1__seed0.json", "probe__ref__x1__seed0.json"]
    md = (tmp_path / "reproduce_sst2_quick.md").read_text()
    assert "caps: max_train_examples=96" in md and "lr scale" in md
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "reproduce_sst2_quick" / "records").iterdir()}
    again = _run("reproduce_sst2.py", tmp_path)  # resumable: finished records are read back, not retrained
    assert again.returncode == 0, again.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert json.loads((tmp_path / "reproduce_sst2_quick.json").read_text())["rows"] == data["rows"]


@pytest.mark.slow
def test_search_efficiency_quick(tmp_path: Path) -> None:
    proc = _run("search_efficiency.py", tmp_path, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp_path / "search_efficiency_quick.json").read_text())
    assert set(data["histories"]) == {"grid", "random", "default", "mf"}
    for kind, hist in data["histories"].items():
        assert len(hist) == 3, kind
        hv = [p["hypervolume"] for p in hist]
        assert hv == sorted(hv) and hv[-1] > 0  # a hypervolume never shrinks as trials are added
    assert [p["preset"] for p in data["histories"]["grid"]] == search_efficiency.grid_presets(3)
    assert all(p["preset"] is None for p in data["histories"]["random"])
    assert all(p["elapsed_s"] > 0 for h in data["histories"].values() for p in h)
    assert "mf" in data and data["mf"]["full_wall_s"] > 0  # multi-fidelity against the full-fidelity default


@pytest.mark.slow
def test_rung_signal_quick(tmp_path: Path) -> None:
    """Two trials of three steps with a rung at every step and nothing stopped: every trial keeps its whole loss curve."""
    proc = _run("rung_signal.py", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp_path / "rung_signal.json").read_text())
    assert len(data["rows"]) == 2 and all(sorted(r["losses"]) == ["1", "2"] for r in data["rows"])  # the last step is the full evaluation
    assert [t["step"] for t in data["table"]] == [1, 2] and all(t["n"] == 2 and t["front_recall"]["0"]["n"] == 2 for t in data["table"])
    assert "Spearman" in (tmp_path / "rung_signal.md").read_text()


@pytest.mark.slow
def test_gpu_check_code_path_on_cpu(tmp_path: Path) -> None:
    """The GPU check's code path, smoke-sized on the CPU (the real run needs a CUDA machine)."""
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--quick", "--workers", "2", "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert set(res["trials"]) == {"lora", "mam", "full"} and all(r["status"] == "ok" and r["steps"] == 3 for r in res["trials"].values())
    assert res["trials"]["lora"]["latency"]["merged"] > 0 and res["trials"]["mam"]["latency"]["merged"] == 0
    agree = res["bf16_vs_fp32_mam"]
    assert agree["examples"] == 32 and 0.0 <= agree["prediction_agreement"] <= 1.0 and agree["max_abs_prob_diff"] < 0.1
    assert res["concurrent"]["returncode"] == 0 and res["concurrent"]["states"]["COMPLETE"] == 4


def test_gpu_check_refuses_without_cuda(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the refusal path does not apply")  # CI machines have none
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--out", str(tmp_path / "x.json")], capture_output=True, text=True)
    assert proc.returncode == 2 and "no CUDA device here" in proc.stderr and not (tmp_path / "x.json").exists()


@pytest.mark.slow
def test_peak_memory_quick(tmp_path: Path) -> None:
    """Both arms run the six-trial sequence in their own process; every trial's peak is at least what was resident when its loop began."""
    proc = _run("peak_memory.py", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp_path / "peak_memory_quick.json").read_text())
    assert sorted(data["arms"]) == ["no_release", "recorded"]
    for rows in data["arms"].values():
        assert [r["design"] for r in rows] == list(peak_memory.SEQUENCE)
        assert all(r["kind"] == "peak_rss_since_reset" and r["peak_bytes"] >= 0.9 * r["start_bytes"] > 0 for r in rows)
    assert "spread" in (tmp_path / "peak_memory_quick.md").read_text()


def test_findings_null_counts_verdicts_with_wilson_intervals(tmp_path: Path) -> None:
    lo, hi = findings_null.wilson(29, 1000)  # 2.9 %: Wilson's interval, by hand
    assert (round(lo, 4), round(hi, 4)) == (0.0203, 0.0413)
    assert findings_null.wilson(0, 20) == (0.0, pytest.approx(0.1611, abs=1e-4))
    assert findings_null.main(["--quick", "--k", "2", "--out", str(tmp_path)]) == 0
    cells = json.loads((tmp_path / "findings_null.json").read_text())["cells"]
    assert [(c["k"], c["rule"], c["studies"]) for c in cells] == [(2, "current", 20), (2, "same seeds", 20)]
    assert all(c["holds"] + c["reversed"] <= c["studies"] and c["holds_rate"] == c["holds"] / 20 for c in cells)
    assert "| 2 | 4 | current | 20 |" in (tmp_path / "findings_null.md").read_text()
