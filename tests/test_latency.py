"""Inference latency (evaluators.latency) and the per-phase time breakdown of a trial record."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch

from unipetl.evaluators.latency import measure_latency, mergeable_copy
from unipetl.evaluators.trial import PHASES, TrialConfig, run_trial
from unipetl.spaces.presets import parse_preset
from unipetl.spaces.realize import apply_variant
from unipetl.spaces.testing import randomize_variant, tiny_model

DATA = os.environ.get("UNIPETL_DATA_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "data"))

# one preset per kind of module (and the mixes), with whether the latency copy folds something
# ((IA)³ and every LoRA variant fold; tests/test_merge.py checks the mixes on shared projections)
KINDS = {"lora:r=4": True, "lora:r=4,s=learned": False, "houlsby:r=4": False, "pa-ffn:r=4": False, "prefix:l=3": False, "mh-pa:l=3": False,
         "prompt:l=3": False, "bitfit": False, "full": False, "probe": False, "mam:l=3,r=4,s=2": False, "unipelt:l=3,r=4,lora_r=2": False,
         "ia3": True, "dora:r=4": True, "vera:r=4": True, "rslora:r=4": True, "pissa:r=4": True, "olora:r=4": True, "lora-ffn:r=4": True}


def test_every_module_kind_has_a_latency_case() -> None:
    from unipetl.spaces.kinds import all_kinds

    covered = {m.kind for name in KINDS for m in parse_preset(name).modules}
    assert covered == {k.name for k in all_kinds()}  # a new kind gets a case here, with whether it folds


def _inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 100, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("name", sorted(KINDS))
def test_merged_copy_computes_the_same_function_and_leaves_the_model_alone(name: str) -> None:
    model = tiny_model("bert", "cls", seed=1)
    realized = apply_variant(model, parse_preset(name))
    randomize_variant(realized.model, seed=2)  # a no-op-at-init variant would hide a wrong merge
    before = {k: v.clone() for k, v in realized.model.state_dict().items()}
    with torch.no_grad():
        want = realized.model(**_inputs()).logits
        twin, merged = mergeable_copy(realized)
        got = twin(**_inputs()).logits
    assert (merged > 0) == KINDS[name]
    assert torch.allclose(got, want, atol=1e-5, rtol=0)
    after = realized.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the trained model is untouched


def test_merged_lora_reads_the_base_weight_plus_s_ba() -> None:
    realized = apply_variant(tiny_model("bert", "cls", seed=1), parse_preset("lora:r=4,s=2"))
    randomize_variant(realized.model, seed=3)
    twin, merged = mergeable_copy(realized)
    name, base = next((n, p) for n, p in realized.model.named_parameters() if n.endswith("attention.self.query.weight"))
    assert merged == 2 and not torch.equal(dict(twin.named_parameters())[name], base)


@pytest.mark.parametrize("name", sorted(KINDS))
def test_every_kind_gets_a_latency_in_its_record(name: str, tmp_path) -> None:
    cfg = TrialConfig(task="sst2", model="tiny-bert", variant=parse_preset(name), max_train_examples=48, max_eval_examples=24, max_steps=2, batch_size=4)
    rec = run_trial(cfg)
    assert rec["status"] == "ok"
    lat = rec["latency"]
    assert lat["batch_size"] == 4 and (lat["merged"] > 0) == KINDS[name]  # on CPU the eval batch is the training batch
    assert lat["batch1_ratio"] > 0 and lat["batch_ratio"] > 0  # timed in pairs with the kept pristine backbone
    lo, hi = lat["batch1_ratio_ci"]  # 10 batch-1 pairs: the 2nd and 9th ratios bracket their median
    assert 0 < lo <= lat["batch1_ratio"] <= hi and lat["batch_ratio_ci"] is None  # one eval batch: one pair, no interval
    assert 0 < lat["batch1_ms"] < 10_000 and 0 < lat["batch_ms_per_example"] < 10_000
    tb = rec["time_breakdown"]
    assert list(tb) == [*PHASES, "outside_training"]
    assert all(tb[p] >= 0 for p in PHASES) and tb["train"] > 0 and tb["latency"] > 0
    assert math.isclose(sum(tb[p] for p in PHASES), rec["wall_seconds"], rel_tol=0.02, abs_tol=0.01)
    assert math.isclose(tb["outside_training"], 1 - tb["train"] / rec["wall_seconds"], abs_tol=1e-3)


def test_a_design_is_timed_once_per_process_and_its_seeds_reuse_it(monkeypatch) -> None:
    from unipetl.evaluators import latency as lat_mod

    monkeypatch.setattr(lat_mod, "_MEASURED", {})
    calls: list[int] = []
    real = lat_mod.measure_latency
    monkeypatch.setattr(lat_mod, "measure_latency", lambda *a, **k: calls.append(1) or real(*a, **k))
    base = dict(task="sst2", model="tiny-bert", max_train_examples=48, max_eval_examples=24, max_steps=2, batch_size=4)
    first = run_trial(TrialConfig(**base, variant=parse_preset("lora:r=3"), seed=0))["latency"]
    again = run_trial(TrialConfig(**base, variant=parse_preset("lora:r=3"), seed=1, lr_scale=2.0))["latency"]
    assert len(calls) == 1 and first["reused"] is False and again["reused"] is True
    assert {k: v for k, v in again.items() if k != "reused"} == {k: v for k, v in first.items() if k != "reused"}
    # anything that changes the timed passes is measured anew: the variant, the batch, the eval split, the length limit
    other = [TrialConfig(**base, variant=parse_preset("lora:r=5")), TrialConfig(**{**base, "batch_size": 8}, variant=parse_preset("lora:r=3")),
             TrialConfig(**{**base, "max_eval_examples": 20}, variant=parse_preset("lora:r=3")), TrialConfig(**base, variant=parse_preset("lora:r=3"), max_length=16)]
    assert [run_trial(c)["latency"]["reused"] for c in other] == [False] * 4 and len(calls) == 5


def test_design_key_refuses_an_unknown_identity() -> None:
    from unipetl.evaluators.latency import design_key, reuse_or_measure

    assert design_key(backbone=None, variant={"modules": []}) is None
    assert design_key(a=1, b=[2, 3]) == design_key(b=[2, 3], a=1)  # canonical: order of the parts does not matter
    n = []
    for _ in range(2):  # no key: measured every time
        assert reuse_or_measure(None, lambda: n.append(1) or {"batch1_ms": 1.0})["reused"] is False
    assert len(n) == 2


def test_a_remembered_latency_is_only_found_under_its_own_design(monkeypatch) -> None:
    from unipetl.evaluators import latency as lat_mod

    monkeypatch.setattr(lat_mod, "_MEASURED", {})
    a, b = lat_mod.design_key(variant="lora:r=3", batch=8), lat_mod.design_key(variant="lora:r=3", batch=16)
    assert a != b and len(a) == 32
    assert lat_mod.remember({"design": a, "batch1_ms": 2.5, "batch_ms_per_example": 0.5, "batch1_ratio": 1.02, "reused": False})
    assert not lat_mod.remember({"batch1_ms": 2.5}) and not lat_mod.remember({"design": b, "batch1_ms": None}) and not lat_mod.remember(None)
    # the batch-1 part alone (a trial stopped at a rung that ranked latency) is not a measurement to reuse
    assert not lat_mod.remember({"design": b, "batch1_ms": 2.5, "batch_ms_per_example": None, "batch1_ratio": 1.02})
    got = lat_mod.reuse_or_measure(a, lambda: pytest.fail("a remembered design is not timed again"))
    assert got == {"batch1_ms": 2.5, "batch_ms_per_example": 0.5, "batch1_ratio": 1.02, "design": a, "reused": True}
    part = lat_mod.reuse_or_measure(b, lambda: {"batch1_ms": 9.0, "batch_ms_per_example": None})
    assert part["reused"] is False and b not in lat_mod._MEASURED  # a partial record is not kept either
    fresh = lat_mod.reuse_or_measure(b, lambda: {"batch1_ms": 9.0, "batch_ms_per_example": 1.0})
    assert fresh == {"batch1_ms": 9.0, "batch_ms_per_example": 1.0, "design": b, "reused": False} and b in lat_mod._MEASURED


def test_seq2seq_latency_is_a_teacher_forced_forward() -> None:
    cfg = TrialConfig(task="xsum", model="tiny-bart", variant=parse_preset("lora:r=4"), max_train_examples=16, max_eval_examples=8, max_steps=1,
                      batch_size=4, max_new_tokens=4)
    rec = run_trial(cfg)
    assert rec["status"] == "ok" and rec["latency"]["batch_size"] == 4 and rec["latency"]["merged"] > 0 and rec["latency"]["batch1_ms"] > 0


def test_empty_split_has_no_latency() -> None:
    from datasets import Dataset

    from unipetl.evaluators.tasks import get_task

    realized = apply_variant(tiny_model("bert", "cls"), parse_preset("lora"))
    out = measure_latency(get_task("sst2"), realized, None, Dataset.from_dict({"input_ids": []}), batch_size=8, device=torch.device("cpu"))
    assert out == {"batch1_ms": None, "batch_ms_per_example": None, "batch_size": 8, "merged": 0, "batch1_ratio": None, "batch_ratio": None,
                   "batch1_ratio_ci": None, "batch_ratio_ci": None}


def _linear_cost(model: torch.nn.Module, skip: tuple[str, ...] = ()) -> int:
    """Σ in·out over the nn.Linear modules of `model` (those whose name has none of `skip`)."""
    return sum(m.in_features * m.out_features for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and not any(k in n for k in skip))


def test_latency_ratios_pair_every_pass_with_the_backbone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each timed pass of the variant is paired with one of the pristine backbone, and the ratios
    are the variant's own cost. The clock here is arithmetic, not wall time: every nn.Linear call
    advances it by in·out µs (a global forward hook), so a pass costs exactly the multiply-adds
    per token of the Linears it runs and the ratios are exact on a loaded machine too. (A wall-clock
    bound here failed under load: full fine-tuning's ratio read 0.17. The ordering on a real clock
    is a measurement: the 3-objective study in benchmarks/RESULTS.md §6.)"""
    import copy
    import types

    from unipetl.evaluators import latency as lat_mod
    from unipetl.evaluators.data import prepare
    from unipetl.evaluators.models import load_model
    from unipetl.evaluators.tasks import get_task

    now = [0.0]

    def advance(module: torch.nn.Module, _inp: object, _out: object) -> None:
        if isinstance(module, torch.nn.Linear):
            now[0] += module.in_features * module.out_features * 1e-6

    monkeypatch.setattr(lat_mod, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    task = get_task("sst2")
    loaded = load_model("tiny-bert", task, data_dir=DATA, max_train=64, reuse=False)
    pristine = copy.deepcopy(loaded.model)
    data = prepare(task, loaded.tokenizer, data_dir=DATA, max_train=64, max_eval=96, max_length=64, model_key=loaded.key)
    base = _linear_cost(pristine)
    want = {"full": (base, 0), "lora:r=8": (base, 2), "pa-ffn:r=256": (None, 0)}  # (cost of the timed variant, LoRA modules merged)
    handle = torch.nn.modules.module.register_module_forward_hook(advance)
    try:
        for name, (cost, merged) in want.items():
            realized = apply_variant(copy.deepcopy(pristine), parse_preset(name))
            cost = cost if cost is not None else _linear_cost(realized.model)
            out = measure_latency(task, realized, loaded.tokenizer, data.eval["eval"], batch_size=32, device=torch.device("cpu"), n_single=40,
                                  n_batches=3, reference=copy.deepcopy(pristine))
            assert out["merged"] == merged, (name, out)
            assert out["batch1_ratio"] == out["batch_ratio"] == pytest.approx(cost / base, abs=1e-4), (name, out)  # rounded to 4 decimals
            assert out["batch1_ms"] == pytest.approx(cost * 1e-3, abs=1e-4) and out["batch_ms_per_example"] == pytest.approx(cost * 1e-3 / 32, abs=1e-4), (name, out)
    finally:
        handle.remove()
    # a parallel adapter at the FFN adds its down and up projections to every layer: 2 · 2 · (32 · 256) on tiny-bert's 17,472
    assert _linear_cost(realized.model) - base == 2 * 2 * 32 * 256 and base == 17_472


def test_the_eval_batch_is_the_training_batch_except_on_a_gpu() -> None:
    from unipetl.evaluators.tasks import get_task
    from unipetl.evaluators.train import eval_batch_size

    sst2, xsum = get_task("sst2"), get_task("xsum")
    assert eval_batch_size(sst2, 32, torch.device("cuda", 0)) == 64 and eval_batch_size(sst2, 32, "cuda") == 64
    assert eval_batch_size(sst2, 32, torch.device("cpu")) == 32 and eval_batch_size(sst2, 32) == 32 and eval_batch_size(sst2, 32, "mps") == 32
    assert eval_batch_size(xsum, 16, torch.device("cuda")) == 16  # beam search multiplies the batch already


def test_a_frontier_trading_the_eval_batch_latency_times_enough_batches_for_an_interval() -> None:
    from unipetl.evaluators.trial import LATENCY_BATCHES
    from unipetl.spaces.registry import UnipetlError

    attrs = {"task": "sst2", "model": "tiny-bert", "train": {"batch_size": 4}, "data_dir": DATA}
    variant = parse_preset("houlsby:r=2")
    assert TrialConfig.for_trial(attrs, variant).latency_batches == 1  # the default frontier does not trade it
    assert TrialConfig.for_trial({**attrs, "objectives": ["metric", "params", "latency"]}, variant).latency_batches == 1
    trades = {**attrs, "objectives": ["metric", "params", "latency_batch"]}
    assert TrialConfig.for_trial(trades, variant).latency_batches == LATENCY_BATCHES == 6
    assert TrialConfig.for_trial({**trades, "train": {"batch_size": 4, "latency_batches": 2}}, variant).latency_batches == 2  # the study chose
    with pytest.raises(UnipetlError, match=r"`latency_batches` should be a positive integer, got 0"):
        TrialConfig(task="sst2", model="tiny-bert", variant=variant, latency_batches=0)
    cfg = TrialConfig(task="sst2", model="tiny-bert", variant=variant, max_train_examples=48, max_eval_examples=24, max_steps=2, batch_size=4,
                      latency_batches=LATENCY_BATCHES)
    lat = run_trial(cfg)["latency"]
    lo, hi = lat["batch_ratio_ci"]  # six pairs: (min, max) of the ratios, coverage 1 − 2/64
    assert lat["batch_size"] == 4 and 0 < lo <= lat["batch_ratio"] <= hi
