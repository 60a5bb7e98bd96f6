"""What the fine-tuning loop tells a search at each evaluation (torch-free: search workers import it).

`Report`: `report(step, value) -> stop?`, called after every evaluation with the main metric.
`RungReport`: a report that is asked only at some steps (MO-ASHA's rungs, `search/mo_asha.py`):
the loop then evaluates only at those multiples of `eval_every` and at the last step, so
successive halving pays one evaluation per rung instead of one per `eval_every`.

What a rung measures (`RungReport.examples`): with a number n, the mean dev loss (the training
loss without label smoothing: cross-entropy per example, per target token for seq2seq, squared
error for regression) on a fixed subset of n dev examples (`rung_subset`: seed 0) — lower is
better. Early in training the loss moves while accuracy still sits at the majority class (every
trial ties there, and the ranking would fall back on parameter count alone), and n examples cost
a fraction of a dev pass. These rung evaluations do not compete for the trial's best evaluation:
its metric is the full dev evaluation at the end, the same number a full-fidelity trial records.
With None (studies created before the rung loss existed), a rung is a full dev evaluation and
reports the main metric (such a study, resumed, now samples with TPE like a new one). A report
whose `evaluates_at` is always False evaluates once, at the end (MO-ASHA's extra seeds).

What a rung ranks besides the loss (`RungReport.costs`): the costs the study's frontier trades
(reports.objectives), so a 3-objective study (accuracy, params, latency) keeps at each rung the
designs that may end on *its* front, not on the (accuracy, params) one. Paper parameters are
known to the search before training; the evaluator gives the others through `note(costs, step)`
before the rung they count for: `latency` / `latency_batch` (the variant's forward cost relative
to the backbone: it depends on the structure only, so `evaluators.trial` times it right after
realization, step None, and the record reuses that measurement), `step_time` (training seconds
per optimizer step so far) and `memory` (peak growth over what was resident when the loop began,
`evaluators.memory`) from the loop at each rung, with that rung's step — a trial judged at step k
is compared with what its competitors measured at step k, not later.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

Report = Callable[[int, float], bool]
RUNG_EXAMPLES = 256  # dev examples a rung's loss is measured on (SST-2: 256 of 872)


@dataclass(frozen=True, slots=True)
class RungReport:
    """`judge(step, value)` as the report; `evaluates_at(step)` (step a multiple of `eval_every`)
    says whether the loop evaluates there. The last step is always evaluated (fully) and is not
    judged when `examples` is set. `examples`: rung value = mean dev loss on that many examples."""

    judge: Report
    evaluates_at: Callable[[int], bool]
    examples: int | None = None
    costs: tuple[str, ...] = ()  # reports.objectives cost names the judge ranks besides the loss ("params" needs no note)
    # the evaluator's measured costs and the rung step they were measured at (None: the structure's, every rung's)
    note: Callable[[Mapping[str, float], int | None], None] | None = None

    def wants(self, *names: str) -> bool:
        """Does the judge rank any of these costs (and take notes)?"""
        return self.note is not None and any(n in self.costs for n in names)

    def tell_costs(self, costs: Mapping[str, float | None], step: int | None = None) -> None:
        """Pass the costs the judge ranks (others, and None values, are dropped) to `note`, with
        the rung `step` they were measured at (None for a cost of the structure, e.g. latency)."""
        kept = {k: float(v) for k, v in costs.items() if k in self.costs and v is not None}
        if self.note is not None and kept:
            self.note(kept, step)

    def __call__(self, step: int, value: float) -> bool:
        return self.judge(step, value)
