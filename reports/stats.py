"""Uncertainty for every number a report states: seed intervals, paired verdicts, the chance bar.

A frontier measured with one seed ranks the noise: on SST-2 / MiniLM the seed spread is about
±2 points (std over 3 seeds 0.8–2.9) while the paper's within-adapter lessons are
0.5–1.5-point effects. So:

- a design point's metric is the mean over its seeds, with a Student-t confidence interval
  (`summarize`);
- "A beats B" is a *paired* comparison over seeds (seed k of A against seed k of B: the same data
  order and initialisation stream), with the mean difference, its t-interval and one of
  *holds* / *reversed* / *inconclusive* (`paired_verdict`) — inconclusive whenever the interval
  crosses 0 or fewer than two pairs exist; never a verdict from a single pair;
- a point must clear a trivial baseline (majority class / chance) by more than the eval set's
  own sampling noise to count (`beats_baseline`).

Pure numpy / scipy: no torch (reports never import it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats as _st

CONFIDENCE = 0.95
Verdict = Literal["holds", "reversed", "inconclusive"]


@dataclass(frozen=True, slots=True)
class Summary:
    """Mean, sample standard deviation and the t-interval of one design point's seed values."""

    n: int
    mean: float
    std: float | None  # None with one seed
    lo: float | None  # confidence interval of the mean (None with one seed)
    hi: float | None

    def text(self, digits: int = 4) -> str:
        if self.n < 2 or self.lo is None or self.hi is None:
            return f"{self.mean:.{digits}f} (1 seed, no interval)"
        half = (self.hi - self.lo) / 2
        return f"{self.mean:.{digits}f} ± {half:.{digits}f} ({int(CONFIDENCE * 100)} % CI, {self.n} seeds)"


def t_half_width(std: float, n: int, confidence: float = CONFIDENCE) -> float:
    """Half-width of the Student-t confidence interval of a mean: t_{n−1, (1+c)/2} · std / √n."""
    if n < 2:
        return math.inf
    return float(_st.t.ppf((1 + confidence) / 2, n - 1)) * std / math.sqrt(n)


def summarize(values: Sequence[float], confidence: float = CONFIDENCE) -> Summary:
    """Mean, std (ddof 1) and t-interval of `values` (one per seed); raises ValueError when empty."""
    x = np.asarray([float(v) for v in values], dtype=float)
    if x.size == 0:
        raise ValueError("summarize: no values")
    mean = float(x.mean())
    if x.size < 2:
        return Summary(1, mean, None, None, None)
    std = float(x.std(ddof=1))
    half = t_half_width(std, int(x.size), confidence)
    return Summary(int(x.size), mean, std, mean - half, mean + half)


@dataclass(frozen=True, slots=True)
class Paired:
    """A paired comparison over seeds: differences a_k − b_k (sign-adjusted so > 0 means "a better")."""

    n: int
    mean: float | None
    lo: float | None
    hi: float | None
    verdict: Verdict
    diffs: tuple[float, ...]

    def text(self, scale: float = 100.0, unit: str = " points") -> str:
        if self.mean is None:
            return f"{self.verdict} (no paired seeds)"
        if self.lo is None or self.hi is None:
            return f"{self.verdict}: Δ {self.mean * scale:+.2f}{unit} from {self.n} pair (no interval)"
        return (f"{self.verdict}: Δ {self.mean * scale:+.2f}{unit}, {int(CONFIDENCE * 100)} % CI "
                f"[{self.lo * scale:+.2f}, {self.hi * scale:+.2f}] over {self.n} paired seeds")


