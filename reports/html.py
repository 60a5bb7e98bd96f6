"""report.html: one self-contained page (inline CSS, PNGs as base64 data URIs, no scripts).

Every string that comes from a study or a record (study and task names, variant descriptions,
error messages, storage URLs) passes through `html.escape`; the page loads nothing from the
network, so it opens the same offline, in a mail attachment, or in a CI artifact viewer.
"""

from __future__ import annotations

import base64
import html
from typing import Any

import polars as pl

from unipetl.reports.summary import hv_reference_text, num, pct, sentences, states_text

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1150px;color:#222;padding:0 1rem}
h1{font-size:1.6rem}h2{font-size:1.3rem;border-bottom:1px solid #ccc;padding-bottom:.2rem;margin-top:2.5rem}h3{font-size:1.05rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.85rem}th,td{border:1px solid #ddd;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.n{text-align:right;font-variant-numeric:tabular-nums}img{max-width:100%;height:auto;display:block;margin:.5rem 0}
.muted{color:#666;font-size:.85rem}.state-FAIL{color:#b00}.state-PRUNED{color:#b60}.state-RUNNING,.state-WAITING{color:#06c}
details{margin:.5rem 0}summary{cursor:pointer}
"""


def e(x: Any) -> str:
    """Escape any value for HTML text or attribute context (None → en dash)."""
    return "–" if x is None else html.escape(str(x), quote=True)


def img(png: bytes, alt: str) -> str:
    return f'<img alt="{e(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def table(headers: list[str], rows: list[list[Any]], numeric: set[int] | None = None, row_class: list[str] | None = None) -> str:
    numeric = numeric or set()
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = []
    for i, r in enumerate(rows):
        cls = f' class="{e(row_class[i])}"' if row_class else ""
        cells = "".join(f'<td class="n">{c}</td>' if j in numeric else f"<td>{c}</td>" for j, c in enumerate(r))
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _anchor(i: int) -> str:
    return f"sec-{i}"


def overview(sections: list[dict[str, Any]]) -> str:
    rows = []
    for i, sec in enumerate(sections):
        s = sec["summary"]
        b = s["best"]
        rows.append([f'<a href="#{_anchor(i)}">{e(s["task"])}</a>', e(s["model"]), e(", ".join(s["studies"])), s["trials"],
                     e(states_text(s["states"])), s["frontier"], e(f"{num(b['metric'])} {s['main_metric']}" if b else None),
                     e(pct(b["paper_fraction"]) if b else None), e(f"{s['hypervolume']:.4g}"), e(num(s["full_ft"]))])
    return table(["task", "model", "studies", "trials", "states", "frontier points", "best", "at fraction", "hypervolume", "full FT"],
                 rows, numeric={3, 5, 8, 9})


def frontier_table(front: pl.DataFrame, metric: str) -> str:
    if front.is_empty():
        return "<p>No frontier yet.</p>"
    from unipetl.reports.summary import interval, lr_text

    rows = [[e(r["trial"]), e(r["study"]), e(pct(r["paper_fraction"])), e(f"{r['paper_params']:,}" if r["paper_params"] is not None else None),
             e(interval(r)), e(r.get("vs_cheaper") or "—"), e(r["description"]), e(lr_text(r).lstrip(", ")), e(r["like"]), e(r["preset"]),
             e(num(r["gap_to_full"]))] for r in front.iter_rows(named=True)]
    return table(["trial", "study", "paper fraction", "paper params", f"{metric} (seed mean ± 95 % CI)", "lead over the cheaper point",
                  "variant (unified view)", "learning rates", "nearest named method", "preset", "gap to full FT"],
                 rows, numeric={0, 2, 3, 10})


def effects_table(eff: pl.DataFrame) -> str:
    if eff.is_empty():
        return "<p>No finished trials to compare.</p>"
    rows = [[e(r["title"]), e(r["budget"]), e(r["choice"]), e(num(r["best_metric"])), e(r["trials"]), e(r["best_description"])]
            for r in eff.iter_rows(named=True)]
    return table(["dimension", "budget bin", "choice", "best metric", "trials", "best variant"], rows, numeric={3, 4})


def findings_table(findings: list[dict[str, Any]]) -> str:
    def pts(x: float | None) -> str | None:
        return None if x is None else f"{100 * x:+.2f}"

    rows = [[e(f["lesson"]), e(f["verdict"]), e(pts(f["effect"])), e(f"[{pts(f['lo'])}, {pts(f['hi'])}]" if f["lo"] is not None else None),
             e(f["pairs"]), e("; ".join(f"{b['budget']}: {b['winner_side']} vs {b['loser_side']}" for b in f["bins"]) or f["why"])]
            for f in findings]
    return table(["paper's lesson", "on this task", "effect (points)", "95 % CI", "paired seeds", "matched designs"], rows, numeric={2, 4})


def trials_table(group: pl.DataFrame) -> str:
    g = group.sort(["study", "trial"], nulls_last=True)
    rows = [[e(r["study"]), e(r["trial"]), e(r["state"]), e(r["status"]), e(pct(r["paper_fraction"])), e(num(r["metric"])),
             e(r["description"]), e(r["preset"]), e(r["error"])] for r in g.iter_rows(named=True)]
    classes = [f"state-{r}" for r in g["state"].to_list()]
    return table(["study", "trial", "state", "status", "paper fraction", "metric", "variant", "preset", "error"], rows,
                 numeric={1, 4, 5}, row_class=classes)


def section(i: int, sec: dict[str, Any]) -> str:
    s = sec["summary"]
    title = f"{s['task']} / {s['model']}"
    parts = [f'<h2 id="{_anchor(i)}">{e(title)}</h2>', "<ul>" + "".join(f"<li>{e(x)}</li>" for x in sentences(sec)) + "</ul>",
             f'<p class="muted">{e(hv_reference_text(sec))}.</p>',
             "<h3>Efficiency frontier</h3>", img(sec["png_frontier"], f"{title}: metric vs paper fraction"),
             frontier_table(s["frontier_rows"], s["main_metric"]),
             "<h3>What drives it (matched budgets)</h3>", findings_table(sec["findings"]),
             img(sec["png_effects"], f"{title}: per-dimension comparison"), effects_table(sec["effects"]),
             "<h3>Hypervolume vs trials</h3>", img(sec["png_hv"], f"{title}: hypervolume vs trials"),
             f"<details><summary>All {s['trials']} trials</summary>{trials_table(sec['group'])}</details>"]
    return "\n".join(parts)


def render(sections: list[dict[str, Any]], sources: list[str], generated: str) -> str:
    body = [f"<h1>unipetl report</h1><p class=\"muted\">Sources: {e(', '.join(sources))} · generated {e(generated)}</p>",
            "<h2>Overview</h2>", overview(sections) if sections else "<p>No trials found.</p>",
            '<p class="muted">Paper fraction = the paper\'s parameter count (He et al. 2022, App. B) over the backbone\'s parameters; '
            "the frontier keeps trials not dominated in (fraction ↓, metric ↑).</p>"]
    body += [section(i, sec) for i, sec in enumerate(sections)]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>unipetl report</title>"
            f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
