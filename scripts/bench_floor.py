#!/usr/bin/env python3
"""Campaign wall-clock per candidate against the inference floor, in process and through the agent.

    python scripts/bench_floor.py [--pairs digits28/int8 real:mnist_quantized ...] [--seeds 50]
        [--max-queries 10000] [--repeat 3] [--no-agent] [--json-out FILE]

The floor is what the two models alone cost per candidate: both at batch 1, in process, on the same
delegate (XNNPACK, 1 thread each), timed over the pair's seeds with ``ModelRunner.infer`` (the
interpreter call and the input preparation, no search), in every round beside the campaigns, the
best round kept (one timing alone varied 1.6x between runs minutes apart on a quiet machine). A
campaign is the default DFlare search over the first ``--seeds`` seeds both models get right, run by
the engine as ``dflare run`` runs it; its wall-clock per candidate is the run's wall time over the
candidates the search consumed (one candidate = one image through both models; speculative and
re-verification images are work the engine adds, so they are paid for, not counted). Rounds
alternate in process and through a ``dflare-agent`` on loopback (the compressed model there, the
original in process); the median round is printed with the engine's own split of the time
(propose, mutate, infer, observe, verify).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_pairs import load_pair, real_models_dir  # noqa: E402
from bench_search import machine  # noqa: E402

from host.search import Engine, searcher_factory  # noqa: E402
from host.targets.latency import measure_session  # noqa: E402

#: The issue's bar: a campaign within this factor of the floor.
GOAL_FACTOR = 2.0
#: Batch-1 timing: each image is timed this many times (best-of, after a warm-up pass).
FLOOR_REPEATS = 3
#: Round trips timed (batch 1, median) to state what the agent's per-call latency alone costs.
ROUND_TRIPS = 200
PHASES = ("propose", "mutate", "infer", "observe", "verify")


def floor_per_candidate(pair) -> dict:
    """Both models at batch 1 over the seeds, in process: seconds per candidate (best of FLOOR_REPEATS)."""
    best = {}
    for role in ("original", "compressed"):
        session = getattr(pair, role)
        for image in pair.seeds[:5]:
            session.infer(image[None])  # warm-up
        times = []
        for _ in range(FLOOR_REPEATS):
            start = time.perf_counter()
            for image in pair.seeds:
                session.infer(image[None])
            times.append((time.perf_counter() - start) / len(pair.seeds))
        best[role] = min(times)
    return {"original_s": best["original"], "compressed_s": best["compressed"],
            "floor_s": best["original"] + best["compressed"]}


def round_trip_s(session, image: np.ndarray) -> float:
    """Median seconds of one batch-1 ``infer`` through ``session``, on the host's clock (after warm-up)."""
    _, _, host = measure_session(session, image[None], min_runs=ROUND_TRIPS)
    return host.p50_ms / 1e3


def campaign(original, compressed, pair, max_queries: int) -> dict:
    engine = Engine(original, compressed, searcher_factory("dflare"), budget=max_queries, rng_seed=0)
    start = time.perf_counter()
    results = [e.result for e in engine.run(pair.seeds, indices=pair.indices) if e.result is not None]
    wall_s = time.perf_counter() - start
    candidates = engine.total_queries / 2
    return {"wall_s": wall_s, "candidates": candidates, "per_candidate_s": wall_s / candidates,
            "triggered": sum(r.status.value == "triggered" for r in results), "seeds": len(results),
            "speculative_candidates": engine.total_speculative_queries / 2,
            "verify_candidates": engine.total_verify_queries / 2, "batch_calls": engine.batch_calls,
            # one per infer/infer_many call: every step, and re-runs that found no step to travel with
            "round_trips": engine.session_calls,
            **{f"{p}_s": float(engine.statistics.get(f"{p}_s", 0.0)) for p in PHASES}}


def _agent_sessions(pair_name: str, n_seeds: int, workdir: Path):
    from host.deploy.loopback import launch_agent
    from host.targets.remote import RemoteTarget

    agent = launch_agent(workdir, log_level="WARNING")
    process, uri, token = agent, agent.uri, agent.token
    target = RemoteTarget(uri, token=token)
    remote_pair = load_pair(pair_name, n_seeds, target=target)
    return process, target, remote_pair


