"""``dflare compare``: one model on several targets/delegates, compared pairwise.

    dflare compare --model C.tflite --targets local:,delegate=xnnpack local:,delegate=ref \\
        --seeds S.npz [--original O.tflite] [--search] [--json] [--out DIR]

Writes DIR/summary.json and DIR/compare.html (a heat map) and prints a table; ``--json`` prints
the summary instead. Exit codes: 0 done, 1 a disagreement and ``--fail-on-disagreement`` given,
2 usage/input error (or fewer than two columns could run).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from host.commands.target_flags import add_target_arguments, target_options
from host.compare.columns import CompareResult, run_compare
from host.errors import ConfigError
from host.exit_codes import ExitCode
from host.files import atomic_write
from host.seeds import load_seeds
from host.targets.latency import DEFAULT_BATCH_SIZE, DEFAULT_MIN_RUNS, DEFAULT_WARMUP_RUNS
from host.targets.spec import parse_target_spec


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "compare",
        help="run one model on several targets/delegates and compare them pairwise",
        description="Run the same model on several targets/delegates (and the original model as a reference) "
        "and report, for every pair, top-1 disagreements, probability differences and latency.",
    )
    p.add_argument("--model", required=True, type=Path, help="the (compressed) .tflite model to run everywhere")
    p.add_argument("--targets", required=True, nargs="+", metavar="URI[,delegate=D][,threads=N][,name=L]",
                   help="columns, e.g. local:,delegate=xnnpack grpc://127.0.0.1:50051,delegate=ref,threads=2")
    p.add_argument("--seeds", required=True, type=Path, help=".npz with x (uint8 NHWC) and optional y")
    p.add_argument("--original", type=Path, help="the original model, added as a reference column")
    p.add_argument("--original-target", default="local:", metavar="URI[,delegate=D][,threads=N]",
                   help="where the original model runs (default: local:)")
    p.add_argument("--limit", type=int, help="use only the first N seeds")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                   help=f"images per inference call (default {DEFAULT_BATCH_SIZE}, as benchmark_model)")
    p.add_argument("--warmup-runs", type=int, default=DEFAULT_WARMUP_RUNS,
                   help=f"untimed calls before timing (default {DEFAULT_WARMUP_RUNS})")
    p.add_argument("--runs", type=int, default=DEFAULT_MIN_RUNS,
                   help=f"minimum timed calls per column (default {DEFAULT_MIN_RUNS})")
    p.add_argument("--mean", type=float, nargs="+", help="per-channel mean, overriding the model's metadata")
    p.add_argument("--std", type=float, nargs="+", help="per-channel std, overriding the model's metadata")
    add_target_arguments(p)
    p.add_argument("--search", action="store_true", help="also search for triggering inputs between every pair")
    p.add_argument("--algo", default="dflare", help="search algorithm with --search (default dflare)")
    p.add_argument("--max-queries", type=int, default=500, help="per-seed query budget with --search (default 500)")
    p.add_argument("--timeout-s", type=float, help="per-seed time budget in seconds with --search")
    p.add_argument("--seed", type=int, default=0, help="random seed of the search")
    p.add_argument("--out", type=Path, default=Path("dflare-compare"), help="output folder (default dflare-compare)")
    p.add_argument("--json", action="store_true", help="print summary.json to stdout instead of tables")
    p.add_argument("--fail-on-disagreement", action="store_true",
                   help="exit 1 when any pair disagrees on a seed (for CI gates)")
    p.set_defaults(func=run)


def _model_spec(path: Path, args: argparse.Namespace):
    from device_agent.runtime import Preprocessing
    from host.targets.base import ModelSpec

    preprocessing = None
    if args.mean is not None or args.std is not None:
        try:
            preprocessing = Preprocessing(tuple(args.mean or (0.0,)), tuple(args.std or (1.0,)))
        except ValueError as exc:
            raise ConfigError(f"--mean/--std: {exc}") from None
    return ModelSpec.from_path(path, preprocessing=preprocessing)


def _target_opener(args: argparse.Namespace):
    from host.targets import open_target

    options = target_options(args)  # read once, here: a bad --token-file fails before any column runs
    return lambda uri: open_target(uri, options)


def run(args: argparse.Namespace) -> int:
    for name in ("batch_size", "runs", "limit", "max_queries"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if args.warmup_runs < 0:
        raise ConfigError(f"--warmup-runs must not be negative, got {args.warmup_runs}")
    specs = [parse_target_spec(t) for t in args.targets]
    original_target = parse_target_spec(args.original_target)
    model = _model_spec(args.model, args)
    original = _model_spec(args.original, args) if args.original else None
    seed_set = load_seeds(args.seeds)
    x, y = seed_set.x, seed_set.y
    if args.limit:
        x = x[: args.limit]
        y = None if y is None else y[: args.limit]
    hook = None
    if args.search:
        from host.compare.search import PairSearch

        hook = PairSearch(x, y, algo=args.algo, max_queries=args.max_queries, timeout_s=args.timeout_s,
                          seed=args.seed, out=args.out / "search")
    result = run_compare(model, specs, x, _target_opener(args), original=original,
                         original_target=original_target, batch_size=args.batch_size,
                         warmup_runs=args.warmup_runs, min_runs=args.runs, pair_hook=hook)
    summary = build_summary(result, model.describe(), args.out)
    write_outputs(result, summary, args.out)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print_tables(result)
        print(f"summary: {args.out / 'summary.json'}\nheat map: {args.out / 'compare.html'}")
    if sum(c.ok for c in result.columns) < 2:
        errors = "; ".join(f"{c.label}: {c.error}" for c in result.columns if c.error)
        raise ConfigError(f"fewer than two columns ran, nothing to compare ({errors})")
    if args.fail_on_disagreement and any(p.disagreements for p in result.pairs):
        return ExitCode.deviation
    return ExitCode.ok


def build_summary(result: CompareResult, model: dict[str, Any], out: Path) -> dict[str, Any]:
    """The summary.json content: the compare result plus the model and output folder."""
    summary = result.to_dict()
    summary["model"] = model
    summary["out"] = str(out)
    return summary


def write_outputs(result: CompareResult, summary: dict[str, Any], out: Path) -> None:
    """Write summary.json and compare.html into ``out``."""
    from host.compare.html import write_compare_html

    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / "summary.json", json.dumps(summary, indent=2) + "\n")
        write_compare_html(summary, out / "compare.html")
    except OSError as exc:
        raise ConfigError(f"cannot write to --out {out}: {exc.strerror}") from None


def print_tables(result: CompareResult) -> None:
    """Print the disagreement matrix, the pair table and the latency table with rich."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    labels = [c.label for c in result.columns]
    counts = result.matrix("disagreements")
    rates = result.matrix("rate")
    matrix = Table(title=f"Top-1 disagreements on {result.seeds} seeds")
    matrix.add_column("")
    for label in labels:
        matrix.add_column(label, justify="right")
    for i, label in enumerate(labels):
        cells = []
        for j in range(len(labels)):
            if counts[i][j] is None:
                cells.append("[dim]n/a[/dim]")
            elif i == j:
                cells.append("[dim]-[/dim]")
            else:
                style = "red" if counts[i][j] else "green"
                cells.append(f"[{style}]{counts[i][j]} ({100 * rates[i][j]:.1f}%)[/{style}]")
        matrix.add_row(label, *cells)
    console.print(matrix)

    pairs = Table(title="Pairs")
    for name in ("A", "B", "disagree", "max |dp|", "mean |dp|", "search"):
        pairs.add_column(name, justify="right" if name not in ("A", "B") else "left")
    for p in result.pairs:
        search = "-"
        if p.search:
            search = f"{p.search['triggered']}/{p.search['seeds']} triggered"
            if p.search.get("candidates_per_trigger") is not None:
                search += (f", {p.search['candidates_per_trigger']:.0f} candidates "
                           f"({p.search['queries_per_trigger']:.0f} queries) per trigger")
        pairs.add_row(p.a, p.b, f"{p.disagreements}/{p.seeds}", f"{p.max_abs_diff:.4g}", f"{p.mean_abs_diff:.3g}",
                      search)
    console.print(pairs)

    latency = Table(title="Latency per image (ms)")
    for name in ("column", "mean", "p50", "p90", "p99", "runs x batch", "source", "host mean", "peak memory"):
        latency.add_column(name, justify="left" if name == "column" else "right", overflow="fold")
    for c in result.columns:
        if not c.ok or c.latency is None:
            latency.add_row(c.label, f"[red]{c.error}[/red]", "", "", "", "", "", "", "")
            continue
        lat = c.latency
        host = f"{c.host_latency.mean_ms:.3f}" if c.host_latency else "-"
        memory = f"{c.peak_memory_bytes / 2**20:.1f} MiB" if c.peak_memory_bytes else "-"
        latency.add_row(c.label, f"{lat.mean_ms:.3f}", f"{lat.p50_ms:.3f}", f"{lat.p90_ms:.3f}",
                        f"{lat.p99_ms:.3f}", f"{lat.runs} x {lat.batch_size}", lat.source, host, memory)
    console.print(latency)
