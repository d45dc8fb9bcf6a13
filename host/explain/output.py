"""explain.json and the readable table ``dflare explain`` prints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from host.files import atomic_write
from host.report.explain_view import EXPLAIN_JSON

#: Characters of a layer name in the table (the full names are in explain.json).
LAYER_WIDTH = 36


def write_explain(doc: dict[str, Any], out_dir: str | Path) -> Path:
    """Write the document as ``out_dir/explain.json`` (atomically); return its path."""
    return atomic_write(Path(out_dir) / EXPLAIN_JSON, json.dumps(doc, indent=1) + "\n")


def _short(name: str, width: int = LAYER_WIDTH) -> str:
    return name if len(name) <= width else "..." + name[-(width - 3):]


def _db(value: float | None) -> str:
    return "-" if value is None else f"{value:6.1f}"


def format_table(doc: dict[str, Any]) -> str:
    """The whole document as text: kernels and matching, one table per input, then the ranking."""
    lines = []
    for role, model in doc["models"].items():
        where = "" if model.get("measured_on", "host") == "host" else f" on the agent at {model['measured_on']}"
        lines.append(f"{role}: {Path(model['path']).name}, campaign delegate {model['campaign_delegate']} on "
                     f"{model['campaign_target']}, explained with {model['kernels']} kernels{where}")
        lines.extend(f"  note: {note}" for note in model["notes"])
        if model.get("hidden"):
            lines.append(f"  hidden by the delegate ({len(model['hidden'])}): {', '.join(model['hidden'])}")
    m = doc["matching"]
    counts = ", ".join(f"{n} by {c.replace('_', '+')}" for c, n in m["counts"].items())
    lines.append(f"tensors matched: {counts}; unmatched: {len(m['unmatched_original'])} original, "
                 f"{len(m['unmatched_compressed'])} compressed")
    if m["unsure"]:
        lines.append(f"  unsure matches: {', '.join(m['unsure'])}")
    lines.append(f"rule: {doc['rule']['text']}")
    if not doc["inputs"]:
        lines.append("no triggering input stored: nothing to explain")
    for entry in doc["inputs"]:
        lines.append("")
        lines.extend(_entry_lines(entry))
    if doc["ranking"]:
        lines.append("")
        lines.append("layers across the campaign (first jump / among the most grown / carries either):")
        for r in doc["ranking"]:
            lines.append(f"  #{r['match']:<3} {_short(r['layer']):<{LAYER_WIDTH}} {r['op']:<16} "
                         f"{r['first_jump']:>3} / {r['most_grown']:>3} / {r.get('carries', '-')}")
    lines.extend(suggestion_lines(doc.get("suggestion")))
    return "\n".join(lines)


def suggestion_lines(suggestion: dict[str, Any] | None) -> list[str]:
    """The deny-list suggestion: the layers, and the forms QuantizationDebugOptions takes."""
    if not suggestion or not suggestion["inputs"]:
        return []
    if not suggestion["denylisted_nodes"]:
        return ["", f"keep in float: nothing suggested ({suggestion['why']})"]
    lines = ["", f"keep in float ({suggestion['rule']}):"]
    lines.extend(f"  #{e['match']:<3} {e['layer']} ({e['op']}): carries {e['carries']} of {suggestion['inputs']} "
                 f"inputs (first jump on {e['first_jump']})" for e in suggestion["layers"])
    lines.append(f"  denylisted_nodes: {suggestion['denylisted_nodes']}")
    if suggestion["denylisted_ops"]:
        lines.append(f"  denylisted_ops: {suggestion['denylisted_ops']} (every op of that type in the graph)")
    lines.append(f"  {suggestion['python']}")
    lines.append(f"  try it (TensorFlow extra): {suggestion['command']}")
    return lines


def summary_line(doc: dict[str, Any]) -> str:
    """One line for ``dflare run --explain``: how many inputs, and the layer the rule blames most often."""
    inputs = doc["inputs"]
    if not inputs:
        return "explained: no triggering input stored"
    top = next((r for r in doc["ranking"] if r["first_jump"]), None)
    blamed = (f"first jump most often at {top['layer']} ({top['op']}, {top['first_jump']} of {len(inputs)})"
              if top else "no first jump by the rule")
    return f"explained {len(inputs)} input(s): {blamed}"


def _entry_lines(e: dict[str, Any]) -> list[str]:
    labels = e["labels"]
    seed = labels["seed"]
    verdict = "reproduces" if e["reproduces"] else "does NOT flip with these kernels"
    lines = [f"input {e['input']} ({e['kind']}): campaign {labels['stored']['original']} vs "
             f"{labels['stored']['compressed']}, explain {labels['explain']['original']} vs "
             f"{labels['explain']['compressed']} ({verdict})"
             + ("" if seed is None else f"; seed {seed['original']} vs {seed['compressed']}")]
    lines.append("  (SNR dB: compressed vs original on this input; seed: the same on its seed; grew: SNR dB lost "
                 "from the seed to this input)")
    lines.append(f"  {'#':<3} {'layer':<{LAYER_WIDTH}} {'op':<16} {'match':<11} {'SNR dB':>6} {'seed':>6} "
                 f"{'grew':>6} {'cosine':>8} {'RMSE':>9} {'max|err|':>9}")
    for row in e["layers"]:
        t = row["trigger"]
        s = row.get("seed")
        g = row.get("growth")
        lines.append(f"  {row['match']:<3} {_short(row['layer']):<{LAYER_WIDTH}} {row['op']:<16} "
                     f"{row['confidence']:<11} {_db(t['snr_db'])} {_db(s and s['snr_db'])} "
                     f"{_db(g and g['snr_drop_db'])} {t['cosine']:8.5f} {t['rmse']:9.3g} {t['max_abs']:9.3g}")
    jump = e["first_jump"]
    if jump:
        lines.append(f"  first jump: #{jump['match']} {jump['layer']} ({jump['op']}): {jump['snr_db']:.1f} dB, "
                     f"{jump['drop_db']:.1f} dB below the previous tensor")
    else:
        low = e["lowest_snr"]
        lines.append(f"  first jump: none by the rule; lowest SNR at #{low['match']} {low['layer']} "
                     f"({low['op']}): {low['snr_db']:.1f} dB")
    if e["most_grown"]:
        grown = ", ".join(f"#{g['match']} {_short(g['layer'], 24)} (+{g['snr_drop_db']:.1f} dB)"
                          for g in e["most_grown"])
        lines.append(f"  grew most from the seed: {grown}")
    return lines
