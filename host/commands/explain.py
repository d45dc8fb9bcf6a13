"""``dflare explain DIR``: which layer of the compressed model makes each stored deviation.

Reads DIR/campaign.sqlite (the campaign may still be running: it only reads), runs both models in
process with every intermediate tensor kept on each triggering input (raw and minimized) and its
seed, writes DIR/explain.json and DIR/explain.html and prints a table. docs/explain.md says what it
measures and how.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from host.exit_codes import ExitCode
from host.explain.explainer import explain_directory
from host.explain.output import format_table


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "explain",
        help="name the layer of the compressed model where each deviation's error first jumps",
        description="For each stored triggering input (raw and minimized), compare every intermediate tensor of "
        "the compressed model with the original's, on the input and on its seed; write DIR/explain.json and "
        "DIR/explain.html.",
    )
    p.add_argument("dir", type=Path, metavar="DIR", help="the campaign's --out directory")
    p.add_argument("--original", type=Path, metavar="PATH", help="the original model, if it moved since the run")
    p.add_argument("--compressed", type=Path, metavar="PATH", help="the compressed model, if it moved since the run")
    p.add_argument("--json", action="store_true", help="print explain.json's content instead of the table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    path = explain_campaign(args.dir, {"original": args.original, "compressed": args.compressed},
                            echo=not args.json)
    if args.json:
        print(path.read_text(), end="")
    return ExitCode.ok


def explain_campaign(out_dir: Path, overrides: dict[str, Path | None] | None = None, echo: bool = True) -> Path:
    """Explain a campaign directory, write explain.json and explain.html, print the table when ``echo``; return
    explain.json's path.

    Raises:
        CampaignError: no campaign in the directory, or its models cannot be found.
        ModelError: a model cannot be loaded for explain.
    """
    path, doc = explain_directory(out_dir, overrides)
    if echo:
        print(format_table(doc))
        print(f"explain: {path}")
    return path
