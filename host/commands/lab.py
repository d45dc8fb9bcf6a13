"""``dflare lab``: nightly runs over a lab of devices, and their trends and regressions.

    dflare lab run LAB.toml [--baseline RUN] [--resume RUN] [--json]
    dflare lab report [LAB.toml] [--history URL] [--run RUN] [--baseline RUN] [--junit FILE] [--json]
    dflare lab golden LAB.toml [--target URI]
    dflare lab worker --scheduler tcp://HOST:8786 --device NAME[=URI][,token_file=PATH] ... [--name N]

``run`` and ``report`` exit 1 when the run regressed against its baseline (by default the previous
finished run of the same lab), so a CI system or cron wrapper can alert.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from host.errors import ConfigError
from host.exit_codes import ExitCode
from host.files import atomic_write
from host.lab.config import DEFAULT_LATENCY_MIN_DELTA_MS, DEFAULT_LATENCY_RATIO, LabConfig, load_lab_config

#: Runs shown by ``lab report`` unless --last says otherwise.
DEFAULT_TREND_RUNS = 10


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("lab", help="nightly runs over a lab of devices; trends and regressions",
                              description="Lab mode: run every device x model x delegate of a lab file, keep the "
                              "history, report trends and regressions.")
    sub = p.add_subparsers(dest="lab_command", metavar="LAB_COMMAND")
    run = sub.add_parser("run", help="run every combination of a lab file once")
    run.add_argument("config", type=Path, help="the lab file (lab.toml)")
    run.add_argument("--baseline", help="compare with this run id instead of the previous run")
    run.add_argument("--resume", metavar="RUN", help="continue this run: its passed combinations are not redone")
    run.add_argument("--json", action="store_true", help="print the run summary as JSON")
    run.set_defaults(func=cmd_run)

    report = sub.add_parser("report", help="trends over runs and regressions against a baseline")
    report.add_argument("config", type=Path, nargs="?", help="the lab file (for its history and thresholds)")
    report.add_argument("--history", help="history path or database URL (default: the lab file's)")
    report.add_argument("--lab", help="lab name (default: the lab file's, else the latest run's)")
    report.add_argument("--run", help="the run to check (default: the latest)")
    report.add_argument("--baseline", help="the run to compare with (default: the one before --run)")
    report.add_argument("--last", type=int, default=DEFAULT_TREND_RUNS, help="runs in the trend table")
    report.add_argument("--latency-ratio", type=float,
                        help=f"latency regression ratio (default: the lab file's, else {DEFAULT_LATENCY_RATIO})")
    report.add_argument("--junit", type=Path, help="write JUnit XML (one test case per combination) here")
    report.add_argument("--json", action="store_true", help="print trends and regressions as JSON")
    report.set_defaults(func=cmd_report)

    golden = sub.add_parser("golden", help="record the health check's golden outputs on a trusted target")
    golden.add_argument("config", type=Path, help="the lab file; its [health] table names model and inputs")
    golden.add_argument("--target", default="local:", help="where to record them (default: local:)")
    golden.set_defaults(func=cmd_golden)

    worker = sub.add_parser("worker", help="a Dask worker holding this host's devices (for [lab] executor)",
                            description="Join the lab's Dask cluster and run the combinations of the devices attached "
                            "to this host (docs/lab.md, 'A lab on several hosts').")
    worker.add_argument("--scheduler", required=True, metavar="ADDRESS",
                        help="the Dask scheduler, tcp://HOST:8786 (dask://HOST:8786 as in the lab file works too)")
    worker.add_argument("--device", action="append", default=[], metavar="NAME[=URI][,token_file=PATH]",
                        help="a device this host holds (repeat); without =URI the lab file's uri is used")
    worker.add_argument("--name", help="the worker's name in the history (default: this host's name)")
    worker.add_argument("--host", help="the address to listen on (default: the one facing the scheduler)")
    worker.add_argument("--nthreads", type=int, help="combinations at once (default: one per device)")
    worker.add_argument("--token-file", type=Path, help="agent token for devices without their own token_file "
                        "(else $DFLARE_TOKEN)")
    worker.add_argument("--tls-ca-file", type=Path, help="CA that verifies grpcs:// agents' certificates")
    worker.add_argument("--tls-server-name", help="name expected in the agents' certificates")
    worker.add_argument("--connect-timeout-s", type=float, default=10.0,
                        help="wait this long for the scheduler (default: 10)")
    worker.set_defaults(func=cmd_worker)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _print_event(event) -> None:
    where = event.device + (f" {event.model}[{event.delegate}]" if event.model else "")
    print(f"lab: {event.kind:14s} {where}{': ' + event.message if event.message else ''}", file=sys.stderr)


def cmd_run(args: argparse.Namespace) -> int:
    from host.lab.history import History
    from host.lab.report import find_regressions, junit_xml
    from host.lab.runner import LabRunner

    config = load_lab_config(args.config)
    history = History(config.history)
    try:
        resume = history.run(args.resume)["run_id"] if args.resume else None  # a unique prefix is enough
        result = LabRunner(config, history, on_event=_print_event).run(resume)
        baseline = args.baseline or (history.previous_run(result.run_id) or {}).get("run_id")
        regressions = find_regressions(history, result.run_id, baseline, config.latency_ratio,
                                       config.latency_min_delta_ms) if baseline else []
        summary = {
            "run_id": result.run_id, "lab": config.name, "baseline": baseline, "counts": result.counts(),
            "devices": [{"name": d.name, "uri": d.uri, "status": d.status, "error": d.error} for d in result.devices],
            "combos": result.combos, "regressions": [r.to_dict() for r in regressions], "out": str(result.out),
        }
        result.out.mkdir(parents=True, exist_ok=True)
        atomic_write(result.out / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
        atomic_write(result.out / "junit.xml", junit_xml(history, result.run_id, regressions))
    finally:
        history.close()
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        _print_run(summary)
    return ExitCode.deviation if regressions else ExitCode.ok


def _print_run(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"lab {summary['lab']} run {summary['run_id']}")
    for name in ("device", "model", "delegate", "status", "seed dev.", "triggered", "cand./trigger", "q/trigger",
                 "p50 ms"):
        table.add_column(name, overflow="fold")
    for c in summary["combos"]:
        style = {"passed": "green", "failed": "red", "skipped": "yellow"}.get(c["status"], "")
        table.add_row(c["device"], c["model"], c["delegate"], f"[{style}]{c['status']}[/{style}]",
                      _fmt(c.get("seed_deviations"), c.get("seeds")), _fmt(c.get("triggered"), c.get("seeds")),
                      _num(c.get("candidates_per_trigger"), ".0f"), _num(c.get("queries_per_trigger"), ".0f"),
                      _num(c.get("latency_p50_ms"), ".3f"))
    console.print(table)
    for d in summary["devices"]:
        if d["status"] != "ok":
            console.print(f"[red]device {d['name']} {d['status']}[/red]: {d['error']}")
    _print_regressions(console, summary["regressions"], summary["baseline"])
    console.print(f"summary: {summary['out']}/summary.json  junit: {summary['out']}/junit.xml")


def _print_regressions(console, regressions: list[dict[str, Any]], baseline: str | None) -> None:
    if baseline is None:
        console.print("no baseline run yet: nothing to compare with")
    elif not regressions:
        console.print(f"[green]no regressions against {baseline}[/green]")
    for r in regressions:
        console.print(f"[red]REGRESSION[/red] {r['kind']} {r['device']} {r['model']}[{r['delegate']}]: {r['detail']}")


def _fmt(a: Any, b: Any) -> str:
    return "-" if a is None else f"{a}/{b}"


def _num(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def cmd_report(args: argparse.Namespace) -> int:
    from host.lab.history import History
    from host.lab.report import find_regressions, junit_xml, trends

    config: LabConfig | None = load_lab_config(args.config) if args.config else None
    url = args.history or (config.history if config else None)
    if url is None:
        raise ConfigError("lab report needs a lab file or --history URL")
    history = History(url)
    try:
        runs = history.runs(args.lab or (config.name if config else None))
        if not runs:
            raise ConfigError(f"no lab runs in {url}")
        lab = args.lab or (config.name if config else runs[-1]["lab"])
        run = history.run(args.run) if args.run else history.runs(lab)[-1]
        baseline = history.run(args.baseline) if args.baseline else history.previous_run(run["run_id"])
        ratio = args.latency_ratio or (config.latency_ratio if config else DEFAULT_LATENCY_RATIO)
        min_delta = config.latency_min_delta_ms if config else DEFAULT_LATENCY_MIN_DELTA_MS
        regressions = find_regressions(history, run["run_id"], baseline["run_id"], ratio, min_delta) \
            if baseline else []
        trend = trends(history, lab, args.last)
        if args.junit:
            args.junit.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(args.junit, junit_xml(history, run["run_id"], regressions))
    finally:
        history.close()
    report = {"lab": lab, "run_id": run["run_id"], "baseline": baseline["run_id"] if baseline else None,
              "regressions": [r.to_dict() for r in regressions], "trend": trend}
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        _print_trend(report)
    return ExitCode.deviation if regressions else ExitCode.ok


def _print_trend(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"lab {report['lab']}: trend over {len(report['trend'])} run(s)")
    for name in ("run", "device", "model", "delegate", "status", "seed dev.", "success", "cand./trigger",
                 "q/trigger", "p50 ms", "runtime"):
        table.add_column(name, overflow="fold")
    for run in report["trend"]:
        for c in run["combos"]:
            rate = "-" if c["success_rate"] is None else f"{100 * c['success_rate']:.0f}%"
            table.add_row(run["run_id"][:15], c["device"], c["model"], c["delegate"], c["status"],
                          _fmt(c["seed_deviations"], c["seeds"]), rate, _num(c["candidates_per_trigger"], ".0f"),
                          _num(c["queries_per_trigger"], ".0f"),
                          _num(c["latency_p50_ms"], ".3f"), str(c["runtime_version"] or "-"))
    console.print(table)
    _print_regressions(console, report["regressions"], report["baseline"])


def cmd_golden(args: argparse.Namespace) -> int:
    from host.lab.health import record_golden
    from host.targets import open_target

    config = load_lab_config(args.config)
    if config.health is None:
        raise ConfigError(f"{args.config} has no [health] table (model, inputs, expected) to record")
    target = open_target(args.target)
    try:
        path = record_golden(target, config.health)
    finally:
        target.close()
    print(f"recorded golden outputs of {config.health.model.name} on {args.target} in {path}")
    return ExitCode.ok


def cmd_worker(args: argparse.Namespace) -> int:
    from host.lab.dask_worker import HeldDevice, serve_worker

    scheduler = args.scheduler
    if scheduler.startswith("dask://"):
        scheduler = "tcp://" + scheduler[len("dask://"):]
    devices = [HeldDevice.parse(text) for text in args.device]
    serve_worker(scheduler, devices, name=args.name, host=args.host, nthreads=args.nthreads,
                 token_file=args.token_file, tls_ca_file=args.tls_ca_file, tls_server_name=args.tls_server_name,
                 connect_timeout_s=args.connect_timeout_s)
    return ExitCode.ok
