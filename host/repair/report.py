"""The repair report: ``repair_report.json`` (everything) and ``repair_report.md`` (the before/after tables)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from host.files import atomic_write

REPORT_JSON = "repair_report.json"
REPORT_MD = "repair_report.md"

#: Model rows of the table, in order, with how the report names them.
MODEL_ROWS = (
    ("compressed", "compressed (campaign, before)"),
    ("recompressed", "original re-compressed, no fine-tuning (control)"),
    ("repaired", "repaired (fine-tuned, re-compressed)"),
)


def write_report(report: dict[str, Any], out_dir: str | Path) -> dict[str, str]:
    """Write the report as JSON and markdown into ``out_dir``; return their paths (also stored in the JSON)."""
    out_dir = Path(out_dir)
    files = {"json": str(out_dir / REPORT_JSON), "markdown": str(out_dir / REPORT_MD)}
    report = {**report, "files": files}
    atomic_write(files["markdown"], markdown(report))
    atomic_write(files["json"], json.dumps(report, indent=2, sort_keys=False, default=str) + "\n")
    return files


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def model_table(models: dict[str, Any]) -> list[str]:
    """Markdown rows: deviations from the original on held-out and repair-part triggering inputs, seed accuracy."""
    lines = ["| model | held-out triggering inputs that deviate | repair-part ones that deviate | seed accuracy |",
             "|---|---:|---:|---:|"]
    for role, title in MODEL_ROWS:
        row = models.get(role)
        if row is None:
            continue
        lines.append(f"| {title} | {row['held_out_deviations']} / {row['held_out_count']} | "
                     f"{row['repair_deviations']} / {row['repair_count']} | {_pct(row['seed_accuracy'])} |")
    if "original" in models:
        lines.append(f"| original (float, reference) | - | - | {_pct(models['original']['seed_accuracy'])} |")
    return lines


def dflare_table(dflare: dict[str, Any]) -> list[str]:
    """Markdown rows: the search's success rate, queries and candidates per trigger, before and after."""
    lines = ["| search against | seeds searched | triggered | success rate | queries per trigger (mean) "
             "| candidates per trigger (mean) | (median) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for key, title in (("before", "compressed (campaign)"), ("after", "repaired (re-run)")):
        f = dflare[key]
        lines.append(f"| {title} | {f['seeds']} | {f['triggered']} | {_pct(f['success_rate'])} | "
                     f"{_num(f['queries_per_trigger'])} | {_num(f.get('candidates_per_trigger'))} | "
                     f"{_num(f.get('median_candidates_per_trigger'))} |")
    return lines


def markdown(report: dict[str, Any]) -> str:
    """The human-readable report."""
    t = report["triggering_inputs"]
    rs = report["repair_set"]
    lines = [f"# dflare repair of {report['campaign']}", ""]
    lines.append(f"Triggering inputs: {t['total']} ({t['repair']} for repair, {t['held_out']} held out, split by "
                 f"seed). Repair set: {rs['images']} images ({rs['triggering_inputs']} triggering-input rows, "
                 f"each repair-part input {rs['trigger_copies']}x, labelled with the original model's label; "
                 f"{rs['seeds']} seeds labelled with {rs['seed_labels']}).")
    if "recipe" in report:
        r = report["recipe"]
        io = f", {r['int8_io']} input/output" if r.get("int8_io") else ""
        ft = report["fine_tuning"]
        lines.append(f"Recipe: {r['variant']}{io} ({r['source']}). Fine-tuning: {ft['epochs']} epochs, learning "
                     f"rate {ft['learning_rate']:g}, final loss {ft['loss'][-1]:.4f}.")
    lines.append("")
    if "models" in report:
        lines += ["Deviation = the model's top-1 label differs from the original model's.", ""]
        lines += model_table(report["models"]) + [""]
    if "dflare" in report:
        d = report["dflare"]
        budget = f"{d['max_queries']} queries" if d["max_queries"] else f"{d['timeout_s']} s"
        lines += [f"Search: {d['algo']}, {budget} per seed, random seed {d['rng_seed']} (re-run in {d['rerun_dir']}).",
                  ""]
        lines += dflare_table(d) + [""]
    files = rs["files"]
    lines.append(f"Repair set: `{files['npz']}`, `{files['folder']}/` (PNG + labels.csv); held-out triggering "
                 f"inputs: `{files['held_out_npz']}`.")
    return "\n".join(lines) + "\n"
