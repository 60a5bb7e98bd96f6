"""Constants and functions shared by the tests (fixtures live in conftest.py).

Not a test module: tests import it as `helpers` (pytest puts tests/ on sys.path), and worker
processes started by the tests load `crash_runner` through `UNIPETL_RUNNER="helpers:crash_runner"`
with tests/ on their PYTHONPATH.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# The shared GLUE / XSum / WMT data: $UNIPETL_DATA_DIR, else ../shared/data next to the checkout.
DATA = os.environ.get("UNIPETL_DATA_DIR") or str(ROOT.parent / "shared" / "data")
if not Path(DATA).is_dir():
    DATA = "/work/shared/data"

POS, NEG = ["good", "great", "fine", "lovely", "superb"], ["bad", "awful", "poor", "dull", "boring"]
FAST = ["--max-train-examples", "48", "--max-eval-examples", "24", "--max-steps", "2", "--batch-size", "8", "--eval-every", "1", "--max-length", "16",
        "--seeds", "1"]  # extra seeds have tests of their own (test_seeds.py)
CRASH_RUNNER = "helpers:crash_runner"  # the UNIPETL_RUNNER spec of `crash_runner`


def write_tiny_sst2(root: Path) -> str:
    """A small SST-2 layout (sst2/train.jsonl, sst2/dev.jsonl) with a learnable signal; returns `root`."""
    rng = random.Random(0)
    (root / "sst2").mkdir(parents=True)
    for split, n in (("train", 64), ("dev", 32)):
        with open(root / "sst2" / f"{split}.jsonl", "w") as fh:
            for i in range(n):
                label = i % 2
                words = rng.choices(POS if label else NEG, k=3) + rng.choices(["the", "movie", "was", "a", "plot"], k=3)
                rng.shuffle(words)
                fh.write(json.dumps({"sentence": " ".join(words), "label": label}) + "\n")
    return str(root)


def search_args(url: str, name: str, data_dir: str, *extra: str, trials: int = 3, budget: str = "5%") -> list[str]:
    """`unipetl search` arguments for a short budget study of a tiny BERT on `data_dir`'s SST-2."""
    return ["search", "--task", "sst2", "--model", "tiny-bert", "--budget", budget, "--trials", str(trials), "--storage", url, "--study", name,
            "--data-dir", data_dir, "--no-progress", *FAST, *extra]


def crash_runner(attrs: dict[str, Any], variant: Any, report: Any, preset: str | None) -> dict[str, Any]:
    """A stand-in evaluator: sleeps UNIPETL_TEST_TRAIN_MS, reports once, returns a complete record.

    With UNIPETL_TEST_CALL_LOG set, every call appends a line to that file. With UNIPETL_TEST_KILL_AFTER_MS set, the process SIGKILLs itself that many ms after returning
    the record, i.e. while the worker writes it to the storage."""
    from unipetl.evaluators.record import make_record

    time.sleep(int(os.environ.get("UNIPETL_TEST_TRAIN_MS", "200")) / 1000)
    if log := os.environ.get("UNIPETL_TEST_CALL_LOG"):  # one line per evaluation, appended atomically (load test)
        with open(log, "a") as fh:
            fh.write(f"{os.getpid()} {preset or variant.describe()}\n")
    metric = 0.5 + 0.01 * len(variant.modules)
    report(1, metric)
    kill_ms = os.environ.get("UNIPETL_TEST_KILL_AFTER_MS")
    if kill_ms is not None:
        threading.Timer(float(kill_ms) / 1000, os.kill, (os.getpid(), signal.SIGKILL)).start()
    return make_record(status="ok", error=None, task=attrs["task"], model=attrs["model"], variant=variant.to_dict(), variant_description=variant.describe(),
                       preset=preset, paper_params=1000, trainable_params=1000, head_params=66, base_params=100000, paper_percent=1.0,
                       paper_fraction=0.01, trainable_percent=1.0, trainable_fraction=0.01, metrics={"accuracy": metric}, main_metric="accuracy",
                       higher_is_better=True, metric=metric, best_step=1, curve=[{"step": 1, "loss": 0.5, "metrics": {"accuracy": metric}}],
                       wall_seconds=0.3, train_tokens_per_second=0.0, step_seconds=0.3, peak_memory_bytes=0, device="cpu", seed=0,
                       train_settings={}, fidelity="final")


