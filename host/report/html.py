"""``report.html``: one self-contained page (no external files or scripts; images inlined as data URIs).

Sections: the campaign header (models, digests, device info, delegates, runtime versions), the
summary numbers, two plots drawn as SVG (queries per seed; cumulative triggered vs queries), the
analysis (label-flip table, per-class deviation rates, the L2 distance histogram of raw vs minimized
inputs, operators, minimization and bound figures), when ``dflare explain`` has run the layer
ranking and deny-list suggestion (``explain_view``), and a gallery of deviating inputs, each with its
seed, the raw mutant and the minimized mutant side by side (each with an amplified difference image
and its distances), the two models' top-5 probabilities, the mutation trace and, when explained,
the per-layer SNR plot (seed vs input, blamed layer marked) linking to explain.html.
"""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any

import numpy as np

from host.artifacts import png_bytes
from host.files import atomic_write
from host.records import InputRecord, MinimizedRecord
from host.report import svg_charts
from host.report.explain_view import gallery_view, read_explain
from host.report.jinja_env import environment
from host.search.deviation import top1_tied
from host.search.results import SeedStatus
from host.store import CampaignStore

REPORT_NAME = "report.html"
TEMPLATE_NAME = "report.html.j2"

#: Inputs shown in the gallery; beyond that the page would grow without bound (each entry is a few
#: KB of inlined images). The rest are listed in summary.json and inputs/.
MAX_GALLERY_INPUTS = 200

#: Displayed size of the small gallery images, in CSS pixels (28x28 seeds scaled up 4x, pixelated).
IMAGE_DISPLAY_PX = 112

#: Classes shown in each probability chart (DFlare reports top-5).
TOP_K = 5

#: Bins of the queries-per-seed histogram.
HISTOGRAM_BINS = 30


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def amplified_difference(mutant: np.ndarray, seed: np.ndarray) -> tuple[np.ndarray, float]:
    """|mutant - seed| stretched so its largest value is 255; returns the image and the gain used."""
    diff = np.abs(mutant.astype(np.int16) - seed.astype(np.int16))
    peak = int(diff.max())
    gain = 255.0 / peak if peak else 1.0
    return np.clip(np.rint(diff * gain), 0, 255).astype(np.uint8), gain


def top_k(probs: np.ndarray, k: int = TOP_K) -> list[dict[str, Any]]:
    """The ``k`` most probable classes as ``{"label", "prob", "pct"}`` (pct of the bar width)."""
    probs = np.asarray(probs, np.float64)
    order = np.argsort(-probs, kind="stable")[:k]
    return [{"label": int(i), "prob": float(probs[i]), "pct": max(0.0, min(100.0, 100.0 * float(probs[i])))}
            for i in order]


def _gallery_item(record: InputRecord, minimized: MinimizedRecord | None = None,
                  explained: dict[str, Any] | None = None) -> dict[str, Any]:
    from host.report.analysis import input_distances

    item: dict[str, Any] = {
        "minimized": None,
        "distances": None,
        "record": record.to_dict(),
        "mutant": data_uri(png_bytes(record.image)),
        "seed": None,
        "diff": None,
        "gain": None,
        "l_inf": None,
        "top_original": top_k(record.probs_original),
        "top_compressed": top_k(record.probs_compressed),
        "tie": bool(top1_tied(record.probs_compressed)),
        "explain": gallery_view(explained, record.stem),
    }
    if record.seed_image is not None:
        diff, gain = amplified_difference(record.image, record.seed_image)
        item.update(seed=data_uri(png_bytes(record.seed_image)), diff=data_uri(png_bytes(diff)),
                    gain=gain, l_inf=int(np.abs(record.image.astype(np.int16) - record.seed_image).max()))
        dists = input_distances(record, minimized)
        item["distances"] = dists["raw"]
        if minimized is not None:
            min_diff, min_gain = amplified_difference(minimized.image, record.seed_image)
            item["minimized"] = {"image": data_uri(png_bytes(minimized.image)), "diff": data_uri(png_bytes(min_diff)),
                                 "gain": min_gain, "distances": dists["minimized"], "record": minimized.to_dict()}
    return item


#: Device facts shown up front in the header; the rest sit in a collapsed list.
MAIN_DEVICE_KEYS = ("runtime", "runtime_version", "agent_version", "machine", "system", "release", "hostname",
                    "cpu_count", "delegates")


def _short_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_short_value(v) for v in value) + "]"
    return str(value)


