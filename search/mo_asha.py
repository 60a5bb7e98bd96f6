"""Multi-objective asynchronous successive halving (MO-ASHA) for frontier-mode studies.

Neither Optuna's pruners nor Ray Tune's schedulers stop trials of a multi-objective study, so a
frontier search trains every trial to the end. MO-ASHA (Schmucker et al., "Multi-objective
Asynchronous Successive Halving", 2021, §3) keeps ASHA's rungs (Li et al. 2020, Alg. 2) and
replaces "the top 1/η by the metric" with "the top 1/η by non-dominated rank": here the rank is
over (dev loss at the rung ↓, each cost the study's frontier trades ↓ — log paper fraction, and
latency, step time or memory when `--objectives` names them), the designs inside one front ordered
by the study's `rung_order` (ORDERS, objectives scaled to [0, 1] over the rung's trials): "hv",
each point's hypervolume contribution to that front (larger first; `moocore.hv_contributions`,
reference 1.1 in every scaled objective); "eps-net", the ε-net order (Salinas et al. 2021, used by
MO-ASHA's authors): the lowest rung value first, then repeatedly the design farthest from those
already taken; "crowding", NSGA-II's crowding distance (Deb et al. 2002), the extremes of every
objective first. Then by the metric, then by trial number (so every process decides the same
way). With the reference just past the worst, "hv" ranks a front's extremes low — the lowest
loss among them — while the other two rank them first; measured on the same trials the three
keep about as many of the final front (RESULTS §7j). The costs
other than parameters are measured by the evaluator and stored as the trial's `rung_costs`
attribute before its first rung (evaluators.reporting: latency is timed right after realization,
step time and memory so far at each rung). Studies created before rungs ranked the study's own
costs (no `rung_costs` study attribute) rank (loss, log paper fraction) as they did.

Rungs are training steps `min_steps · η^k` (k = 0, 1, …). A trial evaluated at a rung step is
judged there, asynchronously, against every trial of the study that has a value at that rung
and is RUNNING, COMPLETE or PRUNED: it continues when it ranks in the top max(1, ⌊n/η⌋) of
those n, else it stops (PRUNED, partial fidelity: never on the frontier). The values live in the
study's storage as intermediate values, so any worker — a local process or a Ray task — judges
with the same data, and a resumed study judges again from what is stored: a trial failed as
stale (FAIL) is not a competitor, so its retry is not counted twice at a rung.

What a rung measures (`evaluators.reporting`): the mean dev loss on a fixed subset of the dev
split (`rung_examples`, 256 by default), not the main metric: early in training accuracy sits at
the majority class for every trial (on SST-2 / MiniLM at 7 of 63 steps all trials scored the
same), so the rank over (accuracy, size) promoted by size alone, while the loss already orders
them; and the subset costs a fraction of a dev pass. Studies created before this (no
`rung_examples` attribute) keep ranking the main metric from a full dev pass.

Extra seeds of a design point always train to the end (they measure noise, not promise). So do
the named methods (`search.worker`): their rung values are stored and count for every other
trial's rank, but they are not stopped — they are the report's reference points, and stopping
one that sits on the front loses its hypervolume (RESULTS §7d: in one repeat four of six were
stopped at the rung: final HV over chance 0.756 against full fidelity's 1.136).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import moocore
import numpy as np
import optuna
from optuna.trial import TrialState

from unipetl.search import optuna_ext
from unipetl.spaces.registry import UnipetlError, did_you_mean

logger = logging.getLogger(__name__)
PRUNER = "mo-asha"
ACTIVE = (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)


ORDERS = ("hv", "eps-net", "crowding")  # how a rung orders the designs inside one non-dominated front
ORDER = "hv"  # a new study's order (StudySpec.rung_order)
LEGACY_ORDER = "hv"  # studies created before the order was a setting (no `rung_order` study attribute)


@dataclass(frozen=True, slots=True)
class Rungs:
    """Rung steps `min_steps · eta^k`; `eta` is the reduction factor (keep 1/η at each rung); `order`
    orders the designs inside one non-dominated front (ORDERS)."""

    min_steps: int
    eta: int = 3
    order: str = LEGACY_ORDER

    def __post_init__(self) -> None:
        if isinstance(self.min_steps, bool) or not isinstance(self.min_steps, int) or self.min_steps < 1:
            raise UnipetlError(f"`train.eval_every` (the first MO-ASHA rung, in optimizer steps) should be a positive integer, got {self.min_steps!r}.")
        if isinstance(self.eta, bool) or not isinstance(self.eta, int) or self.eta < 2:
            raise UnipetlError(f"`reduction_factor` should be an integer >= 2, got {self.eta!r}.")
        check_order(self.order)

    def is_rung(self, step: int) -> bool:
        if step < self.min_steps or step % self.min_steps:
            return False
        q = step // self.min_steps
        while q % self.eta == 0:
            q //= self.eta
        return q == 1


def stored_rungs(attrs: Mapping[str, Any]) -> Rungs:
    """The rungs a stored MO-ASHA study runs with (search.study_attrs: `train.eval_every`, `reduction_factor`,
    `rung_order`; a study older than the order runs LEGACY_ORDER). Raises UnipetlError naming a bad stored value."""
    return Rungs((attrs.get("train") or {}).get("eval_every"), attrs.get("reduction_factor", 3), attrs.get("rung_order") or LEGACY_ORDER)


def check_order(order: object) -> str:
    """`order` if it is one of ORDERS, else UnipetlError naming the field."""
    if not isinstance(order, str) or order not in ORDERS:
        hint = did_you_mean(str(order), ORDERS)
        raise UnipetlError(f"`rung_order` should be one of {', '.join(ORDERS)}, got {order!r}.{hint if hint.startswith(' Did') else ''}")
    return order


def _front_keys(z: np.ndarray, order: str) -> np.ndarray:
    """Sort keys, shape (n,), smaller first, for the n points `z`, shape (n, m), of one front in
    minimisation form, each objective scaled to [0, 1] over all the rung's trials (not over this
    front: so also for crowding, where NSGA-II implementations often scale per front), given in a
    canonical order (first objective, then the others, then trial number): of equal keys the
    earlier point comes first, so every caller decides the same way. Crowding gives each copy of a
    duplicated extreme an infinite distance, as NSGA-II does."""
    n = len(z)
    if order == "hv":  # larger hypervolume contribution first, reference just past the worst
        return -moocore.hv_contributions(z, ref=np.full(z.shape[1], 1.1))
    if order == "crowding":  # NSGA-II crowding distance (Deb et al. 2002, §III-B), larger first, extremes first of all
        dist = np.zeros(n)
        for m in range(z.shape[1]):
            o = np.argsort(z[:, m], kind="stable")
            dist[o[0]] = dist[o[-1]] = np.inf
            dist[o[1:-1]] += z[o[2:], m] - z[o[:-2], m]
        return -dist
    # ε-net (Salinas et al. 2021, §3; MO-ASHA, Schmucker et al. 2021, §3): start at the best of the first
    # objective, then repeatedly the point farthest (Euclidean) from those already taken
    keys, taken = np.empty(n), [0]
    gap = np.linalg.norm(z - z[taken[0]], axis=1)
    keys[taken[0]] = 0
    for k in range(1, n):
        gap[taken] = -np.inf
        i = int(np.argmax(gap))  # the first of equal gaps
        keys[i] = k
        taken.append(i)
        gap = np.minimum(gap, np.linalg.norm(z - z[i], axis=1))
    return keys


def ranking(values: Sequence[Sequence[float]], maximise: Sequence[bool], numbers: Sequence[int], order: str = LEGACY_ORDER) -> list[int]:
    """Indices of `values` (one objective vector per trial) best first: non-dominated rank, then
    within the rank's front by `order` (ORDERS: "hv" hypervolume contribution, larger first;
    "eps-net" the ε-net order from the first objective's best; "crowding" NSGA-II crowding
    distance), then the first objective, then the trial number. Every objective is scaled to
    [0, 1] over these points first. Ties are exact, so every caller gets the same order.
    Raises UnipetlError for an unknown `order`."""
    check_order(order)
    pts = np.asarray(values, dtype=float)
    if len(pts) == 0:
        return []
    ranks = moocore.pareto_rank(pts, maximise=list(maximise))
    sign = np.array([-1.0 if m else 1.0 for m in maximise])
    z = pts * sign
    lo, hi = z.min(axis=0), z.max(axis=0)
    z = (z - lo) / np.where(hi > lo, hi - lo, 1.0)
    key = np.zeros(len(pts))
    for r in np.unique(ranks):
        idx = sorted(np.flatnonzero(ranks == r), key=lambda i: (*z[i], numbers[i]))
        key[idx] = _front_keys(z[idx], order)
    return sorted(range(len(pts)), key=lambda i: (int(ranks[i]), float(key[i]), float(z[i, 0]), int(numbers[i])))


def keeps(values: Sequence[Sequence[float]], maximise: Sequence[bool], numbers: Sequence[int], candidate: int, eta: int, order: str = LEGACY_ORDER) -> bool:
    """Does trial `candidate` (an index into `values`) continue at a rung of n trials? Top max(1, ⌊n/η⌋) by `ranking(…, order)`."""
    best_first = ranking(values, maximise, numbers, order)
    return best_first.index(candidate) < max(1, len(best_first) // eta)


COSTS_ATTR = "rung_costs"  # a trial's user attr: what its evaluator noted (evaluators.reporting; `cost_vector` reads it)
LEGACY_COSTS = ("params",)  # studies created before rungs ranked the study's own costs


def cost_vector(costs: Sequence[str], paper_fraction: float | None, noted: Mapping[str, Any], step: int | None = None) -> list[float] | None:
    """One trial's costs at the rung `step`, in `costs` order: log10 paper fraction for "params"
    (it spans orders of magnitude), else the noted value — of the structure (`noted[cost]`), or
    measured at this very rung (`noted["at"][str(step)][cost]`: step time and memory so far; a
    value from a later rung is not used). None when one is missing."""
    at = ((noted.get("at") or {}).get(str(step)) or {}) if step is not None else {}
    out = []
    for c in costs:
        v = (None if paper_fraction is None else math.log10(max(float(paper_fraction), 1e-12))) if c == "params" else noted.get(c, at.get(c))
        if v is None or not math.isfinite(float(v)):
            return None
        out.append(float(v))
    return out


def judge(study: optuna.Study, trial: optuna.Trial, step: int, value: float, rungs: Rungs, *, higher: bool, paper_fraction: float,
          costs: Sequence[str] = LEGACY_COSTS, noted: Mapping[str, Any] | None = None) -> bool:
    """Store `value` as the trial's intermediate value at `step`; at a rung, return True when the
    trial should stop (not in the top 1/η of the rung), else False.

    The rank is over (value, *costs): `costs` are the study's frontier costs (reports.objectives
    names), `noted` this trial's measured ones (the others' are their `rung_costs` user attr). A
    cost this trial could not measure (an evaluator that does not note it) is left out of its
    judgement; a competitor lacking one of the costs ranked is left out of the rung."""
    optuna_ext.set_intermediate(study, optuna_ext.trial_id(trial), step, value)
    if not rungs.is_rung(step):
        return False
    from unipetl.search.study import is_seed_trial

    noted = dict(noted or {})
    used = [c for c in costs if cost_vector([c], paper_fraction, noted, step) is not None]
    if len(used) < len(costs):
        logger.warning("trial %d, rung %d: the evaluator measured no %s; ranked without it", trial.number, step,
                       ", ".join(c for c in costs if c not in used))
    mine = cost_vector(used, paper_fraction, noted, step) or []
    values, numbers = [(float(value), *mine)], [trial.number]
    for t in study.get_trials(deepcopy=False, states=ACTIVE):
        v = t.intermediate_values.get(step)
        if t.number == trial.number or v is None or not math.isfinite(v) or is_seed_trial(t):
            continue
        theirs = cost_vector(used, t.user_attrs.get("paper_fraction"), t.user_attrs.get(COSTS_ATTR) or {}, step)
        if theirs is not None:
            values.append((float(v), *theirs))
            numbers.append(t.number)
    return not keeps(values, (higher, *[False] * len(used)), numbers, 0, rungs.eta, rungs.order)


__all__ = ["COSTS_ATTR", "LEGACY_COSTS", "LEGACY_ORDER", "ORDER", "ORDERS", "PRUNER", "Rungs", "check_order", "cost_vector", "judge", "keeps", "ranking",
           "stored_rungs"]
