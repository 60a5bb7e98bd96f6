"""What the fine-tuning loop tells a search at each evaluation (torch-free: search workers import it).

`Report`: `report(step, value) -> stop?`, called after every evaluation with the main metric.
`RungReport`: a report that is asked only at some steps (MO-ASHA's rungs, `search/mo_asha.py`):
the loop then evaluates only at those multiples of `eval_every` and at the last step, so
successive halving pays one dev-set evaluation per rung instead of one per `eval_every`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

Report = Callable[[int, float], bool]


@dataclass(frozen=True, slots=True)
class RungReport:
    """`judge(step, value)` as the report; `evaluates_at(step)` (step a multiple of `eval_every`)
    says whether the loop evaluates there. The last step is always evaluated."""

    judge: Report
    evaluates_at: Callable[[int], bool]

    def __call__(self, step: int, value: float) -> bool:
        return self.judge(step, value)