# task head per model family for the method-vs-PEFT tests (test_peft_methods, test_vera, test_pissa_olora)
HEADS = {"bert": "cls", "roberta": "cls", "bart": "seq2seq", "mbart": "seq2seq", "t5": "seq2seq", "gpt2": "causal", "llama": "causal", "qwen2": "causal"}


def peft_inputs(family: str) -> dict[str, Any]:
    """A fixed batch of 2 × 7 token ids with one padded row (+ 4 decoder ids for seq2seq)."""
    import torch

    g = torch.Generator().manual_seed(3)
    ids = torch.randint(5, 100, (2, 7), generator=g)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 5:] = 0
    out = {"input_ids": ids, "attention_mask": mask}
    if HEADS.get(family) == "seq2seq":
        out["decoder_input_ids"] = ids[:, :4]
    return out


def model_output(model: Any, inputs: dict[str, Any]) -> Any:
    """Logits, or the last hidden state of a bare encoder (MiniLM), without autograd."""
    import torch

    with torch.no_grad():
        res = model(**inputs)
    return res.logits if hasattr(res, "logits") else res.last_hidden_state


def open_together(url: str, n: int, barrier: Path) -> None:
    """n processes call `make_storage(url)` at the same instant (`run_together`). Asserts every
    one opened the storage."""
    run_together(f"from unipetl.search.study import make_storage\nmake_storage({url!r})\n", n, barrier)


def run_together(code: str, n: int, barrier: Path) -> list[str]:
    """n processes run `code` at the same instant: each, once its imports are done, marks itself
    ready in the empty folder `barrier` and spins until all n are (a fixed start time let a slow
    import arrive late and hide the race), then runs `code` after its own imports (a line starting
    with `from`/`import` is hoisted above the barrier). Asserts every process exited 0; returns
    their stdouts."""
    lines = code.splitlines()
    head = [line for line in lines if line.startswith(("from ", "import "))]
    body = [line for line in lines if not line.startswith(("from ", "import "))]
    program = "\n".join(["import os", "from pathlib import Path", *head, f"barrier = Path({str(barrier)!r})",
                         "(barrier / str(os.getpid())).touch()", f"while len(os.listdir(barrier)) < {n}:", "    pass", *body]) + "\n"
    procs = [subprocess.Popen([sys.executable, "-c", program], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(n)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * n, [err[-400:] for _, err in outs]
    return [out for out, _ in outs]


def drivers_together(url: str, name: str, tmp: Path, n: int = 3) -> None:
    """n drivers create study `name` together (3 tickets), then n drivers raise it to 6 trials
    together. Asserts the tickets are exactly those of one driver alone: the first 3 named
    methods once each, in order, then 3 empty tickets (the driver lock makes them take turns;
    without it one creator failed or deleted the other's half-written study, and each raise
    enqueued the missing tickets again)."""
    import optuna

    from unipetl.search import study as studies

    alone = lone_driver_presets(studies.StudySpec(seeds=1, task="sst2", model="tiny-bert", budget="5%", trials=3, storage=url, study=name))
    assert len(alone) == 3 and None not in alone
    studies.make_storage(url)  # the schema exists: the drivers race on the study, not on the tables
    for trials, round_ in ((3, "create"), (6, "raise")):
        (tmp / round_).mkdir()
        code = ("from unipetl.search import study as studies\n"
                f"studies.create_or_check(studies.StudySpec(seeds=1, task='sst2', model='tiny-bert', budget='5%', trials={trials}, "
                f"storage={url!r}, study={name!r}))\n")
        run_together(code, n, tmp / round_)
        study = optuna.load_study(study_name=name, storage=url)
        tickets = study.get_trials(deepcopy=False)
        assert [t.user_attrs.get("preset") for t in tickets] == alone + [None] * (trials - 3), round_
        assert study.user_attrs["trials"] == trials and all(t.state == optuna.trial.TrialState.WAITING for t in tickets)
    assert studies.study_names(studies.make_storage(url)).count(name) == 1


def lone_driver_presets(spec: Any) -> list[str | None]:
    """The `preset` of each ticket that `create_or_check(spec)` makes when it runs alone (in a
    throw-away in-memory storage): what drivers racing on `spec.storage` must also end with."""
    import dataclasses

    from unipetl.search import study as studies

    return [t.user_attrs.get("preset") for t in studies.create_or_check(dataclasses.replace(spec, storage="sqlite:///:memory:")).get_trials()]
