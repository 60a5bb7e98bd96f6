"""Search efficiency: the named-method grid vs random search vs the harness's default sampler.

    .venv/bin/python benchmarks/search_efficiency.py --trials 24   # CPU caps (see CAPS)
    .venv/bin/python benchmarks/search_efficiency.py --quick       # CI smoke: 3 trials each, 3 steps

Three studies with the same trial budget, task (SST-2), model (MiniLM), training caps and
budget (frontier mode, 0.5 %: variants spread over 2 %…100 % of it), each in its own Optuna
study in one SQLite file under benchmarks/out/:
(a) `grid`: only named methods (PA, scaled PA, LoRA, prefix, MH PA, MAM, Houlsby, Pfeiffer,
    BitFit, prompt) sized by the accounting to a ladder of budgets (0.5 %, 0.2 %, 0.05 %, …);
(b) `random`: optuna.RandomSampler over the unified-view space, no named methods;
(c) `default`: what `unipetl search --mode frontier` does (named methods spread over the budget range first,
    then the default sampler, TPE).
Trials run through `unipetl.search.worker.run_worker`, exactly as a search worker runs them. After every
trial the hypervolume of the completed points is computed with `unipetl.reports.frontier.hypervolume`
(log10 fraction × accuracy, reference (100 %, 0)); the table reports how many trials each study
needs to reach the grid's final hypervolume, and whether each study's frontier dominates every
named method of the grid at that method's budget (a point with fraction ≤ and accuracy ≥).
(d) `mf`: (c) with multi-fidelity, `--pruner mo-asha` (MO-ASHA rungs at `eval_every · η^k`
    optimizer steps, η = 3, each rung ranking the dev loss on 256 dev examples; TPE over the
    completed trials; named methods train to the end; only trials trained to the end enter the front), given `--mf-trials`
    tickets (default 2 × `--trials`): a pruned ticket costs a fraction of a full one. Its own
    caps `--caps mf` (4,000 sentences, one rung at 42 of 125 steps) give training room for that.
Every study trains one seed per design (`seeds: 1`); repeat r uses training seed r, and its
samplers are unseeded, so repeats are independent. Per trial the record's wall time is kept,
so each study's hypervolume is known both after every trial and at every second of its run:
  - equal trials: trials each study needs to reach the grid's final HV (over chance);
  - equal wall time: each study's HV over chance when the grid's run ended, and the seconds it
    needs to reach the grid's final HV over chance;
  - multi-fidelity: seconds (d) needs to reach (c)'s final HV over chance, as a fraction of
    (c)'s whole run (the issue's target: ≤ 0.5).
Medians over repeats (an unreached target counts as ∞). Re-running resumes the studies
(finished trials are kept). Two processes can share the work (`--studies grid random` in one,
`--studies default mf` in the other, `OMP_NUM_THREADS=1` each on a 2-core machine), and
`--report-only` then tabulates every study.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import DATA_DIR, OUT_DIR, header_block, markdown_table, write_results  # noqa: E402

logger = logging.getLogger(__name__)

TASK, MODEL, BUDGET = "sst2", "minilm", "0.5%"
GRID_PRESETS = ("pa-ffn", "scaled-pa", "lora", "prefix", "mh-pa", "mam", "houlsby", "pfeiffer")
GRID_LADDER = (1.0, 0.4, 0.1, 0.02)  # shares of the study budget, as frontier mode spreads variants over [2 %, 100 %]
CAPS = {
    # 2,000 sentences (63 steps), per-kind central lr (named methods at × 1, sampled ones search lr_scale); MF's first rung at 7 steps
    "repeats": {"max_train_examples": 2000, "epochs": 1.0, "max_length": 64, "batch_size": 32, "seed": 0, "mf_eval_every": 7},
    # 4,000 sentences (125 steps): MF's one rung at 42 steps (1/3 of training; at 14 steps the dev loss of most trials was still ln 2, RESULTS §7d)
    "mf": {"max_train_examples": 4000, "epochs": 1.0, "max_length": 64, "batch_size": 32, "seed": 0, "mf_eval_every": 42},
    "cpu": {"max_train_examples": 4000, "epochs": 1.0, "max_length": 64, "batch_size": 32, "lr": 2e-3, "seed": 0},  # reproduce_sst2's caps; one lr for every trial
    "quick": {"max_train_examples": 64, "max_steps": 3, "max_length": 32, "batch_size": 32, "max_eval_examples": 64, "lr": 1e-3, "seed": 0,
              "mf_eval_every": 1},
}
STUDIES = ("grid", "random", "default", "mf")


def grid_presets(n: int) -> list[str]:
    """The first n named methods of the grid: every preset at the budget, then at smaller shares."""
    from unipetl.search.study import model_shape
    from unipetl.spaces.search_space import parse_budget, size_preset

    shape = model_shape(MODEL)
    fraction = parse_budget(BUDGET, shape)
    out: list[str] = []
    for share in GRID_LADDER:
        for name in GRID_PRESETS:
            v = size_preset(name, shape, fraction * share)
            if v is not None and v.name not in out:
                out.append(v.name or name)
    for fixed in ("bitfit", "prompt:l=20"):  # sizeless methods go in after the ladder's top rung
        out.insert(len(GRID_PRESETS), fixed)
    return out[:n]


def make_study(kind: str, storage: str, trials: int, train: dict[str, Any], repeat: int = 0) -> Any:
    """Create (or resume) one study; (a) gets grid tickets, (b) random with no named methods.
    Repeat r > 0 is a separate study (`se-<kind>-r<r>`) with training seed + r."""
    import optuna

    from unipetl.search import study as studies

    caps = {k: v for k, v in train.items() if k != "mf_eval_every"}
    if kind == "mf":
        caps["eval_every"] = train["mf_eval_every"]
    spec = studies.StudySpec(task=TASK, model=MODEL, budget=BUDGET, mode="frontier", trials=trials, study=f"se-{kind}" + (f"-r{repeat}" if repeat else ""), storage=storage,
                             data_dir=str(DATA_DIR), pruner="mo-asha" if kind == "mf" else "none", sampler="random" if kind == "random" else "tpe",
                             seeds=1, train={**caps, "seed": caps.get("seed", 0) + repeat}, space={"presets": []} if kind in ("random", "grid") else {})
    if kind != "grid":
        return studies.create_or_check(spec)
    attrs = studies.study_attrs(spec)
    st = studies.make_storage(storage)
    if spec.study in studies.study_names(st):  # resume; a larger --trials adds the next grid rungs
        study = studies.load(storage, spec.study)
        have = len(study.get_trials(deepcopy=False))
        if trials > study.user_attrs["trials"]:
            study.set_user_attr("trials", trials)
            for p in grid_presets(trials)[have:]:
                study.enqueue_trial({}, user_attrs={"preset": p})
        return study
    study = optuna.create_study(study_name=spec.study, storage=st, directions=studies.directions(attrs), sampler=studies.make_sampler(attrs))
    for key, value in attrs.items():
        study.set_user_attr(key, value)
    for p in grid_presets(trials):
        study.enqueue_trial({}, user_attrs={"preset": p})
    return study


def chance_accuracy() -> float:
    """Majority-class accuracy on the SST-2 dev set (444 / 872): a second hypervolume reference,
    so that points at chance level (a prefix of length 1, say) add nothing."""
    import collections
    import json

    labels = collections.Counter(json.loads(line)["label"] for line in (DATA_DIR / "sst2" / "dev.jsonl").open(encoding="utf-8"))
    return max(labels.values()) / sum(labels.values())


def history(study: Any, chance: float = 0.0) -> list[dict[str, Any]]:
    """Per finished trial (in trial order): its point and the hypervolume so far (reference
    accuracy 0, and reference accuracy `chance`)."""
    from optuna.trial import TrialState

    from unipetl.reports.frontier import hypervolume

    fr: list[float] = []
    me: list[float] = []
    out = []
    done = sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)), key=lambda t: t.number)
    start = min((t.datetime_start for t in done if t.datetime_start), default=None)
    for t in done:
        rec = t.user_attrs.get("record") or {}
        ok = t.state == TrialState.COMPLETE and rec.get("status") == "ok" and rec.get("metric") is not None
        if ok:
            fr.append(rec["paper_fraction"])
            me.append(rec["metric"])
        if t.state != TrialState.FAIL:
            out.append({"trial": t.number, "preset": t.user_attrs.get("preset"), "variant": rec.get("variant_description"),
                        "paper_fraction": rec.get("paper_fraction"), "metric": rec.get("metric") if ok else None,
                        "hypervolume": hypervolume(fr, me) if fr else 0.0,
                        "hypervolume_over_chance": hypervolume(fr, me, ref_metric=chance) if fr else 0.0, "state": t.state.name,
                        "elapsed_s": (t.datetime_complete - start).total_seconds() if start and t.datetime_complete else None})
    return out


def dominates(points: list[dict[str, Any]], named: dict[str, Any]) -> bool:
    f, m = named["paper_fraction"], named["metric"]
    return any(p["metric"] is not None and p["paper_fraction"] <= f * (1 + 1e-9) and p["metric"] >= m for p in points if p is not named)


def seconds_to(h: list[dict[str, Any]], target: float | None, field: str = "hypervolume_over_chance") -> float | None:
    """Wall seconds after which a study's HV first reaches `target` (None: never)."""
    if target is None:
        return None
    return next((p["elapsed_s"] for p in h if p[field] >= target - 1e-12 and p["elapsed_s"] is not None), None)