def measure_pair(name: str, args: argparse.Namespace) -> dict:
    pair = load_pair(name, args.seeds)
    floors = [floor_per_candidate(pair)]
    rounds = {"in process": [], "through the agent": []}
    with tempfile.TemporaryDirectory(prefix="bench-floor-") as tmp:
        process = target = remote = None
        rtt_s = None
        if not args.no_agent:
            process, target, remote = _agent_sessions(name, args.seeds, Path(tmp))
        try:
            if remote is not None:
                rtt_s = round_trip_s(remote.compressed, remote.seeds[0])
            for round_index in range(args.repeat):
                if round_index:  # the floor is timed again in each round, beside the campaigns: best of all
                    floors.append(floor_per_candidate(pair))
                rounds["in process"].append(campaign(pair.original, pair.compressed, pair, args.max_queries))
                if remote is not None:
                    rounds["through the agent"].append(campaign(remote.original, remote.compressed, remote,
                                                                args.max_queries))
        finally:
            if target is not None:
                target.close()
            if process is not None:
                process.stop()
    floor = min(floors, key=lambda f: f["floor_s"])
    row = {"pair": name, "seeds": args.seeds, **floor, "modes": {}, "round_trip_s": rtt_s}
    for mode, runs in rounds.items():
        if not runs:
            continue
        median = sorted(runs, key=lambda r: r["wall_s"])[len(runs) // 2]
        median["factor"] = median["per_candidate_s"] / floor["floor_s"]
        median["rounds_factor"] = [round(r["per_candidate_s"] / floor["floor_s"], 2) for r in runs]
        row["modes"][mode] = median
    return row


def print_row(row: dict) -> None:
    us = 1e6
    print(f"\n### {row['pair']} ({row['seeds']} seeds)\n")
    print(f"Floor: {row['floor_s'] * us:.1f} us per candidate (original {row['original_s'] * us:.1f} us + "
          f"compressed {row['compressed_s'] * us:.1f} us, batch 1, in process).\n")
    print("| mode | candidates | triggered | wall s | us / candidate | x floor (rounds) | "
          + " | ".join(f"{p} s" for p in PHASES) + " | batch calls |")
    print("|---|---|---|---|---|---|" + "---|" * len(PHASES) + "---|")
    for mode, m in row["modes"].items():
        print(f"| {mode} | {m['candidates']:.0f} | {m['triggered']}/{m['seeds']} | {m['wall_s']:.2f} | "
              f"{m['per_candidate_s'] * us:.1f} | **{m['factor']:.2f}** ({', '.join(map(str, m['rounds_factor']))}) | "
              + " | ".join(f"{m[p + '_s']:.2f}" for p in PHASES) + f" | {m['batch_calls']} |")
    for mode, m in row["modes"].items():
        verdict = "met" if m["factor"] <= GOAL_FACTOR else "NOT met"
        print(f"{mode}: {m['factor']:.2f}x the floor (goal <= {GOAL_FACTOR:.0f}x: {verdict}).")
    agent = row["modes"].get("through the agent")
    if agent is not None and row.get("round_trip_s"):
        # Each step waits for its batch: the round trips are sequential, so their latency alone is a lower bound.
        bound_s = agent["round_trips"] * row["round_trip_s"] / agent["candidates"]
        print(f"Through the agent, one Infer round trip (batch 1) takes {row['round_trip_s'] * us:.0f} us; the "
              f"campaign's {agent['round_trips']} sequential round trips (its steps, and re-runs with no step "
              f"to travel with) cost at least {bound_s * us:.1f} us per candidate, "
              f"{bound_s / row['floor_s']:.2f}x the floor, before any inference or host work.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", nargs="+", default=None,
                        help="pairs (default digits28/int8 and the real pairs when present)")
    parser.add_argument("--seeds", type=int, default=50, help="seeds per campaign (default 50)")
    parser.add_argument("--max-queries", type=int, default=10_000, help="query budget per seed (default 10000)")
    parser.add_argument("--repeat", type=int, default=3, help="alternating rounds per mode (median; default 3)")
    parser.add_argument("--no-agent", action="store_true", help="in process only")
    parser.add_argument("--json-out", type=Path, metavar="FILE", help="also write the rows to FILE as JSON")
    args = parser.parse_args(argv)
    names = args.pairs
    if names is None:
        names = ["digits28/int8"]
        if real_models_dir().is_dir():
            names += ["real:conv_fc_mnist_srq_a8w8", "real:mnist_quantized", "real:partly_quantized_mnist"]
        else:
            print(f"real models: {real_models_dir()} is missing; skipping the real pairs")
    import ai_edge_litert

    print(f"Machine: {machine()}; ai-edge-litert {getattr(ai_edge_litert, '__version__', '?')}, numpy "
          f"{np.__version__}; XNNPACK, 1 thread per model; default DFlare, {args.max_queries} queries per seed, "
          f"rng seed 0; median of {args.repeat} alternating rounds; load average {os.getloadavg()[0]:.1f} "
          "at the start.")
    rows = []
    for name in names:
        rows.append(measure_pair(name, args))
        print_row(rows[-1])
    print(f"\nLoad average at the end: {os.getloadavg()[0]:.1f}.")
    if args.json_out:
        args.json_out.write_text(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