def target_rows(target: dict[str, Any]) -> dict[str, list[tuple[str, str]]]:
    """Header rows for one target: the model's facts, the main device facts, and the other device facts."""
    model = dict(target.get("model") or {})
    rows = [("model", str(model.pop("name", ""))), ("sha256", str(target.get("model_sha256") or "")),
            ("target", str(target.get("uri") or "")), ("delegate", str(target.get("delegate") or ""))]
    model.pop("sha256", None)
    model.pop("delegate", None)
    spec = model.pop("input", None)
    if isinstance(spec, dict):
        text = f"{spec.get('dtype')} {_short_value(spec.get('shape'))}"
        if spec.get("scale"):
            text += f", scale {_short_value(spec.get('scale'))}, zero point {spec.get('zero_point')}"
        rows.append(("input", text))
    pre = model.pop("preprocessing", None)
    if isinstance(pre, dict):
        rows.append(("preprocessing", f"mean {_short_value(pre.get('mean'))}, std {_short_value(pre.get('std'))}"))
    rows += [(k, _short_value(v)) for k, v in model.items()]
    device = dict(target.get("device") or {})
    main = [(k, _short_value(device.pop(k))) for k in MAIN_DEVICE_KEYS if k in device]
    more = [(k, _short_value(v)) for k, v in device.items()]
    return {"model": rows, "device": main, "device_more": more}


_COLORS = {SeedStatus.triggered: "#c0392b", SeedStatus.flaky: "#e67e22", SeedStatus.exhausted: "#7f8c8d"}


def plots(store: CampaignStore) -> dict[str, str]:
    """The two plots as SVG data URIs: ``queries_per_seed`` and ``cumulative``."""
    records = [r for r in store.outcomes() if r.status is not SeedStatus.skipped]
    out: dict[str, str] = {}
    title, xlabel, ylabel = "Queries per seed", "queries spent on the seed", "seeds"
    if records:
        top = max(r.queries for r in records)
        edges = np.linspace(0, max(top, 1), HISTOGRAM_BINS + 1)
        series = [svg_charts.Series(s.value, np.histogram([r.queries for r in records if r.status is s],
                                                          bins=edges)[0].tolist(), _COLORS[s])
                  for s in _COLORS if any(r.status is s for r in records)]
        chart = svg_charts.bar_chart(edges.tolist(), series, title, xlabel, ylabel, stacked=True)
    else:
        chart = svg_charts.empty_chart("no seeds searched yet", title, xlabel, ylabel)
    out["queries_per_seed"] = svg_charts.data_uri(chart)

    title, xlabel, ylabel = ("Triggered vs queries", "cumulative queries (seeds in order of completion)",
                             "triggering inputs")
    if records:
        queries = np.concatenate([[0], np.cumsum([r.queries for r in records])])
        hits = np.concatenate([[0], np.cumsum([r.status is SeedStatus.triggered for r in records])])
        chart = svg_charts.step_chart(queries.tolist(), hits.tolist(), title, xlabel, ylabel,
                                      _COLORS[SeedStatus.triggered])
    else:
        chart = svg_charts.empty_chart("no seeds searched yet", title, xlabel, ylabel)
    out["cumulative"] = svg_charts.data_uri(chart)
    return out


def distance_plot(hist: dict[str, Any]) -> str | None:
    """The L2 histogram of raw vs minimized triggering inputs (``analysis.histogram``) as an SVG data
    URI, or None when there is no triggering input (the report then says so instead of drawing)."""
    edges = hist.get("edges") or []
    if not edges:
        return None
    series = [svg_charts.Series("raw", hist["raw"], "#c0392b")]
    if any(hist["minimized"]):
        series.append(svg_charts.Series("minimized", hist["minimized"], "#2c7fb8"))
    return svg_charts.data_uri(svg_charts.bar_chart(edges, series, "Distance from the seed",
                                                    "L2 distance from the seed (grey levels)", "triggering inputs",
                                                    stacked=False))


def render_html(store: CampaignStore, summary: dict[str, Any]) -> str:
    """Render the report page from the store and an already computed summary."""
    from host import __version__

    env = environment()
    records = store.inputs()
    triggered = [r for r in records if r.status is SeedStatus.triggered]
    flaky = [r for r in records if r.status is SeedStatus.flaky]
    shown = (triggered + flaky)[:MAX_GALLERY_INPUTS]
    minimized = store.minimized()
    explained, _ = read_explain(summary["out"], store.model_digests())  # the summary says why when it is not used
    context = {
        "title": f"dflare-edge report: {summary['config'].get('algo', '')}",
        "generated_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "tool_version": __version__,
        "summary": summary,
        "config": summary["config"],
        "targets": {role: target_rows(t) for role, t in summary["per_target"].items()},
        "gallery": [_gallery_item(r, minimized.get((r.seed_index, r.n)), explained) for r in shown],
        "explain": summary.get("explain"),
        "analysis": summary["analysis"],
        "distance_plot": distance_plot(summary["analysis"]["l2_histogram"]),
        "hidden_inputs": len(records) - len(shown),
        "plots": plots(store),
        "image_px": IMAGE_DISPLAY_PX,
        "top_k": TOP_K,
    }
    return env.get_template(TEMPLATE_NAME).render(**context)


def write_html(store: CampaignStore, summary: dict[str, Any], out_dir: str | Path) -> Path:
    """Write ``out_dir/report.html`` atomically; return its path."""
    path = Path(out_dir) / REPORT_NAME
    atomic_write(path, render_html(store, summary))
    return path
