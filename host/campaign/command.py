"""The ``dflare run`` command line: flags (DESIGN.md §5 plus campaign controls) -> config -> runner -> output.

``host/commands/run.py`` registers the subcommand with :func:`add_arguments` and runs :func:`execute`.
Every flag defaults to ``None`` ("not given") so values from ``--config campaign.toml`` survive unless
a flag overrides them; the defaults themselves live in :class:`host.campaign.config.CampaignConfig`.

Exit codes: 0 campaign completed; 1 triggering inputs found and ``--fail-on-deviation`` given;
2 usage or input error; 3 target unreachable (the last two via ``host.cli.main``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Iterator, Sequence

from host.campaign.config import (
    DEFAULT_MAX_QUERIES,
    DEFAULT_MINIMIZE_MAX_QUERIES,
    DEFAULT_RERUNS,
    CampaignConfig,
)
from host.campaign.progress import LogProgress, RichProgress, default_progress
from host.campaign.runner import CampaignOutcome, CampaignRunner, SearchFn
from host.exit_codes import ExitCode
from host.report.summary import json_view
from host.search import ALGORITHMS

#: Flags that are not campaign settings (everything else maps 1:1 onto a CampaignConfig field).
_CONTROL_FLAGS = ("config", "force_new", "json", "progress")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add every ``dflare run`` flag to a parser."""
    p.add_argument("--config", type=Path, metavar="TOML", help="campaign file with the same settings (flags win)")
    p.add_argument("--original", type=Path, help="the original (float) .tflite model")
    p.add_argument("--compressed", type=Path, help="the compressed .tflite model under test")
    p.add_argument("--seeds", type=Path, help=".npz with x (uint8 NHWC) and optional y, or a folder of PNG/JPEG")
    p.add_argument("--target", metavar="URI", help="where the compressed model runs: local: (default), "
                   "grpc://HOST:PORT, adb://SERIAL; options as URI,delegate=D,threads=N")
    p.add_argument("--reference-target", metavar="URI", help="where the original model runs (default local:)")
    p.add_argument("--algo", choices=ALGORITHMS, help="search algorithm (default dflare)")
    p.add_argument("--max-queries", type=int, metavar="N",
                   help=f"query budget per seed (default {DEFAULT_MAX_QUERIES})")
    p.add_argument("--timeout-s", type=float, metavar="S", help="time budget per seed in seconds")
    p.add_argument("--seed", type=int, metavar="N", help="random seed of the campaign (default 0)")
    p.add_argument("--out", type=Path, metavar="DIR", help="output directory (default dflare-out); rerun to resume")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object on stdout")
    p.add_argument("--delegate", metavar="D", help="the compressed model's delegate: xnnpack (default: TFLite's own "
                   "CPU path), cpu (builtin kernels), ref, gpu, nnapi, external:/path/lib.so")
    p.add_argument("--reference-delegate", metavar="D", help="the original model's delegate (default xnnpack)")
    p.add_argument("--threads", type=int, metavar="N", help="interpreter threads for both models")
    p.add_argument("--mutation-threads", type=int, metavar="N",
                   help="host threads for a step's mutations (default: one per CPU, at most 8; only batches of "
                   "large images split; the results are the same)")
    p.add_argument("--mean", type=float, nargs="+", help="per-channel mean, overriding the model's metadata")
    p.add_argument("--std", type=float, nargs="+", help="per-channel std, overriding the model's metadata")
    p.add_argument("--scale", type=float, help="pixel scale (input = pixel * scale), overriding the metadata")
    p.add_argument("--resize", action="store_true", default=None,
                   help="resize folder images to the model's input size (else another size is an error)")
    p.add_argument("--limit", type=int, metavar="N", help="use only the first N seeds")
    p.add_argument("--reruns", type=int, metavar="N",
                   help=f"re-runs confirming each triggering input (default {DEFAULT_RERUNS})")
    p.add_argument("--token-file", type=Path, metavar="F", help="agent token for grpc:// targets (else $DFLARE_TOKEN)")
    p.add_argument("--connect-timeout-s", type=float, metavar="S",
                   help="how long to wait for an agent to answer before giving up (exit code 3)")
    p.add_argument("--force-new", action="store_true",
                   help="if --out holds a campaign with other settings, archive it and start over")
    p.add_argument("--fail-on-deviation", action="store_true", default=None,
                   help="exit with code 1 when a triggering input is found (for CI gates)")
    p.add_argument("--minimize", action=argparse.BooleanOptionalAction, default=None,
                   help="shrink each triggering input toward its seed while it still triggers (default on; the raw "
                   "and the minimized input are both stored)")
    p.add_argument("--minimize-max-queries", type=int, metavar="N",
                   help=f"minimization queries per triggering input (default {DEFAULT_MINIMIZE_MAX_QUERIES})")
    p.add_argument("--max-linf", type=int, metavar="N",
                   help="keep every searched input within N grey levels of its seed (mutants are clipped back)")
    p.add_argument("--min-ssim", type=float, metavar="X",
                   help="reject mutants whose SSIM to their seed is below X (each rejection costs 2 queries)")
    p.add_argument("--ignore-ties", action="store_true", default=None,
                   help="count a deviation only when both models' top-1 labels are unique (an int8 output often "
                   "ties two classes, and argmax then picks the lower one)")
    p.add_argument("--progress", choices=("auto", "bar", "log"), default="auto",
                   help="progress display: a bar on a terminal, log lines otherwise (auto)")


