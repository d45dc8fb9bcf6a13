#!/usr/bin/env python3
"""Steps a campaign would need under other speculation policies, from its seeds' real verdicts.

    python scripts/bench_speculation.py [--pairs digits28/int8 real:mnist_quantized ...] [--seeds 50]
        [--max-queries 10000]

Through an agent a campaign is a chain of sequential round trips, one per step, and the chain is as
long as its slowest seed needs. This script runs the default DFlare campaign in process once and
records, per seed, the verdict on each candidate its search consumed (kept or rejected, in order;
the last candidate is the triggering one). It then replays those sequences under two policies, in
lockstep over the seeds as the engine runs them, and prints the steps and the candidates evaluated:

* chain (the engine's): a seed proposes ``width`` candidates, each assuming the ones before it
  rejected; the first kept one ends its step; the width doubles after a step with none kept and
  drops to the gap after one; at most ``min(MAX_SPECULATION, SPECULATION_BATCH // live seeds)``.
* tree: a seed proposes the same number of candidates as a tree, each assuming its parent kept or
  rejected, the most likely first (a keep has probability (kept + 1) / (consumed + 2) of the seed's
  verdicts so far); a step consumes the whole path through the tree its verdicts take.

The verdicts are the seeds' own, so the chain's step count is the engine's (within a step or two:
the engine also spends a step on the seeds' first check); the tree's is what the same searches
would need. The per-candidate cost of proposing a tree is not modelled, only counted.
"""

from __future__ import annotations

import argparse
import heapq
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_pairs import load_pair, real_models_dir  # noqa: E402
from bench_search import machine  # noqa: E402

from host.search import Engine  # noqa: E402
from host.search.dflare import DEFAULT, DFlareSearcher  # noqa: E402
from host.search.engine import MAX_SPECULATION, SPECULATION_BATCH  # noqa: E402

DEFAULT_PAIRS = ("digits28/int8", "real:conv_fc_mnist_srq_a8w8", "real:mnist_quantized",
                 "real:partly_quantized_mnist")
#: (candidates per batch, most per seed) of the tree policies printed beside the engine's chain.
TREE_POLICIES = ((SPECULATION_BATCH, MAX_SPECULATION), (256, 32))


class RecordingSearcher(DFlareSearcher):
    """The default DFlare searcher, noting each consumed candidate's verdict (1 kept, 0 rejected)."""

    verdicts: dict[int, list[int]] = {}

    @staticmethod
    def observe_many(searchers, candidate_lists, probs_original, probs_compressed, spans):
        consumed = DFlareSearcher.observe_many(searchers, candidate_lists, probs_original, probs_compressed, spans)
        for searcher, n, (lo, hi) in zip(searchers, consumed, spans):
            if hi > lo and n:
                kept = not searcher.proposal_open  # a kept candidate ends the seed's proposal
                RecordingSearcher.verdicts.setdefault(searcher.seed.index, []).extend([0] * (n - 1) + [int(kept)])
        return consumed


def record(pair_name: str, n_seeds: int, max_queries: int) -> tuple[dict[int, list[int]], dict[int, bool], int]:
    """Each seed's verdict sequence, whether it triggered, and the engine's steps."""
    pair = load_pair(pair_name, n_seeds)
    RecordingSearcher.verdicts = {}
    engine = Engine(pair.original, pair.compressed, lambda seed, rng: RecordingSearcher(seed, rng, DEFAULT),
                    budget=max_queries, rng_seed=0)
    results = [e.result for e in engine.run(pair.seeds, indices=pair.indices) if e.result is not None]
    triggered = {r.seed_index: r.status.value == "triggered" for r in results}
    verdicts = {i: RecordingSearcher.verdicts.get(i, []) for i in triggered if triggered[i]}
    return verdicts, triggered, engine.steps


