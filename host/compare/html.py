"""The ``dflare compare`` HTML page: a disagreement heat map, the pair table and per-column latency.

The page is self-contained (inline CSS, no scripts, no external assets) so it can be mailed or
archived by CI. ``templates/compare_heatmap.html`` is the heat map alone; the campaign report may
``{% include "compare_heatmap.html" %}`` it with a ``compare`` variable holding a compare summary
(``CompareResult.to_dict()``) and ``heat`` set to :func:`heat_colors` of it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from host import __version__
from host.files import atomic_write
from host.report.jinja_env import environment

#: Lightness (HSL %) of a cell with no disagreement; a full disagreement goes to _DARKEST_L.
_LIGHTEST_L = 97
_DARKEST_L = 45


def heat_color(rate: float | None, max_rate: float) -> str:
    """A CSS background for a disagreement rate: white at 0, deeper red toward ``max_rate``; grey if unknown."""
    if rate is None:
        return "#ddd"
    if rate <= 0 or max_rate <= 0:
        return f"hsl(120, 40%, {_LIGHTEST_L}%)"
    # Scale by the largest off-diagonal rate so small rates (1-2 %) are still visible.
    share = min(1.0, rate / max_rate)
    lightness = _LIGHTEST_L - share * (_LIGHTEST_L - _DARKEST_L)
    return f"hsl(0, 75%, {lightness:.0f}%)"


def heat_colors(summary: dict[str, Any]) -> list[list[str]]:
    """Cell colours for ``summary["matrix"]["rate"]``."""
    rates = summary["matrix"]["rate"]
    max_rate = max((r for row in rates for r in row if r is not None), default=0.0)
    return [[heat_color(r, max_rate) for r in row] for row in rates]


def render_compare_html(summary: dict[str, Any], title: str = "dflare compare") -> str:
    """Render a compare summary (``CompareResult.to_dict()`` plus optional ``model``/``out`` keys) to HTML."""
    template = environment().get_template("compare.html")
    return template.render(compare=summary, heat=heat_colors(summary), title=title, version=__version__)


def write_compare_html(summary: dict[str, Any], path: str | Path) -> Path:
    """Write the page to ``path`` and return it."""
    path = Path(path)
    atomic_write(path, render_compare_html(summary))
    return path