def config_from_args(args: argparse.Namespace) -> CampaignConfig:
    """Merge ``--config`` with the flags given; raises ``ConfigError`` naming a bad field."""
    names = {f.name for f in dataclasses.fields(CampaignConfig)}
    overrides = {k: v for k, v in vars(args).items() if k in names and k not in _CONTROL_FLAGS}
    return CampaignConfig.from_sources(args.config, overrides)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM like Ctrl-C, so a terminated campaign still writes its reports."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def execute(args: argparse.Namespace, search: SearchFn | None = None, argv: Sequence[str] | None = None) -> int:
    """Run the campaign the flags describe; print the summary; return the exit code."""
    config = config_from_args(args)
    progress = {"bar": RichProgress, "log": LogProgress}.get(args.progress, default_progress)()
    runner = CampaignRunner(config, force_new=args.force_new, search=search, progress=progress,
                            argv=list(argv if argv is not None else sys.argv))
    with _sigterm_as_interrupt():
        outcome = runner.run()
    print_outcome(outcome, as_json=args.json)
    if config.fail_on_deviation and outcome.triggered > 0:
        return ExitCode.deviation
    return ExitCode.ok


def print_outcome(outcome: CampaignOutcome, as_json: bool) -> None:
    s = outcome.summary
    if as_json:
        print(json.dumps(json_view(s)))
        return
    qpt = "-" if s["queries_per_trigger"] is None else f"{s['queries_per_trigger']:.0f}"
    cpt = "-" if s["candidates_per_trigger"] is None else f"{s['candidates_per_trigger']:.0f}"
    spt = "-" if s["seconds_per_trigger"] is None else f"{s['seconds_per_trigger']:.2f} s"
    resumed = f" (resumed: {outcome.resumed_from} seed(s) from earlier runs)" if outcome.resumed_from else ""
    print(f"seeds searched: {s['seeds']}{resumed}; skipped (models disagree, or not with y): {s['skipped']}")
    print(f"triggered: {s['triggered']} ({100 * s['success_rate']:.1f}%), flaky: {s['flaky']}, "
          f"exhausted: {s['exhausted']}")
    print(f"candidates per trigger: {cpt} (queries: {qpt}; a candidate is one image on both models); "
          f"seconds per trigger: {spt}; total queries: {s['total_queries']}")
    m = s.get("analysis", {}).get("minimization", {})
    if m.get("inputs") and m.get("median_l2_before"):
        print(f"minimized: {m['inputs']} input(s), median L2 from the seed {m['median_l2_before']:.0f} -> "
              f"{m['median_l2_after']:.0f} ({100 * m['median_l2_reduction']:.0f}% smaller), "
              f"{m['mean_queries']:.0f} minimization queries each (not in the figures above)")
    print(f"report: {outcome.reports.report_html}")
    print(f"summary: {outcome.reports.summary_json}  junit: {outcome.reports.junit_xml}")