def median_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """Distribution-free confidence interval of a median: the order statistics (x_(k), x_(n+1−k))
    of the n values, k the largest integer with 2·P(Bin(n, ½) ≤ k − 1) ≤ 1 − confidence, so the
    interval covers the population median with probability ≥ `confidence` whatever the (continuous)
    distribution — the interval that inverts the sign test (Conover, "Practical Nonparametric
    Statistics", 3rd ed. 1999, §3.2). Returns None when n is too small for any such pair (n < 6
    at 95 %: even (min, max) covers only 1 − 2·2⁻ⁿ). Used for paired latency ratios, whose
    spread on a shared CPU is skewed and heavy-tailed, where a t-interval would not hold. Raises
    ValueError on a NaN value."""
    x = np.sort(np.asarray([float(v) for v in values], dtype=float))
    if np.isnan(x).any():
        raise ValueError("median_interval: NaN among the values")
    n = int(x.size)
    k = 0
    while k + 1 <= n // 2 and 2 * float(_st.binom.cdf(k, n, 0.5)) <= 1 - confidence:
        k += 1
    if k == 0:
        return None
    return float(x[k - 1]), float(x[n - k])


def paired_verdict(a: Sequence[float], b: Sequence[float], *, higher: bool = True, confidence: float = CONFIDENCE) -> Paired:
    """Does a beat b? `a[k]`, `b[k]` are the same seed's values; the sequences must be paired.

    Effect = mean of d_k = ±(a_k − b_k) (sign so that > 0 favours `a` whatever the metric's
    direction), interval = mean ± t_{n−1} · sd(d) / √n (a paired t-interval). *holds* when the
    whole interval is above 0, *reversed* when below, *inconclusive* otherwise — including
    n < 2, where no interval exists. Raises ValueError when the lengths differ.
    """
    if len(a) != len(b):
        raise ValueError(f"paired_verdict: {len(a)} values of a but {len(b)} of b; pair them by seed first")
    sign = 1.0 if higher else -1.0
    d = np.asarray([sign * (float(x) - float(y)) for x, y in zip(a, b, strict=True)], dtype=float)
    if d.size == 0:
        return Paired(0, None, None, None, "inconclusive", ())
    mean = float(d.mean())
    if d.size < 2:
        return Paired(1, mean, None, None, "inconclusive", tuple(d.tolist()))
    sd = float(d.std(ddof=1))
    half = t_half_width(sd, int(d.size), confidence) if sd > 0 else 0.0
    lo, hi = mean - half, mean + half
    verdict: Verdict = "holds" if lo > 0 else "reversed" if hi < 0 else "inconclusive"
    return Paired(int(d.size), mean, lo, hi, verdict, tuple(d.tolist()))


def unpaired_significant(a: Sequence[float], b: Sequence[float], *, higher: bool = True, confidence: float = CONFIDENCE) -> bool | None:
    """Welch's t-test that a's mean beats b's (one-sided at 1 − confidence); None without ≥ 2 values each.

    Used to mark frontier dominance between points whose seeds are not paired (different studies)."""
    if len(a) < 2 or len(b) < 2:
        return None
    x = np.asarray(a, dtype=float) * (1 if higher else -1)
    y = np.asarray(b, dtype=float) * (1 if higher else -1)
    if x.std(ddof=1) == 0 and y.std(ddof=1) == 0:
        return bool(x.mean() > y.mean())
    res = _st.ttest_ind(x, y, equal_var=False, alternative="greater")
    return bool(res.pvalue < 1 - confidence)


def baseline_margin(n_eval: int | None) -> float:
    """Two standard errors of an accuracy-like metric on n eval examples, at its widest (p = ½):
    2·√(¼ / n) = 1/√n (872 SST-2 dev sentences: 0.034). A point within this of the trivial
    baseline is indistinguishable from it by the eval set alone. 0 when n is unknown."""
    return 1.0 / math.sqrt(n_eval) if n_eval and n_eval > 0 else 0.0


def beats_baseline(value: float | None, baseline: float | None, n_eval: int | None, *, higher: bool = True) -> bool | None:
    """True when `value` clears the trivial baseline by more than `baseline_margin(n_eval)`;
    None when there is no baseline (generation tasks) or no value."""
    if value is None or baseline is None or not math.isfinite(value):
        return None
    margin = baseline_margin(n_eval)
    return value > baseline + margin if higher else value < baseline - margin
