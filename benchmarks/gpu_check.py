"""The GPU paths of unipetl in one short run, with a small JSON of figures.

    python benchmarks/gpu_check.py --out gpu_check.json                 # on a CUDA machine (≤ 8 min on one H200)
    python benchmarks/gpu_check.py --device cpu --quick --out x.json    # the same code path, smoke-sized (CI)

What it measures (CI never runs it on a GPU; `benchmarks/gpu_check.sh` prepares a bare CUDA
machine and calls it):
1. bf16 autocast vs fp32 on a MAM trial: the loop trains under bf16 autocast on CUDA; the trained
   model's eval-split predictions are then computed in fp32 and under bf16 autocast: the share
   of equal predictions, the largest probability difference and the metric in both.
2. Training throughput (train tokens/s, s/step) of LoRA, MAM and full fine-tuning trials.
3. Four concurrent trials on one GPU: `unipetl search --workers 4` on one study; wall time and
   trial counts.
The backbone is a BERT-base-shaped model (hidden 768, 12 layers, 12 heads, FFN 3072) with
random weights and a word-level vocabulary trained on the task's text, written to a local model
directory: the machine needs no model hub, and the compute per token is that of BERT-base.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def make_backbone(out: Path, data_dir: str, *, quick: bool) -> str:
    """A random-init BERT-base-shaped classifier + word-level tokenizer saved as a local model dir."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from unipetl.evaluators.models import tiny_tokenizer
    from unipetl.evaluators.tasks import get_task

    tok = tiny_tokenizer(get_task("sst2"), "bert", data_dir, None)
    size = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128} if quick else \
        {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072}
    cfg = BertConfig(vocab_size=len(tok), pad_token_id=0, max_position_embeddings=512, num_labels=2, **size)
    torch.manual_seed(0)
    BertForSequenceClassification(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def agreement(model_dir: str, trial_dir: Path, data_dir: str, device: str, max_eval: int | None) -> dict[str, Any]:
    """fp32 vs bf16-autocast predictions of the trained variant on the eval split."""
    import torch

    from unipetl.evaluators.data import prepare
    from unipetl.evaluators.models import load_model
    from unipetl.evaluators.tasks import get_task
    from unipetl.evaluators.train import _collator
    from unipetl.spaces.io import load_variant

    task = get_task("sst2")
    loaded = load_model(model_dir, task, reuse=False)
    realized = load_variant(loaded.model, trial_dir)
    model = realized.model.to(device).eval()
    data = prepare(task, loaded.tokenizer, data_dir=data_dir, max_train=64, max_eval=max_eval, max_length=128, model_key=loaded.key)
    ds = data.eval["eval"]
    ds = ds.select_columns([c for c in ds.column_names if c in ("input_ids", "attention_mask", "token_type_ids", "labels")])
    loader = torch.utils.data.DataLoader(ds, batch_size=64, collate_fn=_collator(task, loaded.tokenizer, None))
    p32, p16, labels = [], [], []
    with torch.no_grad():
        for batch in loader:
            labels += batch.pop("labels").tolist()
            batch = {k: v.to(device) for k, v in batch.items()}
            p32.append(model(**batch).logits.float().softmax(-1).cpu())
            with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16):
                p16.append(model(**batch).logits.float().softmax(-1).cpu())
    a, b = torch.cat(p32), torch.cat(p16)
    y = torch.tensor(labels)
    return {"examples": len(y), "prediction_agreement": float((a.argmax(-1) == b.argmax(-1)).float().mean()),
            "max_abs_prob_diff": float((a - b).abs().max()), "accuracy_fp32": float((a.argmax(-1) == y).float().mean()),
            "accuracy_bf16": float((b.argmax(-1) == y).float().mean())}


def trials(model_dir: str, data_dir: str, device: str, out: Path, *, quick: bool) -> dict[str, Any]:
    from unipetl.evaluators.trial import TrialConfig, run_trial
    from unipetl.spaces.presets import parse_preset

    caps = {"max_train_examples": 64, "max_eval_examples": 32, "max_steps": 3, "batch_size": 8} if quick else \
        {"max_train_examples": 16000, "max_eval_examples": None, "epochs": 1.0, "batch_size": 32}
    rows = {}
    for label, preset in (("lora", "lora:r=8"), ("mam", "mam:l=16,r=64,s=4"), ("full", "full")):
        cfg = TrialConfig(task="sst2", model=model_dir, variant=parse_preset(preset), data_dir=data_dir, device=device, max_length=128, **caps)
        rec = run_trial(cfg, out_dir=out / label)
        rows[label] = {k: rec.get(k) for k in ("status", "metric", "train_tokens_per_second", "step_seconds", "peak_memory_bytes", "wall_seconds",
                                                "latency", "time_breakdown")}
        rows[label]["steps"] = rec["train_settings"]["steps"]
    return rows


def concurrent(model_dir: str, data_dir: str, device: str, out: Path, *, quick: bool, workers: int) -> dict[str, Any]:
    db = out / "concurrent.db"
    n = 2 * workers
    cmd = [sys.executable, "-m", "unipetl", "search", "--task", "sst2", "--model", model_dir, "--budget", "1%", "--trials", str(n), "--seeds", "1",
           "--workers", str(workers), "--storage", f"sqlite:///{db}", "--study", "gpu-concurrent", "--data-dir", data_dir, "--device", device,
           "--max-length", "128", "--no-progress", "--sampler", "random"]
    cmd += ["--max-train-examples", "64", "--max-steps", "3", "--batch-size", "8", "--max-eval-examples", "32"] if quick else \
        ["--max-train-examples", "4000", "--batch-size", "32"]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.time() - t0
    from unipetl.search import study as studies

    counts = studies.state_counts(studies.load(f"sqlite:///{db}", "gpu-concurrent")) if db.exists() else {}
    return {"workers": workers, "trials": n, "returncode": proc.returncode, "wall_seconds": round(wall, 1), "states": counts,
            "stderr_tail": proc.stderr[-1500:] if proc.returncode else ""}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="the JSON file to write")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (smoke runs)")
    p.add_argument("--data-dir", default=os.environ.get("UNIPETL_DATA_DIR", str(ROOT.parent / "shared" / "data")))
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks the code path only, numbers meaningless")
    p.add_argument("--workers", type=int, default=4)
    args = p.parse_args(argv)
    import tempfile

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run it on a GPU machine (or --device cpu --quick for a smoke run)", file=sys.stderr)
        return 2
    t0 = time.time()
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    result: dict[str, Any] = {"device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu", "torch": torch.__version__,
                              "quick": args.quick}
    model_dir = make_backbone(work / "backbone", args.data_dir, quick=args.quick)
    result["trials"] = trials(model_dir, args.data_dir, args.device, work, quick=args.quick)
    result["bf16_vs_fp32_mam"] = agreement(model_dir, work / "mam", args.data_dir, args.device, 32 if args.quick else None)
    result["concurrent"] = concurrent(model_dir, args.data_dir, args.device, work, quick=args.quick, workers=args.workers)
    result["total_seconds"] = round(time.time() - t0, 1)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    ok = all(r["status"] == "ok" for r in result["trials"].values()) and result["concurrent"]["returncode"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
