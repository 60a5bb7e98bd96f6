"""Written summaries of a report: a few sentences per (task, model) and the terminal Markdown.

The same sentences go into report.html (escaped there) and the Markdown printed by
`unipetl report`, so what the user reads in the terminal and in the browser agrees.
"""

from __future__ import annotations

from typing import Any

from unipetl.reports.frontier import DECADES, FRACTION_FLOOR, REF_FRACTION, dominance
from unipetl.reports.objectives import COSTS
from unipetl.reports.objectives import DEFAULT as DEFAULT_OBJECTIVES


def pct(fraction: float | None) -> str:
    """A paper fraction as a percentage with sensible digits ('0.47%', '0.0012%')."""
    if fraction is None:
        return "–"
    return f"{fraction * 100:.3g}%"


def num(x: float | None) -> str:
    return "–" if x is None else f"{x:.4g}"


def states_text(states: dict[str, int]) -> str:
    order = ["COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING"]
    words = {"FAIL": "failed"}
    parts = [f"{states[s]} {words.get(s, s.lower())}" for s in order if states.get(s)]
    parts += [f"{n} {s.lower()}" for s, n in states.items() if s not in order]
    return ", ".join(parts) or "none"


def hv_reference_text(section: dict[str, Any]) -> str:
    """What the section's hypervolume measures, with the reference point it was computed against
    (frontier.group_summary's `hv_reference`): over the trivial baseline HV / 6 is the best
    metric's margin over chance, averaged over log-uniform budgets; over metric 0 it is the best
    metric itself so averaged."""
    s = section["summary"]
    ref = s["hv_reference"][1]
    m = s["main_metric"]
    if not s["higher_is_better"]:
        how, what = f"the worst completed {m} ({num(ref)}), as it is lower-is-better", f"how far the best {m} stays below {num(ref)}"
    elif s.get("baseline") is not None and ref == s["baseline"]:
        how, what = f"{m} {num(ref)}, the trivial baseline", f"the best {m}'s margin over the trivial baseline"
    else:
        how, what = f"{m} {num(ref)}", f"the best {m}" + (f" above {num(ref)}" if ref else "")
    return (f"hypervolume over (log10 paper fraction ↓, {m} {'↑' if s['higher_is_better'] else '↓'}) against the "
            f"reference point (fraction {REF_FRACTION:g} = 100 %, {how}); fractions below {FRACTION_FLOOR:g} count as {FRACTION_FLOOR:g}, "
            f"so HV / {DECADES:g} is {what}, averaged over budgets spread log-uniformly from {FRACTION_FLOOR:g} to {REF_FRACTION:g}")


