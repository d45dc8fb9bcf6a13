"""What report.html and summary.json show of ``DIR/explain.json`` (written by ``dflare explain DIR``).

The report never runs explain; it reads the file when it is there. Per triggering input it shows
the per-layer SNR of the seed and of the input (raw and minimized), with the blamed layer marked,
and, for the campaign, the layer ranking and the deny-list suggestion. ``summary.json`` carries the
same numbers (:func:`summary_view`, :func:`input_view`). An explain.json made for other models than
the store's (its sha256s differ) is not shown; the summary says why.

``host.explain`` imports this module (the file name, the chart), never the other way round.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from host.report.svg_charts import Series, bar_chart, data_uri

EXPLAIN_JSON = "explain.json"
EXPLAIN_HTML = "explain.html"
#: The schemas this module reads (additions keep the name, docs/explain.md).
SCHEMAS = ("dflare-explain/1",)

#: SNR above this is drawn at this height: identical tensors sit at the 150 dB cap and would flatten the rest.
PLOT_MAX_DB = 100.0


def read_explain(out_dir: str | Path, digests: dict[str, str]) -> tuple[dict[str, Any] | None, str]:
    """The campaign's explain.json when it describes the store's models, and a note when it is not used.

    Args:
        out_dir: the campaign's directory.
        digests: the store's model sha256 per role (``CampaignStore.model_digests``).

    Returns:
        ``(doc, "")``, or ``(None, why)`` (``why`` is empty when there is no explain.json).
    """
    path = Path(out_dir) / EXPLAIN_JSON
    if not path.is_file():
        return None, ""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return None, f"{EXPLAIN_JSON} cannot be read ({exc}); run dflare explain {out_dir} again"
    if not isinstance(doc, dict) or doc.get("schema") not in SCHEMAS:
        return None, f"{EXPLAIN_JSON} has an unknown schema ({doc.get('schema') if isinstance(doc, dict) else '?'})"
    for role, model in doc.get("models", {}).items():
        if digests.get(role) and model.get("sha256") != digests[role]:
            return None, (f"{EXPLAIN_JSON} was made for another {role} model (sha256 {str(model.get('sha256'))[:12]}); "
                          f"run dflare explain {out_dir} again")
    return doc, ""


def _entry_numbers(entry: dict[str, Any]) -> dict[str, Any]:
    """One explained input, reduced to what the report shows: the blamed layer and the per-layer SNRs."""
    return {
        "input": entry["input"], "kind": entry["kind"], "reproduces": entry["reproduces"],
        "first_jump": entry["first_jump"], "lowest_snr": entry["lowest_snr"],
        "most_grown": [{"match": g["match"], "layer": g["layer"], "snr_drop_db": g["snr_drop_db"]}
                       for g in entry["most_grown"]],
        "layers": [{"match": r["match"], "layer": r["layer"], "op": r["op"], "snr_db": r["trigger"]["snr_db"],
                    "seed_snr_db": r["seed"]["snr_db"] if "seed" in r else None} for r in entry["layers"]],
    }


def input_view(doc: dict[str, Any] | None, stem: str) -> dict[str, Any] | None:
    """summary.json's ``explain`` of one triggering input: ``{"raw", "minimized"}`` (each None when not explained).

    ``stem`` is the input's file stem (``3_0``); its minimized input is ``3_0_min`` in explain.json.
    """
    if doc is None:
        return None
    entries = {e["input"]: e for e in doc.get("inputs", [])}
    views = {kind: _entry_numbers(entries[key]) if key in entries else None
             for kind, key in (("raw", stem), ("minimized", f"{stem}_min"))}
    return views if any(views.values()) else None


def summary_view(doc: dict[str, Any] | None, note: str = "") -> dict[str, Any] | None:
    """summary.json's campaign-level ``explain``: where the files are, the ranking and the suggestion."""
    if doc is None:
        return {"file": None, "note": note} if note else None
    return {"file": EXPLAIN_JSON, "html": EXPLAIN_HTML, "note": note, "rule": doc.get("rule", {}).get("text"),
            "inputs": len(doc.get("inputs", [])), "ranking": doc.get("ranking", []),
            "suggestion": doc.get("suggestion")}


def snr_chart(entry: dict[str, Any]) -> str:
    """Side-by-side bars per matched tensor: SNR on the seed and on the triggering input (capped for display),
    with the first jump's layer shaded.

    ``entry`` is an explain.json input entry, or its :func:`input_view` reduction.
    """
    layers = entry["layers"]

    def trigger_db(row: dict[str, Any]) -> float:
        return row["trigger"]["snr_db"] if "trigger" in row else row["snr_db"]

    def seed_db(row: dict[str, Any]) -> float | None:
        if "trigger" in row:
            return row["seed"]["snr_db"] if "seed" in row else None
        return row["seed_snr_db"]

    def shown(value: float) -> float:
        return min(PLOT_MAX_DB, max(0.0, value))

    series = [Series("triggering input", [shown(trigger_db(r)) for r in layers], "#d62728")]
    seeds = [seed_db(r) for r in layers]
    if all(s is not None for s in seeds):
        series.insert(0, Series("seed", [shown(s) for s in seeds], "#1f77b4"))  # type: ignore[arg-type]
    jump = entry["first_jump"]
    title = f"SNR per layer; first jump at #{jump['match']}" if jump else "SNR per layer; no first jump by the rule"
    return bar_chart(list(range(len(layers) + 1)), series, title, "matched tensor # (execution order)",
                     "SNR dB (compressed vs original)", stacked=False,
                     highlight=jump["match"] if jump else None, highlight_label="first jump")


def gallery_view(doc: dict[str, Any] | None, stem: str) -> dict[str, Any] | None:
    """report.html's explain block of one triggering input: per kind, the chart (data URI) and the numbers."""
    view = input_view(doc, stem)
    if view is None:
        return None
    return {kind: None if v is None else {**v, "chart": data_uri(snr_chart(v))} for kind, v in view.items()}
