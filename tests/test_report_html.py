"""report.html's interactive frontier plot (inline SVG) and the label placement it shares with the PNG.

The SVG is parsed as XML here (so every study string must arrive escaped); the same page is
rendered in a real browser by tests/test_report_e2e.py::test_report_renders_in_headless_chromium.
"""

from __future__ import annotations

import importlib.util
import itertools
import xml.etree.ElementTree as ET
from pathlib import Path

import polars as pl
import pytest

from unipetl.reports import html as rh
from unipetl.reports import plots
from unipetl.reports.build import build_sections
from unipetl.reports.html import render
from unipetl.reports.load import frame, record_row
from unipetl.reports.plots import overlaps, place_labels

_spec = importlib.util.spec_from_file_location("report_records", Path(__file__).parent / "fixtures" / "report_records.py")
rr = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rr)  # type: ignore[union-attr]

STATE = {"ok": "COMPLETE", "failed": "FAIL", "pruned": "PRUNED"}
BUDGET = 0.005
# eleven designs between 0.40 % and 0.495 % of the backbone, each a little better than the last: what a
# budget-mode search leaves just under a 0.5 % budget line, plus one cheap point far away
CROWD = [("lora:r=8", 0.0040, 0.800), ("lora:r=9", 0.0041, 0.802), ("mam:l=4,r=8,s=4", 0.0042, 0.804), ("pa-ffn:r=8", 0.0043, 0.806),
         ("houlsby:r=4", 0.0044, 0.808), ("prefix:l=5", 0.0045, 0.810), ("pfeiffer:r=4", 0.0046, 0.812), ("lora:r=10", 0.0047, 0.814),
         ("mam:l=5,r=8,s=4", 0.0048, 0.816), ("pa-ffn:r=9", 0.0049, 0.818), ("lora:r=11", 0.00495, 0.820), ("lora:r=1", 0.0010, 0.700)]


def table(records: list[dict], budget: float | None = None) -> pl.DataFrame:
    attrs = {"budget_fraction": budget, "mode": "budget"} if budget else None
    return frame([record_row(r, study="s1", trial=i, state=STATE[r["status"]], study_attrs=attrs) for i, r in enumerate(records)])


def section_svg(df: pl.DataFrame) -> tuple[dict, ET.Element]:
    sec = build_sections(df, with_plots=False)[0]
    s = sec["summary"]
    svg = rh.frontier_svg(sec["group"], s["frontier_rows"], s["full_ft"], "t / m", s["main_metric"], s["budget_fraction"])
    return sec, ET.fromstring(svg)


def text_box(t: ET.Element) -> tuple[float, float, float, float]:
    """The box a label occupies: textLength pins its width, the line is 1.3 em tall with the baseline 1 em down."""
    x, y, w = float(t.get("x")), float(t.get("y")), float(t.get("textLength"))
    return (x, y - rh.FONT, x + w, y - rh.FONT + 1.3 * rh.FONT)


def by_class(root: ET.Element, cls: str) -> list[ET.Element]:
    return [el for el in root.iter() if cls in (el.get("class") or "").split()]


def crossings(boxes: list) -> list[tuple[int, int]]:
    return [(i, j) for (i, a), (j, b) in itertools.combinations(enumerate(boxes), 2) if overlaps(a, b)]


# --- label placement ----------------------------------------------------------------------------------
def test_place_labels_separates_labels_that_share_one_point():
    boxes = place_labels([(100.0, 100.0)] * 6, [(60.0, 14.0)] * 6, (0.0, 0.0, 400.0, 300.0))
    assert len(boxes) == 6 and crossings(boxes) == []
    assert all(0 <= b[0] and b[2] <= 400 and 0 <= b[1] and b[3] <= 300 for b in boxes)
    assert [b[2] - b[0] for b in boxes] == [60.0] * 6 and [b[3] - b[1] for b in boxes] == [14.0] * 6
    # the first label takes the nearest free spot (centred, 5 px above); the layout is the same every time
    assert boxes[0] == (70.0, 81.0, 130.0, 95.0)
    assert place_labels([(100.0, 100.0)] * 6, [(60.0, 14.0)] * 6, (0.0, 0.0, 400.0, 300.0)) == boxes


def test_place_labels_keeps_off_obstacles_and_prefers_free_ground():
    obstacle = (60.0, 60.0, 140.0, 100.0)  # e.g. the budget line's own label, right above the point
    free = place_labels([(100.0, 100.0)], [(50.0, 10.0)], (0.0, 0.0, 400.0, 300.0))
    [box] = place_labels([(100.0, 100.0)], [(50.0, 10.0)], (0.0, 0.0, 400.0, 300.0), obstacles=[obstacle])
    assert free == [(75.0, 85.0, 125.0, 95.0)] and not overlaps(box, obstacle, 2.0) and box == (75.0, 105.0, 125.0, 115.0)
    # markers above and below push the label beside the point
    [box] = place_labels([(100.0, 100.0)], [(50.0, 10.0)], (0.0, 0.0, 400.0, 300.0), avoid=[(100.0, 90.0), (100.0, 110.0)])
    assert box == (105.0, 95.0, 155.0, 105.0)


