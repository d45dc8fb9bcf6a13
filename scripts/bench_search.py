#!/usr/bin/env python3
"""Search efficacy: DFlare vs its faithful reproduction, DiffChaser (two variants), random and two ablations.

One run, the same models and seeds for every algorithm (the first N seeds both models agree on):

    python scripts/bench_search.py [--model digits28] [--compressed int8] [--seeds 50]
        [--max-queries 5000] [--seed 0] [--delegate xnnpack] [--threads 1] [--json]

Per algorithm: success rate, candidates (images tried on both models, the paper's unit) and
queries (one image through one model) per triggering input (mean and median over triggered seeds),
seconds per triggering input (wall clock of the whole run / triggered seeds), and all queries
spent (failed seeds included) per triggering input. DFlare's queries per trigger are then given as
a share of each DiffChaser variant's: ``diffchaser`` (DFlare's operators, output-difference
fitness, as issue 5 specifies) and ``diffchaser-pixel`` (the paper's pixel-level mutation and
uncertainty fitness; ``host/search/diffchaser.py``). Then the batched
engine's speed-up: DFlare with every seed in lockstep (and speculation) vs the same engine one seed
and one candidate at a time (``max_live_seeds=1, max_speculation=1``: the original's loop), in
seconds per triggering input, alternated ``--repeat`` times (median). Both find the same inputs
with the same query counts (on a batch-invariant delegate such as XNNPACK). Each run also records
how long it waited for the two models (``infer_s``); the one-at-a-time run's time over the batched
run's inference is the ceiling (``speedup_ceiling``) no engine can pass on that machine.

``--seed 0 1 2`` repeats every algorithm under each random seed and pools the runs into one row
per algorithm: success rate over every (seed image, rng seed) pair, mean and median over every
triggered pair. A mean over a few dozen seeds is dominated by its slowest seeds (a heavy tail), so
a ratio of means is only as good as the number of runs behind it. The speed-up rounds use the
first rng seed. Runs of different rng seeds can also go to separate processes or machines, each
with ``--json-out``; ``--pool FILE ...`` (in rng-seed order) then prints the rows and ratios one run
with all those rng seeds would print.

``--via-agent`` adds two rows: the same DFlare search with the compressed model in a real
``dflare-agent`` on loopback (``RemoteTarget``; the original stays in process), batched and one
seed at a time, so seconds per trigger through gRPC compare with in-process on the same inputs and
query counts, and the batched speed-up is measured where each call pays a round trip.

``--json`` prints one JSON list of rows (``algo``, ``success_rate``, ``queries_per_trigger``,
``median_queries``, ``seconds_per_trigger``, plus counts); otherwise a Markdown table for
docs/benchmarks.md ("Search efficacy"). ``--json-out FILE`` also writes the rows to FILE.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from host.figures import candidates  # noqa: E402
from host.search import Engine, SeedStatus, searcher_factory  # noqa: E402
from host.search.diffchaser import GENE_MUTATION_RATE, MUTATION_RATE, POPULATION_SIZE  # noqa: E402
from host.targets import LocalTarget, ModelSpec  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures"
#: The algorithms compared, in table order (host.search.ALGORITHMS names).
ALGOS = ("dflare", "dflare-faithful", "diffchaser", "diffchaser-pixel", "random", "dflare-no-mh", "dflare-novelty")
#: The two DiffChaser variants DFlare's queries are compared with.
CHASERS = ("diffchaser", "diffchaser-pixel")
#: Goals from issue 5.
GOAL_QUERY_RATIO = 0.02  # DFlare's queries per trigger / DiffChaser's
GOAL_SPEEDUP = 3.0  # batched vs one seed at a time, seconds per trigger


def agreeing_seeds(original, compressed, name: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    data = np.load(FIXTURES / "seeds" / f"{name}.npz")
    x = data["x"]
    agree = np.flatnonzero(np.argmax(original.infer(x), 1) == np.argmax(compressed.infer(x), 1))
    if agree.size < n:
        raise SystemExit(f"only {agree.size} seeds of {name} on which the models agree; asked for {n}")
    return x[agree[:n]], agree[:n]


def measure(original, compressed, seeds, indices, algo: str, max_queries: int, rng_seed: int,
            sequential: bool = False, label: str | None = None, options: dict | None = None,
            ignore_ties: bool = False) -> dict:
    # one seed at a time, one candidate at a time: the original's loop, in the same engine
    kwargs = {"max_live_seeds": 1, "max_speculation": 1} if sequential else {}
    engine = Engine(original, compressed, searcher_factory(algo, **(options or {})), algo=algo, budget=max_queries,
                    rng_seed=rng_seed, ignore_ties=ignore_ties, **kwargs)
    start, cpu_start = time.perf_counter(), time.process_time()
    results = [e.result for e in engine.run(seeds, indices=indices) if e.result is not None]
    wall_s, cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
    triggered = [r for r in results if r.status is SeedStatus.triggered]
    searched = [r for r in results if r.status is not SeedStatus.skipped]
    queries = [r.queries for r in triggered]
    return {
        "algo": label or algo,
        "success_rate": len(triggered) / len(searched) if searched else 0.0,
        "queries_per_trigger": float(np.mean(queries)) if queries else None,
        "median_queries": float(np.median(queries)) if queries else None,
        "seconds_per_trigger": wall_s / len(triggered) if triggered else None,
        "seeds": len(searched),
        "triggered": len(triggered),
        "trigger_queries": queries,  # per triggered seed, in seed order (pooling and tail analysis)
        # the seed index of each of those, with the rng seed: pairs the algorithms' runs seed by seed
        "trigger_keys": [[rng_seed, int(r.seed_index)] for r in triggered],
        "flaky": sum(r.status is SeedStatus.flaky for r in results),
        "total_queries": engine.total_queries,
        # every query spent, failed seeds included, per trigger: what a campaign pays for each input found
        "total_queries_per_trigger": engine.total_queries / len(triggered) if triggered else None,
        "speculative_queries": engine.total_speculative_queries,
        "wall_s": wall_s,
        "cpu_s": cpu_s,  # this process's CPU time, all threads (less sensitive to other jobs than wall time)
        # wall time spent waiting for the two models (verification included): the floor of any engine
        "infer_s": float(engine.statistics.get("infer_s", 0.0)),
        "batch_calls": engine.batch_calls,
    }


def _through_agent(original, seeds, indices, args: argparse.Namespace) -> list[dict]:
    """DFlare with the compressed model in a real agent on loopback (the original in process).

    Returns two rows, batched and one seed at a time; the batched one carries the speed-up.
    """
    import tempfile

    from host.deploy.loopback import launch_agent
    from host.targets.remote import RemoteTarget

    with tempfile.TemporaryDirectory(prefix="bench-search-agent-") as tmp:
        agent = launch_agent(Path(tmp), log_level="WARNING")
        uri, token = agent.uri, agent.token
        try:
            with RemoteTarget(uri, token=token) as target:
                compressed = target.load(ModelSpec.from_path(
                    FIXTURES / "models" / f"{args.model}-{args.compressed}.tflite", delegate=args.delegate,
                    threads=args.threads))
                label = "dflare (compressed model through the agent)"
                batched = measure(original, compressed, seeds, indices, "dflare", args.max_queries, args.seed[0],
                                  label=label, ignore_ties=args.ignore_ties)
                sequential = measure(original, compressed, seeds, indices, "dflare", args.max_queries,
                                     args.seed[0], sequential=True, label=label + ", one seed at a time",
                                     ignore_ties=args.ignore_ties)
                if batched["seconds_per_trigger"] and sequential["seconds_per_trigger"]:
                    batched["speedup_vs_one_seed_at_a_time"] = (
                        sequential["seconds_per_trigger"] / batched["seconds_per_trigger"])
                return [batched, sequential]
        finally:
            agent.stop()


def pooled(runs: list[dict]) -> dict:
    """One row from runs of one algorithm under several rng seeds.

    Counts and times add up; the mean and median are over every triggered (seed, rng seed) pair, and
    seconds per trigger are the summed wall time over all triggers.
    """
    if len(runs) == 1:
        return runs[0]
    row = dict(runs[0])
    for key in ("seeds", "triggered", "flaky", "total_queries", "speculative_queries", "wall_s", "cpu_s",
                "batch_calls"):
        row[key] = sum(r[key] for r in runs)
    row["infer_s"] = sum(r.get("infer_s", 0.0) for r in runs)  # missing from files written before it
    queries = [q for r in runs for q in r["trigger_queries"]]
    triggered = row["triggered"]
    row.update(
        trigger_queries=queries,
        trigger_keys=[k for r in runs for k in r["trigger_keys"]],
        success_rate=triggered / row["seeds"] if row["seeds"] else 0.0,
        queries_per_trigger=float(np.mean(queries)) if queries else None,
        median_queries=float(np.median(queries)) if queries else None,
        seconds_per_trigger=row["wall_s"] / triggered if triggered else None,
        total_queries_per_trigger=row["total_queries"] / triggered if triggered else None,
        per_rng_seed=[p for r in runs for p in r.get("per_rng_seed") or
                      [{"queries_per_trigger": r["queries_per_trigger"], "triggered": r["triggered"]}]],
    )
    return row


def paired_ratio(row: dict, other: dict) -> tuple[float, int] | None:
    """Mean queries per trigger of ``row`` over ``other``'s, on the (rng seed, seed) runs both triggered.

    Each algorithm's own mean is over the seeds it triggered, so a seed one of them gives up on
    leaves its mean while the other pays for it in full; on the common seeds both pay for the same
    seeds. Returns (ratio, common runs), or None when they share no triggered run.
    """
    theirs = {tuple(k): q for k, q in zip(other["trigger_keys"], other["trigger_queries"])}
    pairs = [(q, theirs[tuple(k)]) for k, q in zip(row["trigger_keys"], row["trigger_queries"]) if tuple(k) in theirs]
    if not pairs:
        return None
    mine, chaser = zip(*pairs)
    return float(np.mean(mine) / np.mean(chaser)), len(pairs)


def ratio_interval(numerator: list[float], denominator: list[float], resamples: int = 2000,
                   level: float = 0.95, seed: int = 0) -> tuple[float, float] | None:
    """Percentile bootstrap interval of ``mean(numerator) / mean(denominator)``.

    Each sample is resampled with replacement on its own (the two algorithms' triggered seeds differ).
    Per-seed query counts are heavy-tailed, so the interval says how far the ratio of means could move
    with other seeds or rng seeds.
    """
    if not numerator or not denominator:
        return None
    rng = np.random.default_rng(seed)
    a, b = np.asarray(numerator, dtype=float), np.asarray(denominator, dtype=float)
    means_a = a[rng.integers(len(a), size=(resamples, len(a)))].mean(axis=1)
    means_b = b[rng.integers(len(b), size=(resamples, len(b)))].mean(axis=1)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(means_a / means_b, [tail, 100 - tail])
    return float(low), float(high)


def _median_run(runs: list[dict]) -> dict:
    """The run with the median wall time (all runs find the same inputs with the same queries)."""
    return sorted(runs, key=lambda r: r["wall_s"])[len(runs) // 2]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"{cpu}, {cores} cores available, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}")


def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown(rows: list[dict], args: argparse.Namespace) -> str:
    lines = [
        f"Models: `{args.model}-float32` (original) vs `{args.model}-{args.compressed}`, delegate `{args.delegate}`, "
        f"threads {args.threads or 'default'}; "
        f"{args.seeds} agreeing seeds; budget "
        f"{args.max_queries} queries per seed; rng seed{'s' if len(args.seed) > 1 else ''} "
        f"{', '.join(map(str, args.seed))}"
        + (" (each row pools every rng seed; the one-at-a-time row uses the first)." if len(args.seed) > 1 else "."),
        f"Machine: {machine()}.",
        "",
    ]
    return "\n".join(lines + [markdown_rows(rows)])


def markdown_rows(rows: list[dict]) -> str:
    """The Markdown table of ``rows``."""
    lines = [
        "| algorithm | success rate | candidates / trigger (mean) | queries / trigger (mean) | median | "
        "seconds / trigger | total queries | all queries / trigger | speculative queries |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        name = r["algo"] + (f" ({', '.join(f'{k} {v}' for k, v in r['options'].items())})" if r.get("options") else "")
        cpt = None if r["queries_per_trigger"] is None else candidates(r["queries_per_trigger"])
        lines.append(f"| {name} | {100 * r['success_rate']:.0f}% ({r['triggered']}/{r['seeds']}) | {fmt(cpt, '.0f')} | "
                     f"{fmt(r['queries_per_trigger'], '.0f')} | {fmt(r['median_queries'], '.0f')} | "
                     f"{fmt(r['seconds_per_trigger'], '.4f')} | {r['total_queries']} | "
                     f"{fmt(r.get('total_queries_per_trigger'), '.0f')} | {r['speculative_queries']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="digits28", help="fixture model name (digits28 or digits32rgb)")
    parser.add_argument("--compressed", default="int8", help="compressed variant: int8, dynamic or float16")
    parser.add_argument("--seeds", type=int, default=50, help="agreeing seeds to search (default 50)")
    parser.add_argument("--max-queries", type=int, default=5000, help="query budget per seed (default 5000)")
    parser.add_argument("--seed", type=int, nargs="+", default=[0],
                        help="random seed of every search; several: each algorithm runs once per rng seed and "
                             "its rows are pooled (default 0)")
    parser.add_argument("--delegate", default="xnnpack",
                        help="delegate of both models (default xnnpack: batch-invariant, so batched and "
                        "one-at-a-time runs find the very same inputs)")
    parser.add_argument("--threads", type=int, default=1,
                        help="interpreter threads per model (default 1: the engine runs both models at once)")
    parser.add_argument("--algos", nargs="+", default=list(ALGOS), choices=ALGOS, help="algorithms to compare")
    parser.add_argument("--repeat", type=int, default=3,
                        help="rounds of batched vs one-at-a-time runs for the speed-up (median; default 3)")
    parser.add_argument("--diffchaser-population", type=int, default=None, metavar="N",
                        help=f"population size of both DiffChaser variants (default {POPULATION_SIZE}, our "
                             "choice: the IJCAI paper's value is not known here); the ratio scales with it")
    parser.add_argument("--diffchaser-mutation-rate", type=float, default=None, metavar="R",
                        help=f"diffchaser's probability of mutating a child (default {MUTATION_RATE})")
    parser.add_argument("--gene-mutation-rate", type=float, default=None, metavar="R",
                        help=f"diffchaser-pixel's probability of nudging each gene (default {GENE_MUTATION_RATE})")
    parser.add_argument("--ignore-ties", action="store_true",
                        help="count a deviation only when both top-1 labels are unique (host.search.deviation)")
    parser.add_argument("--via-agent", action="store_true",
                        help="also run DFlare with the compressed model in a dflare-agent on loopback")
    parser.add_argument("--json", action="store_true", help="print the rows as one JSON list")
    parser.add_argument("--json-out", type=Path, metavar="FILE",
                        help="also write the rows (with every triggered seed's query count) to FILE as JSON")
    parser.add_argument("--pool", type=Path, nargs="+", metavar="FILE",
                        help="run nothing: pool --json-out FILEs of runs under different rng seeds (in rng-seed "
                             "order) and print their rows and ratios")
    args = parser.parse_args(argv)
    if args.pool:
        return _print_pool(args)
    population = {"population_size": args.diffchaser_population} if args.diffchaser_population else {}
    chaser_options = {
        "diffchaser": {**population, **({"mutation_rate": args.diffchaser_mutation_rate}
                                        if args.diffchaser_mutation_rate is not None else {})},
        "diffchaser-pixel": {**population, **({"mutation_rate": args.gene_mutation_rate}
                                              if args.gene_mutation_rate is not None else {})},
    }

    target = LocalTarget()
    original = target.load(ModelSpec.from_path(FIXTURES / "models" / f"{args.model}-float32.tflite",
                                               delegate=args.delegate, threads=args.threads))
    compressed = target.load(ModelSpec.from_path(FIXTURES / "models" / f"{args.model}-{args.compressed}.tflite",
                                                 delegate=args.delegate, threads=args.threads))
    seeds, indices = agreeing_seeds(original, compressed, args.model, args.seeds)

    rows = []
    batched_runs = []  # DFlare in lockstep under the first rng seed: the speed-up's first round
    for algo in args.algos:
        options = chaser_options.get(algo, {})
        runs = []
        for rng_seed in args.seed:
            runs.append(measure(original, compressed, seeds, indices, algo, args.max_queries, rng_seed,
                                options=options, ignore_ties=args.ignore_ties))
            print(f"  {algo} (rng seed {rng_seed}): done in {runs[-1]['wall_s']:.1f} s", file=sys.stderr)
        if algo == "dflare":
            batched_runs.append(runs[0])
        rows.append(pooled(runs))
        if options:
            rows[-1]["options"] = options
    # Speed-up: batched and one-at-a-time DFlare, alternated --repeat times (shared cores are noisy);
    # the medians of seconds per trigger are compared.
    first_seed = args.seed[0]
    sequential_runs = []
    for i in range(args.repeat):
        if i > 0 or not batched_runs:
            batched_runs.append(measure(original, compressed, seeds, indices, "dflare", args.max_queries, first_seed,
                                        ignore_ties=args.ignore_ties))
        sequential_runs.append(measure(original, compressed, seeds, indices, "dflare", args.max_queries, first_seed,
                                       sequential=True, label="dflare (one seed at a time)",
                                       ignore_ties=args.ignore_ties))
        print(f"  speed-up round {i + 1}: {sequential_runs[-1]['wall_s']:.1f} s one at a time, "
              f"{batched_runs[-1]['wall_s']:.1f} s batched", file=sys.stderr)
    sequential = _median_run(sequential_runs)
    rows.append(sequential)
    if args.via_agent:
        rows.extend(_through_agent(original, seeds, indices, args))
    by_algo = {r["algo"]: r for r in rows}
    batched = by_algo.get("dflare")
    spt_batched = _median_run(batched_runs)["seconds_per_trigger"]
    if batched and spt_batched and sequential["seconds_per_trigger"]:
        if len(args.seed) == 1:
            batched["seconds_per_trigger"] = spt_batched  # the median round, like the one-at-a-time row
        batched["speedup_vs_one_seed_at_a_time"] = sequential["seconds_per_trigger"] / spt_batched
        batched["speedup_rounds"] = [
            round(s["wall_s"] / b["wall_s"], 2) for s, b in zip(sequential_runs, batched_runs)]
        # the same ratio in CPU time (the two models' threads included): what other jobs disturb least
        cpu_rounds = [s["cpu_s"] / b["cpu_s"] for s, b in zip(sequential_runs, batched_runs)]
        batched["cpu_speedup_vs_one_seed_at_a_time"] = float(np.median(cpu_rounds))
        batched["cpu_speedup_rounds"] = [round(r, 2) for r in cpu_rounds]
        # If mutations, fitness and bookkeeping cost nothing, a batched run would take its inference
        # time alone: the one-at-a-time run over that bounds the speed-up any engine gets here.
        batched["inference_s"] = float(np.median([b["infer_s"] for b in batched_runs]))
        if batched["inference_s"] > 0:
            batched["speedup_ceiling"] = sequential["wall_s"] / batched["inference_s"]
    if batched:
        compare_with_chasers(batched, by_algo)

    if args.json_out:
        args.json_out.write_text(json.dumps(rows))
    if args.json:
        print(json.dumps(rows))
        return 0
    print(markdown(rows, args))
    if batched:
        speedup = batched.get("speedup_vs_one_seed_at_a_time")
        print()
        if speedup is not None:
            print(f"Batched engine speed-up over one seed at a time (seconds per trigger, median of "
                  f"{args.repeat} alternating rounds; per round: {batched['speedup_rounds']}): {speedup:.1f}x "
                  f"(goal >= {GOAL_SPEEDUP:.0f}x: {'met' if speedup >= GOAL_SPEEDUP else 'NOT met'}). "
                  f"Load average at the end: {os.getloadavg()[0]:.1f}.")
            print(f"In CPU time (this process, all threads): {batched['cpu_speedup_vs_one_seed_at_a_time']:.1f}x "
                  f"(per round: {batched['cpu_speedup_rounds']}).")
            if "speedup_ceiling" in batched:
                print(f"Inference alone (both models at once) took {batched['inference_s']:.2f} s of the batched "
                      f"run and {sequential['infer_s']:.2f} s of the {sequential['wall_s']:.2f} s one-at-a-time run, "
                      f"so no engine gets more than {batched['speedup_ceiling']:.1f}x here "
                      f"(the batched engine gets {100 * speedup / batched['speedup_ceiling']:.0f}% of that).")
        agent = by_algo.get("dflare (compressed model through the agent)")
        if agent and "speedup_vs_one_seed_at_a_time" in agent:
            print(f"Through the agent (one round): batched {agent['speedup_vs_one_seed_at_a_time']:.1f}x faster per "
                  "trigger than one seed at a time.")
        print_ratios(batched)
    return 0


def _print_pool(args: argparse.Namespace) -> int:
    rows = pool_files(args.pool)
    by_algo = {r["algo"]: r for r in rows}
    if "dflare" in by_algo:
        compare_with_chasers(by_algo["dflare"], by_algo)
    if args.json_out:
        args.json_out.write_text(json.dumps(rows))
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"Pooled from {', '.join(map(str, args.pool))}.")
    print()
    print(markdown_rows(rows))
    if "dflare" in by_algo:
        print()
        print_ratios(by_algo["dflare"])
    return 0


def compare_with_chasers(dflare: dict, by_algo: dict[str, dict]) -> None:
    """Add DFlare's query ratios against each DiffChaser variant present to the ``dflare`` row."""
    for name in CHASERS:
        chaser = by_algo.get(name)
        if not (chaser and dflare["queries_per_trigger"] and chaser["queries_per_trigger"]):
            continue
        key = "queries_vs_" + name.replace("-", "_")
        dflare[key] = dflare["queries_per_trigger"] / chaser["queries_per_trigger"]
        dflare[key + "_all_queries"] = dflare["total_queries_per_trigger"] / chaser["total_queries_per_trigger"]
        dflare[key + "_ci95"] = ratio_interval(dflare["trigger_queries"], chaser["trigger_queries"])
        dflare[key + "_paired"] = paired_ratio(dflare, chaser)
        if "per_rng_seed" in dflare and "per_rng_seed" in chaser:
            dflare[key + "_per_rng_seed"] = [
                d["queries_per_trigger"] / c["queries_per_trigger"]
                if d["queries_per_trigger"] and c["queries_per_trigger"] else None
                for d, c in zip(dflare["per_rng_seed"], chaser["per_rng_seed"])]


def print_ratios(dflare: dict) -> None:
    """One line per DiffChaser variant: DFlare's query ratio, its interval and the goal's verdict."""
    for name in CHASERS:
        key = "queries_vs_" + name.replace("-", "_")
        ratio = dflare.get(key)
        if ratio is None:
            continue
        low, high = dflare[key + "_ci95"]
        verdict = "met" if ratio <= GOAL_QUERY_RATIO else "NOT met"
        print(f"DFlare queries per trigger / {name}'s: {100 * ratio:.1f}% "
              f"(95% bootstrap interval {100 * low:.1f}-{100 * high:.1f}%; "
              f"goal <= {100 * GOAL_QUERY_RATIO:.0f}%: {verdict}); "
              f"all queries per trigger, failed seeds included: {100 * dflare[key + '_all_queries']:.1f}%"
              + (f"; on the {paired[1]} runs both triggered: {100 * paired[0]:.1f}%"
                 if (paired := dflare.get(key + "_paired")) else "")
              + (f"; per rng seed: {', '.join(fmt(r and 100 * r, '.1f') + '%' for r in per_seed)}."
                 if (per_seed := dflare.get(key + "_per_rng_seed")) else "."))


def pool_files(paths: list[Path]) -> list[dict]:
    """Pool ``--json-out`` files of runs under different rng seeds into one row per algorithm.

    Pass the files in rng-seed order: the rows are then those of one run with all their rng seeds
    (the same counts, means, intervals and per-rng-seed ratios). Rows other than the compared
    algorithms' (one seed at a time, through the agent) measure speed, not efficacy, and are left out.
    """
    by_algo: dict[str, list[dict]] = {}
    for path in paths:
        try:
            rows = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise SystemExit(f"--pool: cannot read {path}: {exc}") from exc
        if not isinstance(rows, list) or not all(isinstance(r, dict) and "algo" in r for r in rows):
            raise SystemExit(f"--pool: {path} is not a bench_search --json-out file (a JSON list of rows)")
        for row in rows:
            if row["algo"] in ALGOS:
                if "trigger_keys" not in row:
                    raise SystemExit(f"--pool: {path} has no per-seed query counts; rerun it with this script")
                by_algo.setdefault(row["algo"], []).append(row)
    pooled_rows = []
    for runs in by_algo.values():
        row = pooled(runs)
        for key in [k for k in row if k.startswith(("queries_vs_", "speedup", "cpu_speedup", "inference_s"))]:
            del row[key]  # the first file's comparisons and timings do not hold for the pool
        pooled_rows.append(row)
    return pooled_rows


if __name__ == "__main__":
    sys.exit(main())
