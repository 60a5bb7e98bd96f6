"""Shared pieces of the benchmarks: the timed training step, memory probes, result files.

This module must import in *both* virtual environments (the project's .venv with transformers 5
and .venv-adapters with transformers 4 for AdapterHub), so it uses only the standard library at
import time; torch is imported inside the functions that need it. Nothing here imports the
project's packages for the same reason; the peak-RSS probes come from `evaluators/memory.py`
(standard library only), imported from the source tree. (A trial also frees what it can before
its reset — `memory.start` — and ranks the growth; the overhead benchmark's paired processes
reset after their set-up and compare peaks, as RESULTS §1 was measured.)
"""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "benchmarks" / "out"
if str(ROOT) not in sys.path:  # the source tree: evaluators/memory.py without the package installed
    sys.path.insert(0, str(ROOT))
from evaluators.memory import peak_rss_bytes, reset_peak_rss, rss_bytes  # noqa: E402

DATA_DIR = Path(os.environ.get("UNIPETL_DATA_DIR", ROOT.parent / "shared" / "data"))


def make_batch(kind: str, vocab: int, batch: int, seq_len: int, target_len: int, seed: int = 0) -> dict[str, Any]:
    """A fixed random batch: token ids drawn with `seed`, so every implementation sees the same input.

    `kind` "cls": input_ids / attention_mask / labels in {0, 1}; "seq2seq": input_ids /
    attention_mask / labels of `target_len` tokens (the model shifts them into decoder inputs).
    Ids start at 5 so no special token (pad / bos / eos) lands inside the sequence.
    """
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (batch, seq_len), generator=g)
    out: dict[str, Any] = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if kind == "cls":
        out["labels"] = torch.randint(0, 2, (batch,), generator=g)
    else:
        out["labels"] = torch.randint(5, vocab, (batch, target_len), generator=g)
    return out


def saved_activation_bytes(model: Any, batch: dict[str, Any]) -> int:
    """Bytes autograd keeps for backward in one training forward (unique storages, weights excluded).

    Unlike peak RSS this does not depend on the allocator, so two libraries running the same
    method on the same batch can be compared exactly: equal numbers mean no extra activations."""
    import torch

    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: Any) -> Any:
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(**batch).loss  # noqa: B018 - the forward's graph is what is measured, then dropped
    return sum(seen.values())


def serve(model: Any, batch: dict[str, Any], *, device: str = "cpu", lr: float = 1e-4, meta: dict[str, Any] | None = None) -> None:
    """A lock-step training worker: one full step per "step" line on stdin, a summary on "done".

    Why lock-step: the machines are shared, so load drifts within seconds. The parent keeps two
    workers (anchor and unipetl) alive side by side and alternates single steps between them
    (A B B A …), so both see the same load and the per-step ratio cancels it. A step is
    forward + backward + AdamW step on the same fixed batch with the model's own loss
    (cross-entropy for a classification head, the LM loss for seq2seq); AdamW holds state only
    for parameters with requires_grad, as every library does. Memory: on CUDA the peak of
    allocated tensors during the steps; on CPU the peak RSS during the steps (reset after loading,
    see `reset_peak_rss`; it includes the resident weights). Protocol: one JSON line per answer.
    """
    import torch

    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    batch = {k: v.to(device) for k, v in batch.items()}
    saved = saved_activation_bytes(model, batch)
    rss_setup = rss_bytes()
    reset = reset_peak_rss()
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    emit({"ready": True, "trainable_params": sum(p.numel() for p in params), "threads": torch.get_num_threads(), "saved_activation_bytes": saved,
          **(meta or {})})
    loss_value = float("nan")
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "step":
            t0 = time.perf_counter()
            loss = model(**batch).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if cuda:
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            loss_value = float(loss.detach())
            emit({"dt": dt, "loss": loss_value})
        elif cmd == "done":
            break
    peak = int(torch.cuda.max_memory_allocated()) if cuda else peak_rss_bytes()
    emit({"peak_memory_bytes": peak, "rss_after_setup_bytes": rss_setup, "final_loss": loss_value,
          "memory_kind": "cuda_max_allocated" if cuda else ("peak_rss_during_steps" if reset else "max_rss_of_process"), **(meta or {})})