def test_place_labels_goes_outside_the_bounds_rather_than_overlap():
    boxes = place_labels([(10.0, 10.0)] * 5, [(30.0, 10.0)] * 5, (0.0, 0.0, 40.0, 24.0), reach=2)
    assert len(boxes) == 5 and crossings(boxes) == []
    with pytest.raises(ValueError, match="one entry per anchor"):
        place_labels([(0.0, 0.0)], [], (0.0, 0.0, 1.0, 1.0))


def test_step_samples_follow_the_post_step_line():
    assert plots.step_samples([(0.0, 0.0), (12.0, -12.0), (15.0, -20.0)], every=6.0) == [
        (6.0, 0.0), (12.0, 0.0), (12.0, -6.0),  # across to the corner, then up (the next point itself is a marker already)
        (15.0, -12.0), (15.0, -16.0)]
    assert plots.step_samples([(1.0, 1.0)]) == []
    # a label is kept off the line: above this point the line climbs to the next one (same fraction, better
    # metric), so the label leaves its favourite spot (centred above) for the nearest free one (centred below)
    line = plots.step_samples([(0.0, 0.0), (0.0, -60.0)])
    bounds = (-100.0, -100.0, 100.0, 100.0)
    assert place_labels([(0.0, 0.0)], [(20.0, 10.0)], bounds) == [(-10.0, -15.0, 10.0, -5.0)]
    assert place_labels([(0.0, 0.0)], [(20.0, 10.0)], bounds, avoid=line) == [(-10.0, 5.0, 10.0, 15.0)]


# --- the SVG plot ---------------------------------------------------------------------------------------
def test_crowded_front_at_the_budget_line_has_no_overlapping_labels():
    sec, root = section_svg(table([rr.record(p, f, m) for p, f, m in CROWD], budget=BUDGET))
    front = sec["summary"]["frontier_rows"]
    assert front.height == 12
    labels = by_class(root, "frontier-label")
    assert [t.text for t in labels] == [plots.short_name(r) for r in front.iter_rows(named=True)]
    assert labels[0].text == "#11 LoRA" and labels[3].text == "#2 MAM"
    boxes = [text_box(t) for t in labels]
    assert crossings(boxes) == []
    [budget_label] = by_class(root, "budget-label")
    assert budget_label.text == "budget 0.5%" and not any(overlaps(b, text_box(budget_label)) for b in boxes)
    x0, y0, x1, y1 = rh.PLOT
    assert all(x0 <= b[0] and b[2] <= x1 and y0 <= b[1] and b[3] <= y1 for b in boxes)
    # the fixture is crowded for real: at one fixed offset (what the plot did before) the labels collide
    naive = []
    for g in by_class(root, "frontier-point"):
        d = g.find("path").get("d")  # M{x},{y-6}L…: the diamond's top vertex
        x, top = (float(v) for v in d[1:].split("L")[0].split(","))
        naive.append((x + 5, top + 6 - 5 - 1.3 * rh.FONT, x + 5 + (float(g.find("text").get("textLength"))), top + 6 - 5))
    assert len(crossings(naive)) >= 10


