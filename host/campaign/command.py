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
    CampaignConfig,
    setting_fields,
)
from host.campaign.progress import LogProgress, RichProgress, default_progress
from host.campaign.runner import CampaignOutcome, CampaignRunner, SearchFn
from host.exit_codes import ExitCode
from host.report.summary import json_view

#: Flags that are not campaign settings (everything else maps 1:1 onto a CampaignConfig field).
_CONTROL_FLAGS = ("config", "force_new", "json", "progress", "explain")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add every ``dflare run`` flag to a parser: the control flags, then one per campaign setting."""
    p.add_argument("--config", type=Path, metavar="TOML", help="campaign file with the same settings (flags win)")
    for f in setting_fields():
        p.add_argument("--" + f.name.replace("_", "-"), **_flag_options(f))
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object on stdout")
    p.add_argument("--force-new", action="store_true",
                   help="if --out holds a campaign with other settings, archive it and start over")
    p.add_argument("--progress", choices=("auto", "bar", "log"), default="auto",
                   help="progress display: a bar on a terminal, log lines otherwise (auto)")
    p.add_argument("--explain", action="store_true",
                   help="after the reports, explain each triggering input layer by layer, as dflare explain DIR "
                   "does (writes DIR/explain.json)")


def _flag_options(f: dataclasses.Field) -> dict[str, Any]:
    """argparse options for one setting. Every default is None ("not given"), so a flag left out never
    overrides the campaign file; the setting's own default applies when neither gives it."""
    meta = f.metadata
    options: dict[str, Any] = {"help": meta["help"], "default": None}
    if meta["metavar"]:
        options["metavar"] = meta["metavar"]
    kind = meta["kind"]
    if kind == "bool":
        options["action"] = argparse.BooleanOptionalAction if meta["toggle"] else "store_true"
    elif kind == "floats":
        options["nargs"] = "+"  # strings: the config splits "1,2,3" and names a bad value
    else:
        options["type"] = {"path": Path, "int": int, "float": float, "str": str}[kind]
    if meta["choices"]:
        options["choices"] = meta["choices"]
    return options


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
    if args.explain:
        _explain(config.out, quiet=args.json)
    if config.fail_on_deviation and outcome.triggered > 0:
        return ExitCode.deviation
    return ExitCode.ok


def _explain(out_dir: Path, quiet: bool) -> None:
    """``--explain``: the same step as ``dflare explain DIR``, once the campaign's reports are written."""
    from host.explain.explainer import explain_directory  # a feature of its own: loaded only when asked for

    path, doc = explain_directory(out_dir)
    if not quiet:  # --json keeps stdout to the summary object
        from host.explain.output import summary_line

        print(f"{summary_line(doc)}; explain: {path}")


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
