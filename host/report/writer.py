"""Rebuild every campaign output from the store: inputs/, summary.json, junit.xml, report.html."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from host import artifacts
from host.report.html import write_html
from host.report.junit import write_junit
from host.report.summary import write_summary
from host.store import CampaignStore


@dataclass(frozen=True)
class ReportPaths:
    """Where the outputs went, and the summary written."""

    summary_json: Path
    junit_xml: Path
    report_html: Path
    summary: dict[str, Any]


def write_reports(store: CampaignStore, out_dir: str | Path) -> ReportPaths:
    """Write any missing input artifacts, then summary.json, junit.xml and report.html (each atomically).

    Args:
        store: the campaign store (the only source read).
        out_dir: the campaign's output directory.

    Returns:
        The written paths and the summary.
    """
    artifacts.write_all(out_dir, store.inputs())
    artifacts.write_all(out_dir, list(store.minimized().values()))
    summary_path, summary = write_summary(store, out_dir)
    junit_path = write_junit(store, out_dir)
    html_path = write_html(store, summary, out_dir)
    return ReportPaths(summary_path, junit_path, html_path, summary)