def sentences(section: dict[str, Any]) -> list[str]:
    """The written summary of one (task, model) section."""
    s = section["summary"]
    m = s["main_metric"]
    out = [f"{s['trials']} trials ({states_text(s['states'])}); {s['eligible']} eligible for the frontier "
           "(complete, status ok, final fidelity, within budget, not full fine-tuning), "
           f"forming {s.get('design_points', s['eligible'])} design points (a design and its extra seeds; metrics are seed means)."]
    out += provenance(s)
    below = s.get("below_baseline")
    if s.get("baseline") is not None:
        n_below = 0 if below is None else below.height
        out.append(f"Trivial baseline (majority class) {num(s['baseline'])}: {n_below} design point{'s' if n_below != 1 else ''} "
                   f"did not beat it by more than the eval set's noise ({'they are' if n_below != 1 else 'it is'} left out of the frontier and the hypervolume)"
                   + (f" ({', '.join(str(d) for d in below['description'].to_list()[:6])})" if n_below else "") + ".")
    for how, stopped in s.get("screening") or []:
        out.append(f"Multi-fidelity: {how}. {stopped} trial{'s were' if stopped != 1 else ' was'} stopped at a rung; "
                   "a stopped design is screened out, not measured, and is never on the frontier.")
    if s["budget_fraction"] is not None:
        out.append(f"Budget: {pct(s['budget_fraction'])} of the backbone (paper count).")
    front = s["frontier_rows"]
    if front.is_empty():
        out.append("No frontier yet: no eligible trial has finished.")
        return out
    if front.height == 1:
        out.append(f"The frontier has 1 point, at {pct(front['paper_fraction'][0])} of the backbone.")
    else:
        out.append(f"The frontier has {front.height} points from {pct(front['paper_fraction'].min())} "
                   f"to {pct(front['paper_fraction'].max())} of the backbone.")
    b = s["best"]
    key = ("source", "study", "trial")  # trial numbers restart in every study: the study and its source too
    like = next((f" ({r['like']})" for r in front.iter_rows(named=True) if r["like"] and all(r[k] == b[k] for k in key)), "")
    later = (f"; {num(b['metric_later'])} over its later seeds alone (its first seed is the one that put it on the front the search re-ran)"
             if b.get("metric_later") is not None else "")
    out.append(f"Best {m}: {interval(b)} at {pct(b['paper_fraction'])} with {b['description']}{like}{lr_text(b)}{later}.")
    full = s.get("full_ft_point")
    if full is not None:
        gap = (b["metric"] - full["metric"]) * (1 if s["higher_is_better"] else -1)
        verdict = dominance(b, full, s["higher_is_better"]) if gap >= 0 else dominance(full, b, s["higher_is_better"])
        out.append(f"Full fine-tuning reaches {interval(full)}{lr_text(full)}; the best PETL point is {num(abs(gap))} "
                   f"{'above' if gap >= 0 else 'below'} it (seed means; the difference is {verdict}).")
    else:
        out.append("No full fine-tuning trial in this group, so no gap to it.")
    bn = s["best_named"]
    if bn is not None:
        out.append(f"Best named method: {bn['preset']} with {interval(bn)} at {pct(bn['paper_fraction'])}{lr_text(bn)}.")
    weak = [r for r in front.iter_rows(named=True) if r.get("vs_cheaper") not in (None, "significant")]
    if weak:
        out.append(f"{len(weak)} frontier step{'s' if len(weak) != 1 else ''} not significant over the next cheaper point: "
                   + "; ".join(f"{r['description']} ({r['vs_cheaper']})" for r in weak[:4]) + ".")
    out.append(f"Hypervolume {s['hypervolume']:.4g} over {s.get('hv_over', 'the fixed reference')} (see the reference point below).")
    for f in section["findings"]:
        out.append(f"Lesson '{f['lesson']}': {f['text']}.")
    return out


def provenance(s: dict[str, Any]) -> list[str]:
    """How the section's numbers were obtained: the training set-ups, the eval set, the seeds that failed."""
    out = []
    setups = s.get("setups") or []
    if len(setups) == 1:
        out.append(f"Every design point trained on {setups[0][0]}.")
    elif setups:
        out.append("Design points trained on different set-ups, so compare them with care: "
                   + "; ".join(f"{how} ({n} point{'s' if n != 1 else ''})" for how, n in setups) + ".")
    ev = s.get("eval_examples") or []
    if ev:
        out.append(f"Every {s['main_metric']} is on {' / '.join(str(n) for n in ev)} held-out examples"
                   + (" (different eval sets in one group: their values are not comparable)" if len(ev) > 1 else "") + ".")
    if s.get("failed_seeds"):
        n = s["failed_seeds"]
        out.append(f"{n} seed{'s' if n != 1 else ''} of counted design points failed and {'are' if n != 1 else 'is'} left out of their means "
                   "(each such point says so beside its interval).")
    return out


def objectives_text(s: dict[str, Any]) -> str:
    """What the section's frontier trades, in words (reports.objectives)."""
    objectives = s.get("objectives", DEFAULT_OBJECTIVES)
    arrow = "↑" if s.get("higher_is_better", True) else "↓"
    parts = [f"{s.get('main_metric') or 'metric'} {arrow}"] + [f"{COSTS[o].label} ↓" for o in objectives[1:]]
    note = ("; latency measured with LoRA and (IA)³ folded into the weights where they fold exactly, as the median of paired ratios to the"
            " backbone with its 95 % distribution-free interval in brackets (none with fewer than 6 pairs)") if any(o.startswith("latency") for o in objectives) else ""
    return "Frontier over " + ", ".join(parts) + " (a point is on it when no other point is at least as good on every objective and better on one)" + note


