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
  (the front designs each order keeps and the other does not are counted);
- the order inside one non-dominated front (`mo_asha.ORDERS`: hypervolume contribution, ε-net,
  crowding distance) compared on the same trials, for both fronts: the front designs in each
  order's top ⌊n/3⌋, and the sampled front designs MO-ASHA's decision at one isolated rung at k
  keeps, replayed trial by trial; with a design-level sign test against "hv".

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
        recall, recall3, by_order = {}, {}, {}
        for rep in sorted({r["repeat"] for r in have}):
            mine = [r for r in have if r["repeat"] == rep]
            numbers, keep = [r["trial"] for r in mine], max(1, len(mine) // 3)
            order = ranking([(r["losses"][step], math.log10(r["paper_fraction"])) for r in mine], (False, False), numbers)
            top = set(order[:keep])
            front = set(np.flatnonzero(pareto_mask([r["paper_fraction"] for r in mine], [r["metric"] for r in mine])).tolist())  # the report's front
            recall[rep] = {"kept": len(front & top), "front": len(front), "n": len(mine)}
            # the order inside a front (mo_asha.ORDERS) on the same trials, as trial numbers: the front designs the top
            # ⌊n/3⌋ keeps under each order, and the sampled front designs MO-ASHA's own (asynchronous) decision keeps
            pts2 = [(r["losses"][step], math.log10(r["paper_fraction"])) for r in mine]
            named = [bool(r.get("named")) for r in mine]
            by_order[rep] = order_record(pts2, numbers, named, front, keep)
            if all(r.get("latency") is not None for r in mine):
                front3 = set(np.flatnonzero(nondominated([[r["paper_fraction"] for r in mine], [r["metric"] for r in mine], [r["latency"] for r in mine]],
                                                         [False, True, False])).tolist())
                order3 = ranking([(r["losses"][step], math.log10(r["paper_fraction"]), r["latency"]) for r in mine], (False, False, False), numbers)
                top3 = set(order3[:keep])
                recall3[rep] = {"front": len(front3), "legacy": len(front3 & top), "costs": len(front3 & top3), "n": len(mine),
                                "gained": len(front3 & (top3 - top)), "lost": len(front3 & (top - top3))}  # the discordant pairs
                pts3 = [(r["losses"][step], math.log10(r["paper_fraction"]), r["latency"]) for r in mine]
                by_order[rep].update({f"{k}3": v for k, v in order_record(pts3, numbers, named, front3, keep).items()})
        out.append({"step": step, "n": len(have), "spearman": rho, "near_ln2": sum(abs(v - math.log(2)) < FLAT for v in losses), "front_recall": recall,
                    "front3_recall": recall3, "by_order": by_order})
    return out


def order_record(points: list[tuple[float, ...]], numbers: list[int], named: list[bool], front: set[int], keep: int) -> dict[str, Any]:
    """One repeat at one step, as trial numbers: the front, its sampled (not named) designs, whether the top `keep`
    ends inside a non-dominated front of the rung, and per order (mo_asha.ORDERS) the front designs in the top `keep`
    ("kept") and the sampled front designs MO-ASHA's asynchronous decision keeps ("async"). `front`: indices into `points`."""
    from unipetl.search.mo_asha import ORDERS, ranking

    sampled = {i for i in front if not named[i]}
    return {"front": sorted(numbers[i] for i in front), "sampled_front": sorted(numbers[i] for i in sampled), "cut_in_front": cut_in_front(points, keep),
            "kept": {o: sorted(numbers[i] for i in front & set(ranking(points, [False] * len(points[0]), numbers, o)[:keep])) for o in ORDERS},
            "async": {o: sorted(numbers[i] for i in sampled & async_kept(points, numbers, named, o)) for o in ORDERS}}


def cut_in_front(points: list[tuple[float, ...]], keep: int) -> bool:
    """Does the top `keep` of a rung end inside one non-dominated front (so the order within a front decides who is kept)?"""
    import moocore

    ranks = sorted(moocore.pareto_rank(points).tolist())
    return keep < len(ranks) and ranks[keep - 1] == ranks[keep]


def async_kept(points: list[tuple[float, ...]], numbers: list[int], named: list[bool], order: str, eta: int = 3) -> set[int]:
    """MO-ASHA's decision at one isolated rung (the study's only rung, as the landed `--caps mf` has), replayed
    trial by trial in number order (one worker): trial i continues when it ranks in the top max(1, ⌊m/η⌋) of
    the m trials that reached the rung before it and itself (`mo_asha.keeps`); a named method always continues
    (search.worker) but counts in the others' rank. With several rungs a later one would see only the trials
    promoted from the earlier ones; this replay does not model that."""
    from unipetl.search.mo_asha import ranking

    out, seen = set(), []
    for i in sorted(range(len(points)), key=lambda j: numbers[j]):
        seen.append(i)
        order_i = ranking([points[j] for j in seen], [False] * len(points[i]), [numbers[j] for j in seen], order)
        if named[i] or order_i.index(len(seen) - 1) < max(1, len(seen) // eta):
            out.add(i)
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
                    rows.append({"repeat": repeat, "trial": t.number, "design": t.user_attrs.get("preset") or rec.get("variant_description"), "named": bool(t.user_attrs.get("preset")),
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
    if any(row.get("by_order") for row in table):
        md += "\n" + render_orders(table) + "\n"
    return md


def order_totals(table: list[dict[str, Any]], suffix: str = "", kept_key: str = "kept") -> dict[str, Any]:
    """Summed over repeats and `table`'s steps: the designs that can be kept ("front", or for "async" the sampled front),
    those kept under each order, rungs whose top ⌊n/3⌋ ends inside a front, and per order the designs it keeps and
    "hv" does not (+) and the reverse (−); "steps" counts, per (repeat, design), the steps at which each order keeps it."""
    from unipetl.search.mo_asha import ORDERS

    pool_key = "front" if kept_key == "kept" else "sampled_front"
    tot: dict[str, Any] = {"front": 0, "cuts": 0, "rungs": 0, "steps": {}, **{o: 0 for o in ORDERS}, **{f"{o}±": [0, 0] for o in ORDERS}}
    for row in table:
        for rep, rec in row["by_order"].items():
            if pool_key + suffix not in rec:
                continue
            kept = rec[kept_key + suffix]
            tot["front"] += len(rec[pool_key + suffix])
            tot["rungs"] += 1
            tot["cuts"] += bool(rec["cut_in_front" + suffix])
            for design in rec[pool_key + suffix]:
                tot["steps"].setdefault((rep, design), dict.fromkeys(ORDERS, 0))
            for o in ORDERS:
                tot[o] += len(kept[o])
                tot[f"{o}±"][0] += len(set(kept[o]) - set(kept["hv"]))
                tot[f"{o}±"][1] += len(set(kept["hv"]) - set(kept[o]))
                for design in kept[o]:
                    tot["steps"][(rep, design)][o] += 1
    return tot


def render_orders(table: list[dict[str, Any]]) -> str:
    """The order inside a front, compared on the same trials: per step, the front designs kept under each order;
    and, with the design as the unit (a design recurs at every step, so steps are not independent), a sign test
    over the front designs that one order keeps at more steps than "hv" does, against those it keeps at fewer
    (approximate: designs of one repeat compete for the same places, so they are not quite independent either)."""
    from scipy.stats import binomtest

    from unipetl.search.mo_asha import ORDERS

    def cells(t: dict[str, Any], cuts: bool) -> list[str]:
        out = [f"{t['cuts']} of {t['rungs']}"] if cuts else []
        for o in ORDERS:
            plus, minus = t[f"{o}±"]
            out.append(f"{t[o]} of {t['front']}" + ("" if o == "hv" else f" (+{plus} / −{minus})"))
        return out

    md = []
    for suffix, kept, title in (("", "kept", "the 2-objective front (accuracy, paper fraction), ranked on (loss, log fraction): the top ⌊n/3⌋ of all n"),
                                ("3", "kept", "the 3-objective front (accuracy, paper fraction, latency), ranked on (loss, log fraction, latency): the top ⌊n/3⌋ of all n"),
                                ("", "async", "the sampled designs on the 2-objective front kept by MO-ASHA's decision at one isolated rung at "
                                              "this step, replayed trial by trial (η = 3, named methods never stopped but counted)"),
                                ("3", "async", "the sampled designs on the 3-objective front kept by MO-ASHA's decision at one isolated rung, replayed")):
        if not any("front" + suffix in rec for row in table for rec in row["by_order"].values()):
            continue
        cuts = kept == "kept"
        head = ["step", *(["top ⌊n/3⌋ ends inside a front"] if cuts else []), *(f"kept, {o}" for o in ORDERS)]
        body = [[row["step"], *cells(order_totals([row], suffix, kept), cuts)] for row in table]
        every = order_totals(table, suffix, kept)
        body.append(["all steps", *cells(every, cuts)])
        tests = []
        for o in ORDERS[1:]:
            more = sum(c[o] > c["hv"] for c in every["steps"].values())
            fewer = sum(c[o] < c["hv"] for c in every["steps"].values())
            p_value = binomtest(more, more + fewer).pvalue if more + fewer else 1.0
            tests.append(f"{o} against hv: kept at more steps {more} designs, at fewer {fewer} (of {len(every['steps'])}; sign test p ≈ {p_value:.2g})")
        md.append(f"Within-front order (mo_asha.ORDERS) — {title}; summed over repeats; (+g / −l): designs this order keeps "
                  "and hv does not / the reverse:\n\n" + markdown_table(head, body) + "\n" + "; ".join(tests) + ".\n")
    return "\n".join(md)


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