def test_every_trial_and_frontier_point_is_an_element_with_hover_text():
    records = rr.known_set() + [rr.record("pa-ffn:r=64", 0.06, 0.995)] + rr.seeded("lora:r=2", 0.0015, [0.81, 0.83, 0.82], first_trial=11)
    sec, root = section_svg(table(records, budget=0.05))
    points = by_class(root, "trial-point")
    # every trial with a metric and a fraction except full fine-tuning (the green line): 9 + 3 seeds of trial 11
    assert len(points) == 12
    assert sorted(int(p.get("data-trial")) for p in points) == [0, 1, 2, 3, 4, 5, 7, 8, 10, 11, 12, 13]
    kinds = {int(p.get("data-trial")): p.get("class").split()[1] for p in points}
    assert (kinds[7], kinds[8], kinds[10], kinds[0]) == ("pruned", "other", "other", "eligible")
    tips = {int(p.get("data-trial")): p.find("title").text for p in points}
    assert "trial #8 (s1): complete, not eligible: partial fidelity" in tips[8]
    assert "complete, not eligible: over the 5% budget" in tips[10]
    assert tips[5].splitlines()[1:] == ["variant: " + sec["group"].filter(pl.col("trial") == 5)["description"][0], "preset: " + sec["group"].filter(pl.col("trial") == 5)["preset"][0],
                                        "accuracy: 0.9 (seed 0)", "paper params: 20,000 = 2%; trainable 20,010 = 2%",
                                        "costs: 1.5 s wall, 0.01 s/step, 1,000 train tokens/s, peak memory 1.0 MiB on cpu"]
    front = by_class(root, "frontier-point")
    assert [int(g.get("data-trial")) for g in front] == sec["summary"]["frontier_rows"]["trial"].to_list() == [0, 11, 2, 5]
    seeded = front[1].find("title").text.splitlines()
    assert seeded[0] == "frontier point #11 LoRA (s1)" and seeded[3] == "accuracy: 0.82 ± 0.02484 (95 % CI, 3 seeds)"
    assert "lead over the cheaper frontier point: untested (one seed)" in seeded
    # the interval bar spans metric_lo … metric_hi: 0.82 ± 0.0248 on a y axis of known scale
    [ci] = by_class(front[1], "ci")
    assert float(ci.get("y1")) - float(ci.get("y2")) == pytest.approx(2 * 0.024842 / (0.995 - 0.79 + 0.041) * (rh.PLOT[3] - rh.PLOT[1]), abs=0.3)
    assert all(len(by_class(g, "ci")) == 0 for g in front[:1] + front[2:])  # one seed: no bar
    assert "gap to full fine-tuning: -0.03" in front[3].find("title").text


def test_svg_escapes_study_strings_and_draws_an_empty_plot():
    recs = rr.known_set()
    for r in recs:
        r["variant_description"] = "<img src=x onerror=alert(1)>"
    df = frame([record_row(r, study='st"<b>x</b>', trial=i, state=STATE[r["status"]]) for i, r in enumerate(recs)])
    sec = build_sections(df, with_plots=False)[0]
    svg = rh.frontier_svg(sec["group"], sec["summary"]["frontier_rows"], None, "<t>", "acc<", None)
    root = ET.fromstring(svg)  # well-formed: nothing raw got through
    assert "<b>" not in svg and "<img" not in svg and "st&quot;&lt;b&gt;x&lt;/b&gt;" in svg
    assert len(by_class(root, "trial-point")) == 8 and by_class(root, "budget-label") == [] and by_class(root, "full-ft-label") == []
    # nothing plottable: a running trial and a failure whose record says NaN
    nan = rr.record("lora:r=8", 0.004, float("nan"), status="failed", error="loss became nan")
    empty = frame([record_row({}, study="s", trial=0, state="RUNNING", study_attrs={"task": "sst2", "model": "minilm"}),
                   record_row(nan, study="s", trial=1, state="FAIL")])
    sec = build_sections(empty, with_plots=False)[0]
    svg = rh.frontier_svg(sec["group"], sec["summary"]["frontier_rows"], None, "t", "accuracy", None)
    root = ET.fromstring(svg)
    assert by_class(root, "trial-point") == [] and "no finished trial yet" in "".join(root.itertext()) and "nan" not in svg


def test_page_has_one_svg_plot_and_its_png_fallback_per_section():
    df = pl.concat([table(rr.known_set()), table([rr.record(p, f, m, task="crowd") for p, f, m in CROWD], budget=BUDGET)])
    sections = [dict(s, png_frontier=b"png", png_hv=b"", png_effects=b"") for s in build_sections(df, with_plots=False)]
    page = render(sections, ["x"], "now")
    assert page.count('<svg class="plot frontier-plot"') == 2 and page.count('<details class="fallback">') == 2
    assert page.count('src="data:image/png;base64,cG5n"') == 2  # b"png", under each plot
    assert page.count('class="trial-point') == 8 + 12 and page.count('class="frontier-point"') == 3 + 12
    assert "<script" not in page


# --- the PNG fallback ----------------------------------------------------------------------------------
def test_png_frontier_labels_do_not_overlap():
    sec = build_sections(table([rr.record(p, f, m) for p, f, m in CROWD], budget=BUDGET), with_plots=False)[0]
    s = sec["summary"]
    fig = plots.frontier_figure(sec["group"], s["frontier_rows"], s["full_ft"], "t", "accuracy", BUDGET)
    try:
        renderer = fig.canvas.get_renderer()
        [ax] = fig.axes
        labels = [t for t in ax.texts if t.get_gid() == "frontier-label"]
        assert [t.get_text() for t in labels] == [plots.short_name(r) for r in s["frontier_rows"].iter_rows(named=True)]
        boxes = [tuple(t.get_window_extent(renderer).extents) for t in labels]
        assert len(boxes) == 12 and crossings(boxes) == []
    finally:
        plots.plt.close(fig)
