"""How often does a report's lesson "hold" when it is false? The false-positive rate of `findings`.

    .venv/bin/python benchmarks/findings_null.py                  # 1,000 simulated studies per cell
    .venv/bin/python benchmarks/findings_null.py --quick          # CI smoke: 20 per cell

Each simulated study holds k parallel-adapter designs and one sequential one in the same budget
bin, each run with S seeds; every design's seed values are 0.85 + a seed effect shared by all
designs (the data order) + its own noise (both N(0, 0.01)), so the lesson "parallel insertion
beats sequential" is false: a sound verdict says *holds* in at most 2.5 % of the studies (a 95 %
two-sided interval above 0) and *reversed* as often. Two rules are compared on the same studies:

- `reports.effects.findings` as it is: each side's best design is chosen on its first seed and
  tested on the others;
- the rule it replaced: the best by the mean over all seeds, tested on those same seeds.

Choosing and testing on the same seeds lets the side with more designs pick its luckiest one, so
that rule's *holds* rate grows with k. The rates come with 95 % Wilson intervals.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import header_block, markdown_table, write_results  # noqa: E402

logger = logging.getLogger("findings_null")
LESSON = "parallel insertion beats sequential"
Z = 1.959963984540054


def wilson(hits: int, n: int) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion hits / n (Wilson 1927)."""
    if n == 0:
        return (0.0, 1.0)
    p = hits / n
    centre = (p + Z * Z / (2 * n)) / (1 + Z * Z / n)
    half = Z * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n)) / (1 + Z * Z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def study_records(rng: np.random.Generator, k: int, seeds: int) -> list[dict[str, Any]]:
    """Records of one null study: k parallel designs (r = 8 … 8 + k − 1) and one sequential, seeds 0 … S − 1 each."""
    from unipetl.spaces.presets import parse_preset

    shared = rng.normal(0.0, 0.01, seeds)
    out: list[dict[str, Any]] = []
    for name in [f"pa-ffn:r={8 + i}" for i in range(k)] + ["sa-ffn:r=8"]:
        v = parse_preset(name)
        parent = len(out)
        for s, value in enumerate(0.85 + shared + rng.normal(0.0, 0.01, seeds)):
            out.append({"status": "ok", "task": "sst2", "model": "minilm", "variant": v.to_dict(), "paper_fraction": 0.004, "metric": float(value),
                        "main_metric": "accuracy", "higher_is_better": True, "seed": s, "parent": None if s == 0 else parent, "fidelity": "final"})
    return out


def same_seed_verdict(points: Any) -> str:
    """The replaced rule: best of each side by its all-seed mean, paired on all common seeds."""
    from unipetl.reports.frontier import _seeds
    from unipetl.reports.stats import paired_verdict

    sides = []
    for choice in ("parallel", "sequential"):
        rows = [r for r in points.iter_rows(named=True) if r["insertion"] == choice and r["n_seeds"] >= 2]
        sides.append(_seeds(max(rows, key=lambda r: (r["metric"], -r["trial"]))))
    common = [s for s in sides[0] if s in sides[1]]
    return paired_verdict([sides[0][s] for s in common], [sides[1][s] for s in common]).verdict


def run(ks: list[int], seeds: int, reps: int, seed: int) -> dict[str, Any]:
    from unipetl.reports import effects
    from unipetl.reports.frontier import design_points
    from unipetl.reports.load import frame, record_row

    rng = np.random.default_rng(seed)
    cells = []
    for k in ks:
        counts = {"current": {"holds": 0, "reversed": 0}, "same seeds": {"holds": 0, "reversed": 0}}
        t0 = time.perf_counter()
        for _ in range(reps):
            df = frame([record_row(r, study="null", trial=i) for i, r in enumerate(study_records(rng, k, seeds))])
            verdict = {f["lesson"]: f for f in effects.findings(df)}[LESSON]["verdict"]
            old = same_seed_verdict(design_points(df))
            for rule, v in (("current", verdict), ("same seeds", old)):
                if v in counts[rule]:
                    counts[rule][v] += 1
        for rule, c in counts.items():
            cells.append({"k": k, "seeds": seeds, "rule": rule, "studies": reps, **c,
                          "holds_rate": c["holds"] / reps, "holds_ci": wilson(c["holds"], reps),
                          "reversed_rate": c["reversed"] / reps, "reversed_ci": wilson(c["reversed"], reps)})
        logger.info("k=%d: %d studies in %.1f s", k, reps, time.perf_counter() - t0)
    return {"cells": cells}


def render(result: dict[str, Any], command: list[str], caps: dict[str, Any]) -> str:
    def rate(r: float, ci: tuple[float, float]) -> str:
        return f"{100 * r:.1f} % [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"

    rows = [[c["k"], c["seeds"], c["rule"], c["studies"], rate(c["holds_rate"], c["holds_ci"]), rate(c["reversed_rate"], c["reversed_ci"])]
            for c in result["cells"]]
    return (header_block(command, caps) + "\n"
            + markdown_table(["parallel designs k (vs 1 sequential)", "seeds per design", "rule", "null studies", "holds (nominal ≤ 2.5 %) [95 % CI]",
                              "reversed (nominal ≤ 2.5 %) [95 % CI]"], rows))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=1000, help="simulated null studies per (k, rule)")
    ap.add_argument("--k", type=int, nargs="+", default=[1, 4, 10], help="parallel designs per study")
    ap.add_argument("--seeds", type=int, default=4, help="seeds per design (the first chooses, the others test)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the simulation")
    ap.add_argument("--quick", action="store_true", help="CI smoke: 20 studies per cell")
    ap.add_argument("--out", type=Path, default=None, help="output folder (default benchmarks/out)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    reps = 20 if args.quick else args.reps
    caps = {"reps": reps, "k": args.k, "seeds": args.seeds, "simulation seed": args.seed}
    result = run(args.k, args.seeds, reps, args.seed)
    write_results("findings_null", {"caps": caps, **result}, render(result, ["benchmarks/findings_null.py", *(argv or sys.argv[1:])], caps), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
