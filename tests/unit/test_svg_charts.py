"""The report's SVG charts: well-formed, scaled to the data, escaped."""

from __future__ import annotations

from xml.etree import ElementTree

from host.report import svg_charts
from host.report.svg_charts import Series, bar_chart, empty_chart, nice_ticks, step_chart


def _parse(svg: str) -> ElementTree.Element:
    return ElementTree.fromstring(svg)


def test_ticks_are_round_and_cover_the_range():
    assert nice_ticks(0, 49) == [0, 10, 20, 30, 40, 50]
    assert nice_ticks(0, 3674) == [0, 1000, 2000, 3000, 4000]
    assert nice_ticks(0, 0.3) == [0.0, 0.1, 0.2, 0.3]
    assert nice_ticks(5, 5) == nice_ticks(5, 6)  # an empty range still gets axes


def test_stacked_bars_reach_the_top_tick_and_labels_are_escaped():
    root = _parse(bar_chart([0, 1, 2], [Series("a<b", [1, 3], "#f00"), Series("c", [2, 1], "#00f")],
                            "T & t", "x", "y", stacked=True))
    bars = [e for e in root.iter() if e.tag.endswith("rect") and e.get("fill") in ("#f00", "#00f")
            and float(e.get("width", 0)) > 10]
    assert len(bars) == 4
    texts = "".join(e.text or "" for e in root.iter() if e.tag.endswith("text"))
    assert "a<b" in texts and "T & t" in texts  # escaped in the source, parsed back
    heights = sorted(float(b.get("height")) for b in bars)
    plot_height = svg_charts.HEIGHT - svg_charts.MARGIN[2] - svg_charts.MARGIN[3]
    assert abs(heights[-1] - 3 / 4 * plot_height) < 0.2  # 3 of a 0..4 axis (stacked top is 4)


def test_step_line_and_empty_chart_parse():
    line = _parse(step_chart([0, 10, 20], [0, 1, 2], "t", "x", "y", "#c00"))
    (polyline,) = [e for e in line.iter() if e.tag.endswith("polyline")]
    assert len(polyline.get("points").split()) == 5  # each step is a horizontal then a vertical move
    assert any("nothing" in (e.text or "") for e in _parse(empty_chart("nothing yet", "t", "x", "y")).iter())
    assert svg_charts.data_uri("<svg/>").startswith("data:image/svg+xml;base64,")