def cost_cells(row: dict[str, Any], objectives: list[str]) -> list[str]:
    """The row's value of each cost objective, formatted with its unit ('–' when not measured)."""
    out = []
    for o in objectives:
        v = row.get(COSTS[o].column)
        if v is None:
            out.append("–")
        elif o == "memory":
            out.append(f"{v / 2**20:,.1f} MiB")
        elif o == "params":
            out.append(pct(v))
        else:
            lo, hi = row.get(f"{COSTS[o].column}_lo"), row.get(f"{COSTS[o].column}_hi")
            out.append(f"{v:.4g}" + (f" [{lo:.4g}, {hi:.4g}]" if lo is not None and hi is not None else ""))
    return out


def interval(row: dict[str, Any]) -> str:
    """`0.8123 ± 0.0110 (95 % CI, 3 seeds)`, or the value and "1 seed" when there is no interval;
    seeds that failed (design_points' `n_failed`) are named: `(95 % CI, 2 seeds; 1 more seed failed)`."""
    if row.get("metric") is None:
        return "none"
    failed = row.get("n_failed") or 0
    lost = f"; {failed} more seed{'s' if failed != 1 else ''} failed" if failed else ""
    if row.get("n_seeds") and row["n_seeds"] >= 2 and row.get("metric_lo") is not None:
        return f"{num(row['metric'])} ± {num((row['metric_hi'] - row['metric_lo']) / 2)} (95 % CI, {row['n_seeds']} seeds{lost})"
    return f"{num(row['metric'])} (1 seed, no interval{lost})"


def lr_text(row: dict[str, Any]) -> str:
    """`, lr lora 2e-3, head 2e-3` from the record's learning-rate plan."""
    import json

    if not row.get("lr_json"):
        return ""
    rates = json.loads(row["lr_json"]).get("rates") or {}
    return ", lr " + ", ".join(f"{k} {v:.2g}" for k, v in rates.items()) if rates else ""


def _md_escape(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(sections: list[dict[str, Any]], sources: list[str]) -> str:
    """The terminal summary: overview table, then per group the sentences and the frontier."""
    lines = ["# unipetl report", "", f"Sources: {', '.join(sources) or '–'}", "",
             "| task | model | trials | states | frontier | best metric | at fraction | hypervolume | full FT |",
             "|---|---|---|---|---|---|---|---|---|"]
    for sec in sections:
        s = sec["summary"]
        best = s["best"]
        lines.append(f"| {_md_escape(s['task'])} | {_md_escape(s['model'])} | {s['trials']} | {_md_escape(states_text(s['states']))} | "
                     f"{s['frontier']} | {num(best['metric']) if best else '–'} {_md_escape(s['main_metric'])} | "
                     f"{pct(best['paper_fraction']) if best else '–'} | {s['hypervolume']:.4g} | {num(s['full_ft'])} |")
    for sec in sections:
        s = sec["summary"]
        lines += ["", f"## {_md_escape(s['task'])} / {_md_escape(s['model'])}", ""]
        lines += [f"- {_md_escape(x)}" for x in sentences(sec)]
        front = s["frontier_rows"]
        if not front.is_empty():
            extra = [o for o in s.get("objectives", DEFAULT_OBJECTIVES)[1:] if o != "params"]
            lines += ["", _md_escape(objectives_text(s)) + ".", "",
                      "| fraction | " + "".join(f"{_md_escape(COSTS[o].label)} | " for o in extra) + _md_escape(s["main_metric"])
                      + " (seed mean ± 95 % CI) | lead over cheaper | variant | learning rates | nearest named | gap to full FT |",
                      "|---|" + "---|" * len(extra) + "---|---|---|---|---|---|"]
            for r in front.iter_rows(named=True):
                costs = "".join(f"{c} | " for c in cost_cells(r, extra))
                lines.append(f"| {pct(r['paper_fraction'])} | {costs}{_md_escape(interval(r))} | {_md_escape(r.get('vs_cheaper') or '—')} | {_md_escape(r['description'])} | "
                             f"{_md_escape(lr_text(r).lstrip(', '))} | {_md_escape(r['like'])} | {num(r['gap_to_full'])} |")
    return "\n".join(lines) + "\n"
