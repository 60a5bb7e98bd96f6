"""How early does a multi-fidelity rung know which designs end on the front?

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/rung_signal.py --repeat 0 --tickets 13   # one process per repeat
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/rung_signal.py --repeat 1 --tickets 13
    .venv/bin/python benchmarks/rung_signal.py --report-only                                # tabulate every repeat
    .venv/bin/python benchmarks/rung_signal.py --quick                                      # CI smoke: 2 trials, 3 steps

The multi-fidelity arm of `search_efficiency.py` (caps `mf`: 4,000 SST-2 sentences = 125 steps of
32, MiniLM, frontier mode at 0.5 %, TPE, named methods first, repeat r trains with seed r) with
one change that makes it a measurement instead of a search: a rung every `--every` steps
(default 7) and nothing is stopped there (`mo_asha.keeps` always keeps, instrumentation of this
script only), so each trial stores its whole curve of rung values — the mean dev loss on the
256 fixed dev examples MO-ASHA ranks — and its final full-dev accuracy. Per step k the report gives:

- Spearman's ρ between the loss at k and −(final accuracy) over all trials of all repeats;
- how many trials are still within 0.01 of ln 2 (the loss of a two-class head that has not
  moved: the rung cannot order them);
- per repeat, the recall of the final Pareto front (accuracy ↑, paper fraction ↓) among the top
  ⌊n/3⌋ trials by MO-ASHA's own order at k (`mo_asha.ranking` over (loss ↓, log10 fraction ↓)):
  the share of the designs that end on the front that a rung at k with η = 3 would keep,
  were all n to meet there;
- per repeat, the same for a 3-objective study's front (accuracy ↑, paper fraction ↓, batch-1
  latency × backbone ↓, measured for every trial at its end), kept by the top ⌊n/3⌋ of two
  orders on the same trials: the rung of older studies, (loss, log10 fraction), and the rung
  that ranks the study's own costs, (loss, log10 fraction, latency) — a paired comparison
  (the front designs each order keeps and the other does not are counted).

Each repeat has its own SQLite file (`rung_signal_r<r>.db` under `--out`), so two repeats run as
two processes without sharing a database; re-running resumes.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import OUT_DIR, header_block, markdown_table, write_results  # noqa: E402

FLAT = 0.01  # |loss − ln 2| below this: the head has not moved


def analyze(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per rung step: n, Spearman ρ(loss, −accuracy) (None below 3 trials or for a constant
    column), trials within FLAT of ln 2, and per repeat (front members among the top ⌊n/3⌋ by
    MO-ASHA's order, front size, n). `rows`: dicts with repeat, trial, paper_fraction, metric
    (final accuracy), losses ({step: rung loss}) and latency (batch-1 ratio; None: no 3-objective figures)."""
    import numpy as np
    from scipy.stats import spearmanr

    from unipetl.reports.frontier import nondominated, pareto_mask
    from unipetl.search.mo_asha import ranking

    out = []
    for step in sorted({s for r in rows for s in r["losses"]}):
        have = [r for r in rows if step in r["losses"]]
        losses, acc = [r["losses"][step] for r in have], [r["metric"] for r in have]
        rho = None
        if len(have) >= 3 and len(set(losses)) > 1 and len(set(acc)) > 1:
            rho = float(spearmanr(losses, [-a for a in acc]).statistic)
        recall, recall3 = {}, {}
        for rep in sorted({r["repeat"] for r in have}):
            mine = [r for r in have if r["repeat"] == rep]
            numbers, keep = [r["trial"] for r in mine], max(1, len(mine) // 3)
            order = ranking([(r["losses"][step], math.log10(r["paper_fraction"])) for r in mine], (False, False), numbers)
            top = set(order[:keep])
            front = set(np.flatnonzero(pareto_mask([r["paper_fraction"] for r in mine], [r["metric"] for r in mine])).tolist())  # the report's front
            recall[rep] = {"kept": len(front & top), "front": len(front), "n": len(mine)}
            if all(r.get("latency") is not None for r in mine):
                front3 = set(np.flatnonzero(nondominated([[r["paper_fraction"] for r in mine], [r["metric"] for r in mine], [r["latency"] for r in mine]],
                                                         [False, True, False])).tolist())
                order3 = ranking([(r["losses"][step], math.log10(r["paper_fraction"]), r["latency"]) for r in mine], (False, False, False), numbers)
                top3 = set(order3[:keep])
                recall3[rep] = {"front": len(front3), "legacy": len(front3 & top), "costs": len(front3 & top3), "n": len(mine),
                                "gained": len(front3 & (top3 - top)), "lost": len(front3 & (top - top3))}  # the discordant pairs
        out.append({"step": step, "n": len(have), "spearman": rho, "near_ln2": sum(abs(v - math.log(2)) < FLAT for v in losses), "front_recall": recall,
                    "front3_recall": recall3})
    return out


def rows_of(out: Path) -> list[dict[str, Any]]:
    """Every COMPLETE trial with a final metric, from every repeat's database under `out`."""
    import optuna
    from optuna.trial import TrialState

    rows = []
    for db in sorted(out.glob("rung_signal_r*.db")):
        repeat = int(db.stem.rsplit("_r", 1)[1])
        storage = f"sqlite:///{db.resolve()}"
        for name in optuna.get_all_study_names(storage):
            for t in optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
                rec = t.user_attrs.get("record") or {}
                if rec.get("status") == "ok" and rec.get("metric") is not None:
                    rows.append({"repeat": repeat, "trial": t.number, "design": t.user_attrs.get("preset") or rec.get("variant_description"),
                                 "paper_fraction": rec["paper_fraction"], "metric": rec["metric"], "losses": {int(k): float(v) for k, v in t.intermediate_values.items()},
                                 "latency": (rec.get("latency") or {}).get("batch1_ratio")})
    return rows


def render(table: list[dict[str, Any]], command: list[str], caps: dict[str, Any], n_trials: int) -> str:
    reps = sorted({rep for row in table for rep in row["front_recall"]})
    lines = [f"## Rung signal: dev loss at step k vs the final front ({n_trials} trials, {len(reps)} repeats)", "", header_block(command, caps), ""]
    head = ["step", "trials", "Spearman ρ(loss, −acc)", f"within {FLAT} of ln 2"] + [f"front kept by top ⌊n/3⌋, r{rep}" for rep in reps]
    body = [[row["step"], row["n"], "—" if row["spearman"] is None else f"{row['spearman']:+.2f}", row["near_ln2"],
             *(f"{row['front_recall'][rep]['kept']}/{row['front_recall'][rep]['front']} of {row['front_recall'][rep]['n']}" if rep in row["front_recall"] else "—" for rep in reps)]
            for row in table]
    md = "\n".join(lines) + markdown_table(head, body) + "\n"
    if any(row["front3_recall"] for row in table):
        head3 = ["step"] + [f"3-obj front kept, r{rep}: (loss, params) → (loss, params, latency)" for rep in reps] + ["all repeats"]
        body3 = []
        for row in table:
            f3 = row["front3_recall"]
            total = [sum(f3[rep][k] for rep in f3) for k in ("legacy", "costs", "front", "gained", "lost")]
            body3.append([row["step"], *(f"{f3[rep]['legacy']} → {f3[rep]['costs']} of {f3[rep]['front']}" if rep in f3 else "—" for rep in reps),
                          f"{total[0]} → {total[1]} of {total[2]} (+{total[3]} / −{total[4]})"])
        md += ("\nThe 3-objective front (accuracy, paper fraction, batch-1 latency) kept by a rung's top ⌊n/3⌋, ranked as older studies "
               "rank, (loss, log fraction), and as a study that trades latency ranks, (loss, log fraction, latency); "
               "(+g / −l): front designs only the second order keeps / only the first:\n\n" + markdown_table(head3, body3) + "\n")
    return md


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=0, help="repeat r: training seed r, its own database")
    ap.add_argument("--tickets", type=int, default=13, help="trials of the repeat (the first six are the named ladder)")
    ap.add_argument("--every", type=int, default=7, help="rung spacing in optimizer steps")
    ap.add_argument("--quick", action="store_true", help="smoke size: 2 trials of 3 steps (caps `quick`), a rung every step")
    ap.add_argument("--report-only", action="store_true", help="tabulate the repeats already stored; run nothing")
    ap.add_argument("--out", type=Path, default=OUT_DIR / "rung_signal", help="folder of the databases and the report")
    args = ap.parse_args(argv)
    if args.repeat < 0 or args.tickets < 1 or args.every < 1:
        ap.error(f"--repeat should be >= 0 and --tickets, --every >= 1, got {args.repeat}, {args.tickets}, {args.every}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from benchmarks import search_efficiency as se

    caps = {**se.CAPS["quick"], "mf_eval_every": 1} if args.quick else {**se.CAPS["mf"], "mf_eval_every": args.every}
    tickets = 2 if args.quick else args.tickets
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        from unipetl.search import mo_asha
        from unipetl.search.worker import run_worker

        # instrumentation: a rung at every multiple of --every, and every trial kept there
        mo_asha.keeps = lambda *_a, **_k: True
        mo_asha.Rungs.is_rung = lambda self, step: step >= self.min_steps and step % self.min_steps == 0
        storage = f"sqlite:///{(args.out / f'rung_signal_r{args.repeat}.db').resolve()}"
        study = se.make_study("mf", storage, tickets, caps, args.repeat)
        run_worker(storage, study.study_name)
    rows = rows_of(args.out)
    table = analyze(rows)
    command = [".venv/bin/python", "benchmarks/rung_signal.py", *(argv if argv is not None else sys.argv[1:])]
    write_results("rung_signal", {"caps": caps, "rows": rows, "table": table}, render(table, command, caps, len(rows)), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