def tree(keep_probability: float, size: int) -> set[str]:
    """The ``size`` most likely nodes; a node is its path of verdicts ('0' rejected, '1' kept) from the root."""
    nodes: set[str] = set()
    frontier = [(-1.0, "")]
    while frontier and len(nodes) < size:
        negative, path = heapq.heappop(frontier)
        nodes.add(path)
        heapq.heappush(frontier, (negative * (1 - keep_probability), path + "0"))
        heapq.heappush(frontier, (negative * keep_probability, path + "1"))
    return nodes


@dataclass
class _Seed:
    verdicts: list[int]
    position: int = 0
    width: int = 1
    kept: int = 0
    done: bool = False


def _advance(seed: _Seed, nodes: set[str], chain: bool) -> int:
    """Walk the seed's verdicts through the proposed nodes; candidates consumed (the trigger finishes it)."""
    path, consumed = "", 0
    while path in nodes:
        at = seed.position + consumed
        consumed += 1
        if at >= len(seed.verdicts):  # the triggering candidate
            seed.done = True
            return consumed
        path += str(seed.verdicts[at])
        if chain and seed.verdicts[at]:
            break
    return consumed


def replay(verdicts: dict[int, list[int]], policy: str, batch: int, most: int) -> tuple[int, int]:
    """(steps, candidates evaluated) of the triggered seeds' searches under ``policy``, in lockstep."""
    seeds = [_Seed(list(v)) for v in verdicts.values()]
    steps = evaluated = 0
    while any(not s.done for s in seeds):
        live = [s for s in seeds if not s.done]
        cap = max(1, min(most, batch // len(live)))
        steps += 1
        for seed in live:
            if policy == "chain":
                width = min(seed.width, cap)
                nodes = {"0" * i for i in range(width)}
            else:
                nodes = tree((seed.kept + 1) / (seed.position + 2), cap)
            evaluated += len(nodes)
            consumed = _advance(seed, nodes, chain=policy == "chain")
            if seed.done:
                continue
            kept_now = sum(seed.verdicts[seed.position: seed.position + consumed])
            if policy == "chain":
                seed.width = consumed if kept_now else min(2 * seed.width, most)
            seed.kept += kept_now
            seed.position += consumed
    return steps, evaluated


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", nargs="+", default=None, help=f"pairs (default: {' '.join(DEFAULT_PAIRS)})")
    parser.add_argument("--seeds", type=int, default=50, help="seeds per campaign (default 50)")
    parser.add_argument("--max-queries", type=int, default=10_000, help="query budget per seed (default 10000)")
    args = parser.parse_args(argv)
    pairs = list(args.pairs or DEFAULT_PAIRS)
    if not real_models_dir().is_dir():
        skipped = [p for p in pairs if p.startswith("real:")]
        if skipped:
            print(f"The real models are not at {real_models_dir()}: skipping {', '.join(skipped)}.")
        pairs = [p for p in pairs if not p.startswith("real:")]
    print(f"Machine: {machine()}; numpy {np.__version__}. Default DFlare in process, {args.seeds} seeds, "
          f"{args.max_queries} queries per seed, rng seed 0; the verdicts replayed for triggered seeds only.")
    header = " | ".join(f"tree {b}/{m}: steps, evaluated" for b, m in TREE_POLICIES)
    print(f"\n| pair | triggered | kept / consumed | engine steps | chain {SPECULATION_BATCH}/{MAX_SPECULATION}: "
          f"steps, evaluated | {header} |")
    print("|---|---|---|---|---|" + "---|" * len(TREE_POLICIES))
    for name in pairs:
        verdicts, triggered, engine_steps = record(name, args.seeds, args.max_queries)
        kept = sum(sum(v) for v in verdicts.values())
        consumed = sum(len(v) + 1 for v in verdicts.values())
        chain = replay(verdicts, "chain", SPECULATION_BATCH, MAX_SPECULATION)
        trees = [replay(verdicts, "tree", b, m) for b, m in TREE_POLICIES]
        cells = " | ".join(f"{s}, {e:,}" for s, e in trees)
        print(f"| {name} | {sum(triggered.values())}/{len(triggered)} | {kept:,} / {consumed:,} | {engine_steps} | "
              f"{chain[0]}, {chain[1]:,} | {cells} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
