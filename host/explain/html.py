"""DIR/explain.html: per input, the per-layer SNR of seed and triggering input with the blamed layer marked.

A page of its own next to report.html, which links here from each input it explains. It uses the
reports' jinja2 environment (autoescaped, strict) and the report's chart of one input
(``host.report.explain_view.snr_chart``); the template lives here as a string because package data
ships only the report's template folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from host.files import atomic_write
from host.report.explain_view import EXPLAIN_HTML, snr_chart
from host.report.jinja_env import environment
from host.report.svg_charts import data_uri

_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>dflare explain: {{ doc.campaign }}</title>
<style>
body { font-family: sans-serif; margin: 1.5em; } table { border-collapse: collapse; margin: .5em 0; }
td, th { border: 1px solid #ccc; padding: 2px 6px; font-size: 13px; text-align: right; }
td.name, th.name { text-align: left; } tr.jump { background: #fde2e1; font-weight: bold; }
.note { color: #8a5a00; } section { margin-bottom: 2em; } img.input { image-rendering: pixelated; width: 112px; }
</style></head><body>
<h1>Which layer makes each deviation</h1>
<p><a href="report.html">campaign report</a> &middot; rule: {{ doc.rule.text }} (docs/explain.md)</p>
<ul>{% for role, m in doc.models.items() %}
<li>{{ role }}: {{ m.path }} &mdash; campaign delegate {{ m.campaign_delegate }} on {{ m.campaign_target }},
explained with <b>{{ m.kernels }}</b> kernels
{% for n in m.notes %}<br><span class="note">{{ n }}</span>{% endfor %}</li>
{% endfor %}</ul>
<p>Tensors matched: {% for c, n in doc.matching.counts.items() %}{{ n }} by {{ c }}
{%- if not loop.last %}, {% endif %}{% endfor %}
{% if doc.matching.unsure %}; <span class="note">unsure: {{ doc.matching.unsure | join(", ") }}</span>{% endif %}</p>
{% if doc.ranking %}<h2>Layers across the campaign</h2>
<table><tr><th>#</th><th class="name">layer</th><th class="name">op</th><th>first jump</th>
<th>among most grown</th><th>carries</th></tr>
{% for r in doc.ranking %}<tr><td>{{ r.match }}</td><td class="name">{{ r.layer }}</td><td class="name">{{ r.op }}</td>
<td>{{ r.first_jump }}</td><td>{{ r.most_grown }}</td><td>{{ r.carries }}</td></tr>{% endfor %}</table>{% endif %}
{% for e in entries %}<section id="explain-{{ e.input }}"><h2>{{ e.input }} ({{ e.kind }})</h2>
<p><img class="input" src="{{ e.png }}" alt="{{ e.input }}"> campaign {{ e.labels.stored.original }} vs
{{ e.labels.stored.compressed }}, explain {{ e.labels.explain.original }} vs {{ e.labels.explain.compressed }}
{% if not e.reproduces %}<span class="note">(does not flip with these kernels)</span>{% endif %};
first jump: {% if e.first_jump %}<b>#{{ e.first_jump.match }} {{ e.first_jump.layer }}</b> ({{ e.first_jump.op }},
{{ "%.1f" | format(e.first_jump.snr_db) }} dB){% else %}none by the rule{% endif %}</p>
<img src="{{ e.chart }}" alt="SNR per layer">
<table><tr><th>#</th><th class="name">layer</th><th class="name">op</th><th class="name">match</th><th>SNR dB</th>
<th>seed SNR dB</th><th>grew dB</th><th>cosine</th><th>RMSE</th><th>max |err|</th></tr>
{% for row in e.layers %}<tr{% if e.first_jump and e.first_jump.match == row.match %} class="jump"{% endif %}>
<td>{{ row.match }}</td><td class="name">{{ row.layer }}</td><td class="name">{{ row.op }}</td>
<td class="name">{{ row.confidence }}</td><td>{{ "%.1f" | format(row.trigger.snr_db) }}</td>
<td>{% if row.seed %}{{ "%.1f" | format(row.seed.snr_db) }}{% endif %}</td>
<td>{% if row.growth %}{{ "%.1f" | format(row.growth.snr_drop_db) }}{% endif %}</td>
<td>{{ "%.5f" | format(row.trigger.cosine) }}</td><td>{{ "%.3g" | format(row.trigger.rmse) }}</td>
<td>{{ "%.3g" | format(row.trigger.max_abs) }}</td></tr>{% endfor %}</table></section>
{% endfor %}</body></html>
"""


def write_explain_html(doc: dict[str, Any], out_dir: str | Path) -> Path:
    """Render the document as ``out_dir/explain.html`` (atomically); return its path."""
    entries = [{**e, "chart": data_uri(snr_chart(e))} for e in doc["inputs"]]
    html = environment().from_string(_TEMPLATE).render(doc=doc, entries=entries)
    return atomic_write(Path(out_dir) / EXPLAIN_HTML, html)