class Worker:
    """The parent's handle on one `serve` process."""

    def __init__(self, argv: list[str], log_path: Path | None = None) -> None:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        self.argv = argv
        self.log = open(log_path, "a", encoding="utf-8") if log_path else subprocess.DEVNULL  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, cwd=ROOT, env=env, bufsize=1)
        self.ready = self._read()

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("{"):
                return json.loads(line)
        raise RuntimeError(f"worker {' '.join(self.argv[:4])} … exited with {self.proc.wait()} (see its log)")

    def ask(self, cmd: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> dict[str, Any]:
        out = self.ask("done")
        self.proc.wait(timeout=120)
        if self.log is not subprocess.DEVNULL:
            self.log.close()
        return out


def lockstep(argv_a: list[str], argv_b: list[str], *, warmup: int, steps: int, log_path: Path | None = None) -> dict[str, Any]:
    """Start A and B, alternate single steps A B B A A B …, return per-step times and both summaries."""
    a = Worker(argv_a, log_path)
    b = Worker(argv_b, log_path)
    try:
        ta: list[float] = []
        tb: list[float] = []
        for i in range(warmup + steps):
            order = (a, b) if i % 2 == 0 else (b, a)
            got = {id(w): w.ask("step")["dt"] for w in order}
            if i >= warmup:
                ta.append(got[id(a)])
                tb.append(got[id(b)])
        return {"a": {**a.ready, **a.close(), "step_seconds_all": ta}, "b": {**b.ready, **b.close(), "step_seconds_all": tb}}
    finally:
        for w in (a, b):
            if w.proc.poll() is None:
                w.proc.kill()


def versions(packages: Iterable[str] = ("torch", "transformers", "peft", "adapters", "optuna")) -> dict[str, str]:
    out = {}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def machine() -> dict[str, Any]:
    """What the numbers were measured on (the load average says how shared the CPU was)."""
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            names = [line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")]
        info["cpu"] = names[0] if names else platform.processor()
    except OSError:
        info["cpu"] = platform.processor()
    try:
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return info


def run_json_subprocess(argv: list[str], *, timeout: float = 1800, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run a worker process whose last stdout line is one JSON object; return that object."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout)[-2000:]
        raise RuntimeError(f"worker {' '.join(argv[1:4])} … failed (exit {proc.returncode}):\n{tail}")
    return json.loads(lines[-1])


def median_ratio(pairs: list[tuple[float, float]]) -> float:
    """Median of per-pair ratios a / b (pairing cancels slow drifts of a shared machine)."""
    return statistics.median(a / b for a, b in pairs if b > 0)


def fmt_mean_std(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    if not values:
        return "—"
    mean = statistics.fmean(values) * scale
    std = statistics.stdev(values) * scale if len(values) > 1 else 0.0
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_results(name: str, payload: dict[str, Any], markdown: str, out_dir: Path | None = None) -> tuple[Path, Path]:
    """benchmarks/out/NAME.json (everything) and NAME.md (the table as it goes into RESULTS.md)."""
    out = out_dir or OUT_DIR
    out.mkdir(parents=True, exist_ok=True)
    jpath, mpath = out / f"{name}.json", out / f"{name}.md"
    jpath.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    mpath.write_text(markdown, encoding="utf-8")
    logger.info("wrote %s and %s", jpath, mpath)
    return jpath, mpath


def header_block(command: list[str], caps: dict[str, Any], extra: dict[str, Any] | None = None) -> str:
    """The lines every result table starts with: command, machine, versions, caps."""
    m = machine()
    lines = [
        f"- command: `{' '.join(command)}`",
        f"- machine: {m.get('cpu')} × {m.get('cpus')} logical CPUs, {m.get('platform')}, load average at start {m.get('load_average')}",
        f"- versions: {', '.join(f'{k} {v}' for k, v in versions().items())}",
        f"- caps: {', '.join(f'{k}={v}' for k, v in caps.items())}",
    ]
    for k, v in (extra or {}).items():
        lines.append(f"- {k}: {v}")
    return "\n".join(lines) + "\n\n"


def emit(obj: dict[str, Any]) -> None:
    """A worker's answer: one JSON line on stdout (the parent reads the last such line)."""
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()
