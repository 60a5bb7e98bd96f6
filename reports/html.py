"""report.html: one self-contained page (inline CSS, inline SVG, PNGs as base64 data URIs, no scripts).

The frontier plot is inline SVG: every plotted trial and every frontier point is one element
whose <title> the browser shows on hover (variant in words, metric with its interval, paper and
trainable parameters, costs), and the frontier labels are placed by `plots.place_labels` so
that none overlap. Hover needs no script and no network; the same plot as a PNG sits under it
for viewers that do not draw SVG (or to save as an image).

Every string that comes from a study or a record (study and task names, variant descriptions,
error messages, storage URLs) passes through `html.escape`; the page loads nothing from the
network, so it opens the same offline, in a mail attachment, or in a CI artifact viewer.
"""

from __future__ import annotations

import base64
import html
import math
from typing import Any

import polars as pl

from unipetl.reports.frontier import FRACTION_FLOOR
from unipetl.reports.objectives import COSTS
from unipetl.reports.objectives import DEFAULT as DEFAULT_OBJECTIVES
from unipetl.reports.plots import Box, place_labels, short_name, step_samples, trial_layers
from unipetl.reports.summary import hv_reference_text, interval, num, objectives_text, pct, sentences, states_text

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1150px;color:#222;padding:0 1rem}
h1{font-size:1.6rem}h2{font-size:1.3rem;border-bottom:1px solid #ccc;padding-bottom:.2rem;margin-top:2.5rem}h3{font-size:1.05rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.85rem}th,td{border:1px solid #ddd;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.n{text-align:right;font-variant-numeric:tabular-nums}img{max-width:100%;height:auto;display:block;margin:.5rem 0}
.muted{color:#666;font-size:.85rem}.state-FAIL{color:#b00}.state-PRUNED{color:#b60}.state-RUNNING,.state-WAITING{color:#06c}
details{margin:.5rem 0}summary{cursor:pointer}
svg.plot{max-width:100%;height:auto;display:block;margin:.5rem 0}.plot .grid{stroke:#eee}.plot text{fill:#333}
.plot .frontier-label{fill:#555}.plot .trial-point:hover>*,.plot .frontier-point:hover>path{stroke:#000;stroke-width:2.5}
.plot .frontier-point:hover>text{fill:#000;text-decoration:underline}.legend{font-size:.8rem;color:#444;margin:.2rem 0}
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


def frontier_table(front: pl.DataFrame, metric: str, objectives: tuple[str, ...] = DEFAULT_OBJECTIVES) -> str:
    if front.is_empty():
        return "<p>No frontier yet.</p>"
    from unipetl.reports.summary import cost_cells, lr_text

    extra = [o for o in objectives[1:] if o != "params"]
    rows = [[e(r["trial"]), e(r["study"]), e(pct(r["paper_fraction"])), e(f"{r['paper_params']:,}" if r["paper_params"] is not None else None),
             *(e(c) for c in cost_cells(r, extra)),
             e(interval(r)), e(r.get("vs_cheaper") or "—"), e(r["description"]), e(lr_text(r).lstrip(", ")), e(r["like"]), e(r["preset"]),
             e(num(r["gap_to_full"]))] for r in front.iter_rows(named=True)]
    k = len(extra)
    return table(["trial", "study", "paper fraction", "paper params", *(COSTS[o].label for o in extra), f"{metric} (seed mean ± 95 % CI)",
                  "lead over the cheaper point", "variant (unified view)", "learning rates", "nearest named method", "preset", "gap to full FT"],
                 rows, numeric={0, 2, 3, *range(4, 4 + k), 10 + k})


def effects_table(eff: pl.DataFrame) -> str:
    if eff.is_empty():
        return "<p>No finished trials to compare.</p>"
    rows = [[e(r["title"]), e(r["budget"]), e(r["choice"]),
             e(interval({"metric": r["best_metric"], "metric_lo": r["best_lo"], "metric_hi": r["best_hi"], "n_seeds": r["best_seeds"]})),
             e(f"{r['designs']} ({r['seeds']})"), e(r["best_description"])]
            for r in eff.iter_rows(named=True)]
    return table(["dimension", "budget bin", "choice", "best design point (seed mean ± 95 % CI)", "design points (seeds)", "best variant"], rows,
                 numeric={3, 4})


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


# --- the interactive frontier plot: inline SVG, a <title> tooltip on every point ---------------------
SVG_W, SVG_H = 820, 440
PLOT = (70.0, 34.0, 804.0, 392.0)  # x0, y0, x1, y1 of the plotting area
FONT = 11.0
STYLE = {"eligible": "#1f77b4", "other": "#7f7f7f", "pruned": "#ff7f0e", "failed": "#d62728"}
_NARROW, _WIDE = set("il.,:;'|!()[]{} Ijft/"), set("mwMW%@")


def text_width(text: str, size: float = FONT) -> float:
    """The width the SVG gives `text` (it is drawn with textLength, so this is exact in any font)."""
    em = sum(0.32 if c in _NARROW else 0.9 if c in _WIDE else 0.68 if c.isupper() else 0.58 for c in text)
    return round(em * size, 1)


def _nice_step(span: float, n: int = 5) -> float:
    raw = span / n
    mag = 10 ** math.floor(math.log10(raw))
    return next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)


def _log_ticks(lo: float, hi: float) -> list[float]:
    """Tick positions in log10 units: every decade, with 2× and 5× when fewer than three decades show."""
    decades = list(range(math.floor(lo), math.ceil(hi) + 1))
    ticks = [d + math.log10(m) for d in decades for m in ((1, 2, 5) if hi - lo < 2.5 else (1,))]
    return [t for t in ticks if lo <= t <= hi]


def _costs(r: dict[str, Any]) -> str:
    parts = []
    if r.get("wall_seconds") is not None:
        parts.append(f"{r['wall_seconds']:.4g} s wall")
    if r.get("step_seconds") is not None:
        parts.append(f"{r['step_seconds']:.3g} s/step")
    if r.get("train_tokens_per_second") is not None:
        parts.append(f"{r['train_tokens_per_second']:,.0f} train tokens/s")
    if r.get("peak_memory_bytes") is not None:
        parts.append(f"peak memory {r['peak_memory_bytes'] / 2**20:,.1f} MiB"
                     + (f" (+{r['peak_memory_growth_bytes'] / 2**20:,.1f} in training)" if r.get("peak_memory_growth_bytes") is not None else ""))
    if r.get("latency_ms") is not None:
        text = f"inference {r['latency_ms']:.3g} ms/example at batch 1"
        if r.get("latency_batch_ms") is not None:
            text += f", {r['latency_batch_ms']:.3g} batched"
        if r.get("latency_ratio") is not None:
            lo, hi = r.get("latency_ratio_lo"), r.get("latency_ratio_hi")
            text += f" ({r['latency_ratio']:.3g}× the backbone" + (f", 95 % interval {lo:.3g}–{hi:.3g}" if lo is not None and hi is not None else "") + ")"
        parts.append(text)
    where = f" on {r['device']}" if r.get("device") else ""
    return f"costs: {', '.join(parts)}{where}" if parts else "costs: not recorded"


def _params(r: dict[str, Any]) -> str:
    out = f"paper params: {r['paper_params']:,} = {pct(r['paper_fraction'])}" if r.get("paper_params") is not None else \
        f"paper fraction: {pct(r.get('paper_fraction'))}"
    if r.get("trainable_params") is not None:
        out += f"; trainable {r['trainable_params']:,}" + (f" = {pct(r['trainable_fraction'])}" if r.get("trainable_fraction") is not None else "")
    return out


def _why(r: dict[str, Any], key: str, budget: float | None) -> str:
    if key != "other":
        return {"eligible": "eligible for the frontier", "pruned": "pruned", "failed": "failed"}[key]
    if r.get("fidelity") not in (None, "final"):
        return f"complete, not eligible: {r['fidelity']} fidelity"
    if budget is not None and r["paper_fraction"] > budget * (1 + 1e-9):
        return f"complete, not eligible: over the {pct(budget)} budget"
    return f"complete, not eligible: status {r.get('status')}"


def _trial_tip(r: dict[str, Any], key: str, metric: str, budget: float | None) -> str:
    lines = [f"trial #{r['trial']} ({r['study']}): {_why(r, key, budget)}", f"variant: {r.get('description') or 'not recorded'}",
             f"preset: {r.get('preset') or 'none'}", f"{metric}: {num(r['metric'])}" + (f" (seed {r['seed']})" if r.get("seed") is not None else ""),
             _params(r), _costs(r)]
    if r.get("error"):
        lines.append(f"error: {str(r['error'])[:300]}")
    return "\n".join(lines)


def _front_tip(r: dict[str, Any], metric: str) -> str:
    lines = [f"frontier point {short_name(r)} ({r['study']})", f"variant: {r.get('description') or 'not recorded'}",
             f"nearest named method: {r.get('like') or '–'}", f"{metric}: {interval(r)}", _params(r), _costs(r)]
    if r.get("vs_cheaper"):
        lines.append(f"lead over the cheaper frontier point: {r['vs_cheaper']}")
    if r.get("gap_to_full") is not None:
        lines.append(f"gap to full fine-tuning: {r['gap_to_full']:+.4g}")
    return "\n".join(lines)


def _marker(key: str, x: float, y: float) -> str:
    c = STYLE[key]
    if key == "eligible":
        return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4.5" fill="{c}" fill-opacity=".75"/>'
    if key == "other":
        return f'<rect x="{x - 4:.1f}" y="{y - 4:.1f}" width="8" height="8" fill="{c}" fill-opacity=".75"/>'
    if key == "pruned":
        return f'<path d="M{x - 5:.1f},{y - 4:.1f}H{x + 5:.1f}L{x:.1f},{y + 5:.1f}Z" fill="{c}" fill-opacity=".75"/>'
    return f'<path d="M{x - 4:.1f},{y - 4:.1f}L{x + 4:.1f},{y + 4:.1f}M{x - 4:.1f},{y + 4:.1f}L{x + 4:.1f},{y - 4:.1f}" stroke="{c}" stroke-width="2"/>'


def _text(x: float, y_top: float, text: str, cls: str, anchor_end: bool = False) -> str:
    """A label whose box is exactly (x, y_top) + (text_width, 1.3 em): textLength pins the width."""
    w = text_width(text)
    x0 = x - w if anchor_end else x
    return (f'<text class="{cls}" x="{x0:.1f}" y="{y_top + FONT:.1f}" textLength="{w}" lengthAdjust="spacingAndGlyphs" '
            f'font-size="{FONT:g}" paint-order="stroke" stroke="#fff" stroke-width="3" stroke-opacity=".85">{e(text)}</text>')


def frontier_svg(group: pl.DataFrame, front: pl.DataFrame, full_ft: float | None, title: str, metric: str, budget: float | None,
                 x_col: str = "paper_fraction", x_label: str = "paper parameter fraction (log scale)", staircase: bool = True) -> str:
    """Metric vs paper fraction (log x) — or vs another cost column `x_col` (linear x) — as inline
    SVG: one element per plotted trial and per frontier point, each with a <title> (variant in
    words, metric ± interval, params, costs) that the browser shows on hover; frontier labels
    placed by `place_labels` (no two overlap). `staircase` joins the frontier points (only
    meaningful when the frontier trades the metric against this one cost)."""
    log_x = x_col == "paper_fraction"
    pts, layers = trial_layers(group)
    keyed = [(key, r) for key, _, cond in layers for r in pts.filter(cond).iter_rows(named=True) if r.get(x_col) is not None]
    frows = [r for r in front.iter_rows(named=True) if r.get(x_col) is not None]

    def tx(v: float) -> float:
        return math.log10(max(v, FRACTION_FLOOR)) if log_x else float(v)

    lx = [tx(r[x_col]) for _, r in keyed] + [tx(r[x_col]) for r in frows] + ([math.log10(budget)] if budget and log_x else [])
    ys = [r["metric"] for _, r in keyed] + [v for r in frows for v in (r["metric"], r.get("metric_lo"), r.get("metric_hi")) if v is not None]
    ys += [full_ft] if full_ft is not None else []
    xlo, xhi = (min(lx), max(lx)) if lx else (-4.0, 0.0)
    pad = (xhi - xlo) * 0.08 or 0.5
    xlo, xhi = xlo - pad, xhi + pad
    ylo, yhi = (min(ys), max(ys)) if ys else (0.0, 1.0)
    pad = (yhi - ylo) * 0.1 or abs(yhi) * 0.05 or 0.05
    ylo, yhi = ylo - pad, yhi + pad
    x0, y0, x1, y1 = PLOT

    def px(f: float) -> float:
        return x0 + (tx(f) - xlo) / (xhi - xlo) * (x1 - x0)

    def py(m: float) -> float:
        return y1 - (m - ylo) / (yhi - ylo) * (y1 - y0)

    out = [f'<svg class="plot frontier-plot" viewBox="0 0 {SVG_W} {SVG_H}" width="{SVG_W}" height="{SVG_H}" '
           f'font-family="sans-serif" data-x="{e(x_col)}"><title>{e(title)}: {e(metric)} vs {e(x_label)}</title>',
           f'<rect x="{x0}" y="{y0}" width="{x1 - x0}" height="{y1 - y0}" fill="none" stroke="#bbb"/>',
           f'<text x="{(x0 + x1) / 2}" y="20" text-anchor="middle" font-size="13">{e(title)}</text>',
           f'<text x="{(x0 + x1) / 2}" y="{SVG_H - 8}" text-anchor="middle" font-size="{FONT:g}">{e(x_label)}</text>',
           f'<text transform="translate(16 {(y0 + y1) / 2}) rotate(-90)" text-anchor="middle" font-size="{FONT:g}">{e(metric)}</text>']
    xstep = _nice_step(xhi - xlo)
    xticks = _log_ticks(xlo, xhi) if log_x else [k * xstep for k in range(math.ceil(xlo / xstep), math.floor(xhi / xstep) + 1)]
    for t in xticks:
        x = x0 + (t - xlo) / (xhi - xlo) * (x1 - x0)
        out.append(f'<line class="grid" x1="{x:.1f}" y1="{y0}" x2="{x:.1f}" y2="{y1}"/>'
                   f'<text x="{x:.1f}" y="{y1 + 15}" text-anchor="middle" font-size="10">{e(pct(10**t) if log_x else f"{t:.4g}")}</text>')
    step = _nice_step(yhi - ylo)
    for k in range(math.ceil(ylo / step), math.floor(yhi / step) + 1):
        y = py(k * step)
        out.append(f'<line class="grid" x1="{x0}" y1="{y:.1f}" x2="{x1}" y2="{y:.1f}"/>'
                   f'<text x="{x0 - 5}" y="{y + 3.5:.1f}" text-anchor="end" font-size="10">{k * step:.4g}</text>')
    obstacles: list[Box] = []
    h = round(FONT * 1.3, 1)
    if budget and log_x:
        bx, text = px(budget), f"budget {pct(budget)}"
        w, right = text_width(text), px(budget) + 3 + text_width(text) <= x1
        obstacles.append((bx + 3, y0 + 2, bx + 3 + w, y0 + 2 + h) if right else (bx - 3 - w, y0 + 2, bx - 3, y0 + 2 + h))
        out.append(f'<line class="budget" x1="{bx:.1f}" y1="{y0}" x2="{bx:.1f}" y2="{y1}" stroke="{STYLE["failed"]}" stroke-dasharray="2 3"/>'
                   + _text(bx + 3 if right else bx - 3, y0 + 2, text, "budget-label", anchor_end=not right))
    if full_ft is not None:
        fy, text = py(full_ft), f"full fine-tuning {num(full_ft)}"
        w = text_width(text)
        top = fy - 2 - h if fy - 2 - h >= y0 else fy + 2
        obstacles.append((x0 + 3, top, x0 + 3 + w, top + h))  # at the left end, away from the budget line
        out.append(f'<line class="full-ft" x1="{x0}" y1="{fy:.1f}" x2="{x1}" y2="{fy:.1f}" stroke="#2ca02c" stroke-dasharray="6 3"/>'
                   + _text(x0 + 3, top, text, "full-ft-label"))
    for key, r in keyed:
        out.append(f'<g class="trial-point {key}" data-trial="{e(r["trial"])}"><title>{e(_trial_tip(r, key, metric, budget))}</title>'
                   f'{_marker(key, px(r[x_col]), py(r["metric"]))}</g>')
    if frows:
        frows.sort(key=lambda r: r[x_col])
        xy = [(px(r[x_col]), py(r["metric"])) for r in frows]
        if staircase:
            path = f"M{xy[0][0]:.1f},{xy[0][1]:.1f}" + "".join(f"H{x:.1f}V{y:.1f}" for x, y in xy[1:])
            out.append(f'<path class="frontier-line" d="{path}" fill="none" stroke="#000" stroke-width="1.5"/>')
        names = [short_name(r) for r in frows]
        avoid = [(px(r[x_col]), py(r["metric"])) for _, r in keyed] + xy + (step_samples(xy) if staircase else [])
        boxes = place_labels(xy, [(text_width(n) + 2, h) for n in names], PLOT, obstacles=obstacles, avoid=avoid, radius=7.0)
        for r, (x, y), name, box in zip(frows, xy, names, boxes, strict=True):
            tip = e(_front_tip(r, metric))
            ci = (f'<line class="ci" x1="{x:.1f}" y1="{py(r["metric_lo"]):.1f}" x2="{x:.1f}" y2="{py(r["metric_hi"]):.1f}" stroke="#000"/>'
                  if r.get("metric_lo") is not None and r.get("metric_hi") is not None else "")
            near = (min(max(x, box[0]), box[2]), min(max(y, box[1]), box[3]))
            leader = (f'<line class="leader" x1="{x:.1f}" y1="{y:.1f}" x2="{near[0]:.1f}" y2="{near[1]:.1f}" stroke="#aaa"/>'
                      if math.hypot(near[0] - x, near[1] - y) > 8 else "")
            out.append(f'<g class="frontier-point" data-trial="{e(r["trial"])}"><title>{tip}</title>{ci}{leader}'
                       f'<path d="M{x:.1f},{y - 6:.1f}L{x + 6:.1f},{y:.1f}L{x:.1f},{y + 6:.1f}L{x - 6:.1f},{y:.1f}Z" fill="#fff" fill-opacity=".2" stroke="#000" stroke-width="1.3"/>'
                       f'{_text(box[0] + 1, box[1], name, "frontier-label")}</g>')
    if not keyed and not frows:
        out.append(f'<text x="{(x0 + x1) / 2}" y="{(y0 + y1) / 2}" text-anchor="middle" font-size="13">no finished trial yet</text>')
    out.append("</svg>")
    return "".join(out)


def legend(group: pl.DataFrame) -> str:
    pts, layers = trial_layers(group)
    glyph = {"eligible": "●", "other": "■", "pruned": "▼", "failed": "✕"}
    items = [f'<span style="color:{STYLE[key]}">{glyph[key]}</span> {e(label)} ({pts.filter(cond).height})' for key, label, cond in layers]
    return ('<p class="legend">Plotted trials (those with a metric): ' + " · ".join(items) + " · ◇ frontier (seed mean, 95 % CI bar) · <span style=\"color:#2ca02c\">- -</span> full "
            'fine-tuning · <span style="color:#d62728">┆</span> budget. Hover a point for its variant, metric, parameters and costs.</p>')


def section(i: int, sec: dict[str, Any]) -> str:
    s = sec["summary"]
    title = f"{s['task']} / {s['model']}"
    parts = [f'<h2 id="{_anchor(i)}">{e(title)}</h2>', "<ul>" + "".join(f"<li>{e(x)}</li>" for x in sentences(sec)) + "</ul>",
             f'<p class="muted">{e(hv_reference_text(sec))}.</p>',
             "<h3>Efficiency frontier</h3>", f'<p class="muted">{e(objectives_text(s))}</p>',
             frontier_svg(sec["group"], s["frontier_rows"], s["full_ft"], title, s["main_metric"], s["budget_fraction"],
                          staircase=tuple(s.get("objectives", DEFAULT_OBJECTIVES)) == DEFAULT_OBJECTIVES),
             *(frontier_svg(sec["group"], s["frontier_rows"], s["full_ft"], title, s["main_metric"], None, x_col=COSTS[o].column,
                            x_label=COSTS[o].label, staircase=False) for o in s.get("objectives", DEFAULT_OBJECTIVES)[1:] if o != "params"),
             legend(sec["group"]),
             f'<details class="fallback"><summary>The same plot as a static image (PNG)</summary>'
             f'{img(sec["png_frontier"], f"{title}: metric vs paper fraction")}</details>',
             frontier_table(s["frontier_rows"], s["main_metric"], s.get("objectives", DEFAULT_OBJECTIVES)),
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
