"""The fine-tuning loop: one function that reads top to bottom.

AdamW over the trainable parameters only (the frozen backbone costs no optimizer state),
linear / polynomial decay after warmup (`transformers.get_scheduler`), gradient clipping and
accumulation, label smoothing for generation, bf16 autocast on CUDA. Every `eval_every`
optimizer steps (default: once per epoch) and at the end it evaluates, appends to the curve,
keeps the best evaluation, and calls `report(step, value)`; True means "stop" (the search
prunes the trial). A `RungReport` narrows the evaluations to the steps it asks for (MO-ASHA's
rungs): successive halving then pays one evaluation per rung, not one per `eval_every`, and
with `RungReport.examples` that evaluation is the dev loss on a fixed subset (`dev_loss`), kept
in the curve under "rung" and never the best evaluation. A loss that becomes NaN / inf ends the run as failed with that reason
instead of raising, so a search worker carries on with the next trial.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from unipetl.evaluators import memory
from unipetl.evaluators.data import column, token_lengths
from unipetl.evaluators.metrics import compute_metrics
from unipetl.evaluators.reporting import Report, RungReport
from unipetl.evaluators.tasks import Task

log = logging.getLogger(__name__)

@dataclass(frozen=True, slots=True, kw_only=True)
class LoopSettings:
    """What the loop needs, resolved: built by `run_trial` from a TrialConfig, whose fields hold
    the defaults (no second set of defaults here). `lr` is the peak rate of the schedule when the
    optimizer gets per-kind parameter groups; `label_smoothing` is resolved (seq2seq only)."""

    epochs: float
    max_steps: int | None  # overrides epochs
    batch_size: int
    lr: float
    scheduler: str
    warmup_ratio: float
    weight_decay: float
    grad_accum: int
    max_grad_norm: float | None
    label_smoothing: float
    eval_every: int | None  # optimizer steps; None → every epoch
    seed: int
    eval_batch_size: int | None = None  # None: `eval_batch_size(task, batch_size, device)`


@dataclass
class LoopResult:
    status: str = "ok"  # ok | failed | pruned
    error: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)  # at the best evaluation
    metric: float | None = None
    best_step: int | None = None
    curve: list[dict[str, Any]] = field(default_factory=list)
    steps: int = 0
    weights_step: int | None = None  # the step whose trainable tensors the model ends with (the best evaluation's)
    train_seconds: float = 0.0  # the loop's wall time less its evaluations
    eval_seconds: float = 0.0  # the evaluations inside the loop (all eval splits, every eval step)
    train_tokens: int = 0
    peak_memory_bytes: int = 0  # since the loop began (evaluators.memory)
    peak_memory_kind: str | None = None  # what peak_memory_bytes counts: memory.CUDA, CPU_RESET or CPU_LIFETIME
    peak_memory_start_bytes: int = 0  # in use when the loop began: the growth over it is the `memory` objective


def _collator(task: Task, tokenizer: Any, model: Any) -> Any:
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithPadding

    if task.kind == "seq2seq":  # the model builds decoder_input_ids from the labels (shift right)
        return DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100, pad_to_multiple_of=None)
    return DataCollatorWithPadding(tokenizer)


def eval_loader(ds: Any, batch_size: int, collate_fn: Any) -> Any:
    """An in-order DataLoader for evaluation that leaves the global RNG alone: each iteration of a
    DataLoader draws its base seed from the default generator unless it has its own, so an
    evaluation would otherwise shift the dropout masks of every later training step — a trial's
    result would depend on how often it was evaluated (and MO-ASHA's rungs would change it)."""
    from torch.utils.data import DataLoader

    return DataLoader(ds, batch_size=batch_size, collate_fn=collate_fn, generator=torch.Generator().manual_seed(0))


def eval_batch_size(task: Task, batch_size: int, device: Any = None) -> int:
    """The evaluation batch. On CUDA twice the training batch (no activations kept for backward:
    a fuller GPU); elsewhere, and for seq2seq (beam search multiplies the batch by the beams), the
    training batch itself — on a CPU a larger batch fills no more cores and leaves the cache:
    MiniLM over SST-2's dev set (872, length-sorted) took 7.3 s at 32 against 8.2 s at 64 and
    7.6 s at 16, one thread, two such processes side by side (benchmarks/RESULTS.md §5e).
    `device`: a torch.device or its type string; None counts as CPU."""
    kind = getattr(device, "type", device)
    return 2 * batch_size if kind == "cuda" and task.kind != "seq2seq" else batch_size


def loss_units(task: Task, batch: dict[str, torch.Tensor]) -> int:
    """What the loss averages over: target tokens for seq2seq (labels ≠ -100), examples otherwise."""
    labels = batch["labels"]
    return int((labels != -100).sum()) if task.kind == "seq2seq" else int(labels.shape[0])


def _loss_sum(task: Task, model: Any, batch: dict[str, torch.Tensor], label_smoothing: float) -> torch.Tensor:
    """The loss *summed* over the batch's units (see `loss_units`); the caller divides by the
    units of the whole accumulation window, so batch B × accumulation 1 and batch B/k ×
    accumulation k give the same gradient even when micro-batches hold different token counts."""
    labels = batch.pop("labels")
    logits = model(**batch).logits.float()
    if task.kind == "regression":
        return F.mse_loss(logits.squeeze(-1), labels.float(), reduction="sum")
    if task.kind == "classification":
        return F.cross_entropy(logits, labels, reduction="sum")
    return F.cross_entropy(logits.view(-1, logits.size(-1)), labels.view(-1), ignore_index=-100, label_smoothing=label_smoothing, reduction="sum")


@torch.no_grad()
def evaluate_split(task: Task, model: Any, tokenizer: Any, ds: Any, *, batch_size: int, device: torch.device) -> dict[str, float]:
    """The task's metrics on one tokenized split (generation for seq2seq); no autograd graph."""
    with torch.no_grad():
        return _evaluate_split(task, model, tokenizer, ds, batch_size=batch_size, device=device)


def _by_length(ds: Any) -> Any:
    """`ds` in order of token length (less padding per batch); as it is when it has no input_ids."""
    lens = token_lengths(ds) if "input_ids" in ds.column_names else None
    return ds.select(sorted(range(len(lens)), key=lens.__getitem__)) if lens else ds


def _evaluate_split(task: Task, model: Any, tokenizer: Any, ds: Any, *, batch_size: int, device: torch.device) -> dict[str, float]:
    model.eval()
    preds: list[Any] = []
    refs: list[Any] = []
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    if task.kind == "seq2seq":
        gen = task.generation
        assert gen is not None
        refs = column(ds, task.target_field)
        from transformers import DataCollatorWithPadding

        loader = eval_loader(ds.remove_columns([task.target_field, "labels"]), batch_size, DataCollatorWithPadding(tokenizer))
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            with amp:
                out = model.generate(**batch, num_beams=gen.num_beams, max_new_tokens=gen.max_new_tokens, min_new_tokens=gen.min_new_tokens,
                                     no_repeat_ngram_size=gen.no_repeat_ngram_size, length_penalty=gen.length_penalty, early_stopping=True)
            preds += [t.strip() for t in tokenizer.batch_decode(out, skip_special_tokens=True)]
    else:
        # evaluate in order of length (less padding); predictions and references stay paired per batch
        loader = eval_loader(_by_length(ds), batch_size, _collator(task, tokenizer, None))
        for batch in loader:
            labels = batch.pop("labels")
            with amp:
                logits = model(**{k: v.to(device) for k, v in batch.items()}).logits.float()
            preds += (logits.squeeze(-1) if task.kind == "regression" else logits.argmax(-1)).tolist()
            refs += labels.tolist()
    return compute_metrics(task.metrics, preds, refs, num_labels=task.num_labels)


def rung_subset(ds: Any, examples: int) -> Any:
    """The fixed dev subset a rung's loss is measured on: `examples` rows of `ds` after a seed-0
    shuffle (the same rows for every trial of a study, whatever its training seed); all of `ds`
    when it holds no more."""
    if len(ds) <= examples:
        return ds
    return ds.shuffle(seed=0).select(range(examples))


def dev_loss(task: Task, model: Any, tokenizer: Any, ds: Any, *, batch_size: int, device: torch.device) -> float:
    """Mean loss on a tokenized split, no autograd graph: the training loss without label
    smoothing (`_loss_sum`), averaged over `loss_units` — examples, or target tokens for seq2seq.

    Raises ValueError on an empty split."""

    if len(ds) == 0:
        raise ValueError("dev_loss: the split is empty")
    drop = [c for c in (task.target_field,) if c and c in ds.column_names]
    ds = _by_length(ds)  # a shuffled subset would pad every batch to its longest row
    loader = eval_loader(ds.remove_columns(drop) if drop else ds, batch_size, _collator(task, tokenizer, model))
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    total, units = 0.0, 0
    model.eval()
    with torch.no_grad():
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            units += loss_units(task, batch)
            with amp:
                total += float(_loss_sum(task, model, batch, 0.0))
    return total / max(units, 1)


def _param_groups(model: Any, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases and norms (the usual BERT recipe); frozen parameters left out."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def accumulate(task: Task, model: Any, window: list[dict[str, torch.Tensor]], label_smoothing: float) -> float:
    """Backward over one accumulation window; returns its mean loss (nan / inf: stopped early).

    Every micro-batch's summed loss is divided by the units (target tokens for seq2seq, examples
    otherwise) of the *whole window*, so the accumulated gradient is the gradient of the window's
    mean loss — the same as one batch holding all of it, whatever each micro-batch's length."""
    units = max(1, sum(loss_units(task, b) for b in window))
    total = 0.0
    for batch in window:
        loss = _loss_sum(task, model, dict(batch), label_smoothing) / units
        if not torch.isfinite(loss):
            return float(loss.item())
        loss.backward()
        total += loss.item()
    return total


def _windows(loader: Any, size: int) -> Any:
    """The loader's batches in accumulation windows of `size` (the last one of an epoch may be shorter)."""
    window: list[dict[str, torch.Tensor]] = []
    for batch in loader:
        window.append(batch)
        if len(window) == size:
            yield window
            window = []
    if window:
        yield window


def train_and_evaluate(task: Task, model: Any, tokenizer: Any, train_ds: Any, eval_sets: dict[str, Any], s: LoopSettings, *,
                       device: torch.device, report: Report | None = None, progress: bool = False,
                       param_groups: list[dict[str, Any]] | None = None) -> LoopResult:
    """Train, evaluating every `eval_every` steps; the model ends with the *best* evaluation's
    trainable tensors (so saved weights reproduce the recorded metric; `LoopResult.weights_step`).

    `param_groups`: AdamW groups with their own `lr` (one per kind of module, `unipetl.spaces.lr`);
    default: every trainable parameter at `s.lr`.
    """
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm
    from transformers import get_scheduler, set_seed

    set_seed(s.seed)
    res = LoopResult()
    model.to(device)
    res.peak_memory_kind = memory.start(device)  # this trial's peak, not the process's (evaluators.memory)
    res.peak_memory_start_bytes = memory.in_use(device)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    optimizer = torch.optim.AdamW(param_groups if param_groups is not None else _param_groups(model, s.weight_decay), lr=s.lr)
    # batches of similar length (with randomness, seeded): dynamic padding then pads far less,
    # which on SST-2 cuts a step by about a third against plain shuffling
    from transformers.trainer_pt_utils import LengthGroupedSampler

    lengths = token_lengths(train_ds)
    sampler = LengthGroupedSampler(s.batch_size, lengths=lengths, generator=torch.Generator().manual_seed(s.seed))
    loader = DataLoader(train_ds.remove_columns([c for c in (task.target_field,) if c and c in train_ds.column_names]),
                        batch_size=s.batch_size, sampler=sampler, collate_fn=_collator(task, tokenizer, model))
    steps_per_epoch = max(1, math.ceil(len(loader) / s.grad_accum))
    total = s.max_steps or max(1, math.ceil(s.epochs * steps_per_epoch))
    scheduler = get_scheduler(s.scheduler, optimizer, num_warmup_steps=int(s.warmup_ratio * total), num_training_steps=total)
    eval_every = s.eval_every or steps_per_epoch
    eval_bs = s.eval_batch_size or eval_batch_size(task, s.batch_size, device)
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    bar = tqdm(total=total, desc=f"{task.name}", unit="step", disable=None if progress else True)

    step = 0
    running: list[float] = []
    t_start, t_eval = time.perf_counter(), 0.0
    best_state: dict[str, torch.Tensor] | None = None
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    rungs = report if isinstance(report, RungReport) else None
    loss_rungs = rungs is not None and rungs.examples is not None  # rungs judge the dev loss; the end is not judged
    rung_ds = None

    def tell_costs(now: float) -> None:  # what a rung ranks besides the loss, so far (evaluators.reporting)
        if rungs is not None and rungs.wants("step_time", "memory"):
            rungs.tell_costs({"step_time": (now - t_start - t_eval) / step, "memory": memory.peak(device) - res.peak_memory_start_bytes}, step)

    while step < total and res.status == "ok":
        model.train()
        for window in _windows(loader, s.grad_accum):
            window = [{k: v.to(device) for k, v in b.items()} for b in window]
            res.train_tokens += sum(int(b["attention_mask"].sum()) + (int((b["labels"] != -100).sum()) if task.kind == "seq2seq" else 0) for b in window)
            with amp:
                window_loss = accumulate(task, model, window, s.label_smoothing)
            if not math.isfinite(window_loss):
                res.status, res.error = "failed", f"loss became {window_loss} at step {step + 1}"
                log.warning("%s: %s", task.name, res.error)
                break
            running.append(window_loss)
            if s.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, s.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            bar.update(1)
            due = step % eval_every == 0 and (rungs is None or rungs.evaluates_at(step))
            if due and step < total and loss_rungs:
                # a rung before the end: the dev loss on the fixed subset, judged; not a candidate for the best
                t0 = time.perf_counter()
                if rung_ds is None:
                    rung_ds = rung_subset(eval_sets.get("eval") or next(iter(eval_sets.values())), rungs.examples)
                value = dev_loss(task, model, tokenizer, rung_ds, batch_size=eval_bs, device=device)
                res.curve.append({"step": step, "loss": sum(running) / max(len(running), 1), "metrics": {},
                                  "rung": {"dev_loss": value, "examples": len(rung_ds)}})
                log.info("%s step %d: rung dev loss = %.4f (%d examples)", task.name, step, value, len(rung_ds))
                tell_costs(t0)
                if math.isfinite(value) and rungs(step, value):
                    res.status = "pruned"
                t_eval += time.perf_counter() - t0
                running = []
                model.train()
            elif due or step == total:
                t0 = time.perf_counter()
                before = res.best_step
                if not loss_rungs:
                    tell_costs(t0)
                # a stop at the last step would save nothing and mark a fully trained trial partial
                if _evaluate(task, model, tokenizer, eval_sets, step, running, res, eval_bs, device, None if loss_rungs else report) and step < total:
                    res.status = "pruned"
                if res.best_step != before:  # a new best: keep its tensors (on the CPU) for the end
                    best_state = {n: p.detach().to("cpu", copy=True) for n, p in trained}
                t_eval += time.perf_counter() - t0
                bar.set_postfix({task.main_metric: f"{res.metric:.4f}" if res.metric is not None else "-"})
                running = []
                model.train()
            if step >= total or res.status != "ok":
                break
    if best_state is not None and res.best_step != step:
        with torch.no_grad():  # end on the best evaluation's weights: what is saved is what was scored
            for n, p in trained:
                p.copy_(best_state[n].to(p.device))
    res.weights_step = res.best_step if best_state is not None else (step or None)
    res.train_seconds = time.perf_counter() - t_start - t_eval
    res.eval_seconds = t_eval
    bar.close()
    res.steps = step
    res.peak_memory_bytes = memory.peak(device)
    return res


def _evaluate(task: Task, model: Any, tokenizer: Any, eval_sets: dict[str, Any], step: int, running: list[float], res: LoopResult,
              batch_size: int, device: torch.device, report: Report | None) -> bool:
    """Evaluate every eval split, update the curve and the best; returns True to stop."""
    metrics: dict[str, float] = {}
    for name, ds in eval_sets.items():
        out = evaluate_split(task, model, tokenizer, ds, batch_size=batch_size, device=device)
        metrics.update(out if name == "eval" else {f"{name}_{k}": v for k, v in out.items()})
    value = metrics[task.main_metric]
    res.curve.append({"step": step, "loss": sum(running) / max(len(running), 1), "metrics": metrics})
    better = res.metric is None or (value > res.metric if task.higher_is_better else value < res.metric)
    if better:
        res.metric, res.best_step, res.metrics = value, step, metrics
    log.info("%s step %d: %s = %.4f", task.name, step, task.main_metric, value)
    return bool(report(step, value)) if report is not None else False
