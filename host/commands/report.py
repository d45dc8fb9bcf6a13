"""``dflare report DIR``: rebuild inputs/, summary.json, junit.xml and report.html from DIR/campaign.sqlite.

Works on a finished or an interrupted campaign, and while a campaign is running (it only reads).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from host.exit_codes import ExitCode
from host.report.summary import json_view
from host.report.writer import write_reports
from host.store import CampaignStore


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report",
        help="rebuild a campaign's report.html, summary.json, junit.xml and inputs/ from its store",
        description="Rebuild every output of a campaign directory from its campaign.sqlite.",
    )
    p.add_argument("dir", type=Path, metavar="DIR", help="the campaign's --out directory")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with CampaignStore.open_existing(args.dir) as store:
        paths = write_reports(store, args.dir)
    if args.json:
        print(json.dumps(json_view(paths.summary)))
    else:
        s = paths.summary
        state = "complete" if s["complete"] else f"incomplete ({s['seeds_unfinished']} seed(s) not finished)"
        print(f"{s['triggered']}/{s['seeds']} seeds triggered, {s['total_queries']} queries, {state}")
        print(f"report: {paths.report_html}")
        print(f"summary: {paths.summary_json}")
        print(f"junit: {paths.junit_xml}")
    return ExitCode.ok
