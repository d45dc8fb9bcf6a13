"""``dflare explain DIR``: which layer of the compressed model makes each stored deviation.

Reads DIR/campaign.sqlite (the campaign may still be running: it only reads), runs both models in
process with every intermediate tensor kept on each triggering input (raw and minimized) and its
seed, writes DIR/explain.json and DIR/explain.html and prints a table. With ``--device``, the
compressed side runs on the campaign's agent (grpc://, adb://) instead, on the device's own kernels
and delegate (GetTensors). docs/explain.md says what it measures and how.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from host.commands.target_flags import add_target_arguments, target_options
from host.exit_codes import ExitCode
from host.explain.explainer import DeviceOptions, explain_directory
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
    p.add_argument("--device", action="store_true",
                   help="measure the compressed model on the campaign's agent (grpc://, adb://) with the device's "
                   "own kernels and delegate; in process when the campaign ran locally or the agent is unreachable")
    add_target_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    device = DeviceOptions(target_options(args)) if args.device else None
    path = explain_campaign(args.dir, {"original": args.original, "compressed": args.compressed},
                            echo=not args.json, device=device)
    if args.json:
        print(path.read_text(), end="")
    return ExitCode.ok


def explain_campaign(out_dir: Path, overrides: dict[str, Path | None] | None = None, echo: bool = True,
                     device: DeviceOptions | None = None) -> Path:
    """Explain a campaign directory, write explain.json and explain.html, print the table when ``echo``; return
    explain.json's path.

    Raises:
        CampaignError: no campaign in the directory, or its models cannot be found.
        ModelError: a model cannot be loaded for explain.
        host.errors.TargetError: with ``device``, the agent refused or failed a call.
    """
    path, doc = explain_directory(out_dir, overrides, device)
    if echo:
        print(format_table(doc))
        print(f"explain: {path}")
    return path