def hv_at(h: list[dict[str, Any]], seconds: float | None, field: str = "hypervolume_over_chance") -> float | None:
    """A study's HV with the trials it had finished `seconds` into its run (one worker: trial order is time order)."""
    if seconds is None:
        return None
    return max((p[field] for p in h if p["elapsed_s"] is not None and p["elapsed_s"] <= seconds + 1e-9), default=0.0)


def summarize(histories: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    grid = histories.get("grid", [])
    target = grid[-1]["hypervolume"] if grid else None
    target_c = grid[-1]["hypervolume_over_chance"] if grid else None
    grid_wall = grid[-1]["elapsed_s"] if grid else None
    rows = []
    for kind, h in histories.items():
        reach = next((i + 1 for i, p in enumerate(h) if target is not None and p["hypervolume"] >= target - 1e-12), None)
        reach_c = next((i + 1 for i, p in enumerate(h) if target_c is not None and p["hypervolume_over_chance"] >= target_c - 1e-12), None)
        best = max((p for p in h if p["metric"] is not None), key=lambda p: p["metric"], default=None)
        rows.append({"study": kind, "trials": len(h), "complete": sum(1 for p in h if p.get("state", "COMPLETE") == "COMPLETE"),
                     "wall_s": h[-1]["elapsed_s"] if h else None, "final_hypervolume": h[-1]["hypervolume"] if h else 0.0, "trials_to_grid_hv": reach,
                     "final_hypervolume_over_chance": h[-1]["hypervolume_over_chance"] if h else 0.0, "trials_to_grid_hv_over_chance": reach_c,
                     "seconds_to_grid_hv_over_chance": seconds_to(h, target_c), "hv_over_chance_at_grid_wall": hv_at(h, grid_wall),
                     "best_metric": best["metric"] if best else None, "best_variant": (best["preset"] or best["variant"]) if best else None})
    named = [p for p in grid if p["metric"] is not None]
    dominance = {kind: {p["preset"]: dominates(h, p) for p in named} for kind, h in histories.items() if kind != "grid"}
    out: dict[str, Any] = {"rows": rows, "grid_final_hypervolume": target, "dominance": dominance}
    full, mf = histories.get("default"), histories.get("mf")
    if full and mf:  # multi-fidelity vs the full-fidelity search: seconds to its final HV over chance / its whole run
        t = seconds_to(mf, full[-1]["hypervolume_over_chance"])
        wall = full[-1]["elapsed_s"]
        out["mf"] = {"target": full[-1]["hypervolume_over_chance"], "full_wall_s": wall, "mf_seconds": t,
                     "wall_ratio": t / wall if t is not None and wall else None,
                     "mf_hv_over_chance_at_half_wall": hv_at(mf, wall / 2 if wall else None)}
    return out


def _median(vals: list[float | None]) -> float | None:
    """Median with None (unreached) as ∞; None when the median itself is unreached."""
    med = statistics.median(math.inf if v is None else v for v in vals)
    return None if math.isinf(med) else med


def summarize_repeats(groups: list[dict[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    """Each repeat against its own grid; then per study the median of every target figure (unreached = ∞)."""
    per = [summarize(g) for g in groups]
    medians: dict[str, dict[str, Any]] = {}
    for kind in groups[0]:
        for field in ("trials_to_grid_hv", "trials_to_grid_hv_over_chance", "seconds_to_grid_hv_over_chance", "hv_over_chance_at_grid_wall",
                      "final_hypervolume_over_chance", "wall_s"):
            vals = [next(r[field] for r in s["rows"] if r["study"] == kind) for s in per]
            medians.setdefault(kind, {})[field] = {"values": vals, "median": _median(vals)}
    out: dict[str, Any] = {"repeats": per, "medians": medians}
    if all("mf" in s for s in per):
        ratios = [s["mf"]["wall_ratio"] for s in per]
        out["mf_wall_ratio"] = {"values": ratios, "median": _median(ratios)}
    return out


def render(summary: dict[str, Any], histories: dict[str, list[dict[str, Any]]], command: list[str], caps: dict[str, Any], trials: int) -> str:
    head = header_block(command, {**caps, "trials per study": trials, "budget": f"{BUDGET} (frontier mode)"},
                        {"hypervolume": "unipetl.reports.frontier.hypervolume: log10 paper fraction × dev accuracy, reference (100 %, 0); HV/6 = mean best accuracy over log-uniform budgets 1e-6…1; "
                         "'over chance': the same with reference accuracy = the dev set's majority class (50.9 %)"})
    t1 = markdown_table(["study", "finished trials", "final HV", "trials to reach grid's final HV", "final HV over chance",
                         "trials to reach grid's (over chance)", "best accuracy %", "best variant"],
                        [[r["study"], r["trials"], f"{r['final_hypervolume']:.4f}", r["trials_to_grid_hv"] or "not reached",
                          f"{r['final_hypervolume_over_chance']:.4f}", r["trials_to_grid_hv_over_chance"] or "not reached",
                          f"{100 * r['best_metric']:.1f}" if r["best_metric"] is not None else "—", r["best_variant"] or "—"] for r in summary["rows"]])
    n = max((len(h) for h in histories.values()), default=0)
    t2 = markdown_table(["after trial"] + list(histories), [[i + 1] + [f"{h[i]['hypervolume']:.4f}" if i < len(h) else "" for h in histories.values()]
                                                           for i in range(n)])
    dom = summary["dominance"]
    names = sorted({k for d in dom.values() for k in d})
    t3 = markdown_table(["named method (grid)"] + [f"weakly dominated by {k} (fraction ≤, accuracy ≥)" for k in dom],
                        [[name] + ["yes" if dom[k].get(name) else "no" for k in dom] for name in names])
    return "## Search efficiency (SST-2, MiniLM)\n\n" + head + t1 + "\nHypervolume after every trial:\n\n" + t2 + "\n" + t3


def _fmt(v: float | None, spec: str) -> str:
    return "not reached" if v is None else format(v, spec)


def _fmt_s(v: float | None) -> str:
    return "not reached" if v is None else f"{v:.0f} s"


def render_repeats(over: dict[str, Any], n: int) -> str:
    """The medians over repeats: equal trials, equal wall time, and the multi-fidelity ratio."""
    med = over["medians"]

    def num(v: float, spec: str) -> str:  # a median of an even count of trial numbers can fall between two (4.5)
        return format(v, "g" if spec == "d" else spec)

    def cell(m: dict[str, Any], spec: str) -> list[str]:
        return [", ".join("—" if v is None else num(v, spec) for v in m["values"]), "not reached" if m["median"] is None else num(m["median"], spec)]

    rows = [[k, *cell(m["trials_to_grid_hv_over_chance"], "d"), *cell(m["hv_over_chance_at_grid_wall"], ".4f"),
             *cell(m["seconds_to_grid_hv_over_chance"], ".0f"), *cell(m["final_hypervolume_over_chance"], ".4f"), *cell(m["wall_s"], ".0f")]
            for k, m in med.items()]
    md = f"Over {n} repeats (values per repeat, then the median; unreached = ∞):\n\n" + markdown_table(
        ["study", "trials to the grid's final HV over chance", "median", "HV over chance when the grid's run ended", "median",
         "seconds to the grid's final HV over chance", "median", "final HV over chance", "median", "wall s", "median"], rows)
    if "mf_wall_ratio" in over:
        r = over["mf_wall_ratio"]
        md += ("\nMulti-fidelity: seconds MO-ASHA needs to reach the full-fidelity search's final HV over chance, as a fraction of that search's "
               f"wall time, per repeat: {', '.join(_fmt(v, '.2f') for v in r['values'])}; median {_fmt(r['median'], '.2f')} (target ≤ 0.5).\n")
    return md


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--quick", action="store_true", help="CI smoke: 3 trials per study, 3 training steps, 64 dev examples")
    ap.add_argument("--studies", nargs="*", default=list(STUDIES), choices=STUDIES)
    ap.add_argument("--mf-trials", type=int, default=None, help="tickets of the multi-fidelity study (default 2 × --trials; --quick: --trials)")
    ap.add_argument("--caps", choices=["repeats", "mf", "cpu"], default="repeats",
                    help="training caps (CAPS): 'mf' trains on 4,000 sentences with a rung at 42 steps; 'cpu' is the 4,000-sentence, one-lr run of RESULTS §3")
    ap.add_argument("--repeats", type=int, default=1, help="independent repeats of every study (training seed + r); medians over them")
    ap.add_argument("--first-repeat", type=int, default=0, help="run (or tabulate) repeats first-repeat … repeats−1 only: more repeats in another process or run")
    ap.add_argument("--report-only", action="store_true", help="tabulate the trials the studies already hold; run nothing")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/out)")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for noisy in ("evaluators", "spaces", "optuna"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from unipetl.search.worker import run_worker

    trials = 3 if args.quick else args.trials
    caps = CAPS["quick" if args.quick else args.caps]
    mf_trials = args.mf_trials or (trials if args.quick else 2 * trials)
    name = "search_efficiency_quick" if args.quick else "search_efficiency"
    out = args.out or OUT_DIR
    out.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{(out / f'{name}.db').resolve()}"
    chance = chance_accuracy()
    groups: list[dict[str, list[dict[str, Any]]]] = []
    from unipetl.search import study as studies

    if not 0 <= args.first_repeat < args.repeats:
        ap.error(f"--first-repeat should be in 0..{args.repeats - 1} (--repeats {args.repeats}), got {args.first_repeat}")
    for repeat in range(args.first_repeat, args.repeats):
        if args.report_only and repeat and f"se-{args.studies[0]}-r{repeat}" not in studies.study_names(studies.make_storage(storage)):
            break  # report-only never creates studies: stop at the first repeat that was not run
        group: dict[str, list[dict[str, Any]]] = {}
        for kind in args.studies:
            study = make_study(kind, storage, mf_trials if kind == "mf" else trials, caps, repeat)
            if not args.report_only:
                run_worker(storage, study.study_name, on_trial=lambda s, st, k=study.study_name: logger.info(
                    "%s: trial finished (%s), HV %.4f", k, st.name, (history(s) or [{"hypervolume": 0.0}])[-1]["hypervolume"]))
            group[kind] = history(study, chance)
        groups.append(group)
    histories = groups[0]
    summary = summarize(histories)
    command = [".venv/bin/python", "benchmarks/search_efficiency.py", *(argv if argv is not None else sys.argv[1:])]
    md = render(summary, histories, command, caps, trials)
    if "mf" in summary:
        m = summary["mf"]
        md += (f"\nMulti-fidelity (repeat 0): the full-fidelity search's final HV over chance {m['target']:.4f} after {m['full_wall_s']:.0f} s; "
               f"MO-ASHA reaches it after {_fmt_s(m['mf_seconds'])} (ratio {_fmt(m['wall_ratio'], '.2f')}; target ≤ 0.5); "
               f"its HV over chance at half the full search's wall time: {_fmt(m['mf_hv_over_chance_at_half_wall'], '.4f')}.\n")
    if len(groups) > 1:
        summary["over_repeats"] = summarize_repeats(groups)
        md += "\n" + render_repeats(summary["over_repeats"], len(groups))
    if args.report_only:
        name += "_report"
    write_results(name, {"caps": caps, "trials": trials, "repeats": len(groups), "storage": storage, "histories": histories,
                         "repeat_histories": groups[1:], **summary}, md, out)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
