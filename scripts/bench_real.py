#!/usr/bin/env python3
"""DFlare on real models: the default search vs the original code (`dflare-faithful`) and each departure.

One run, the same seeds for every variant (the first N test images both models classify correctly):

    python scripts/bench_real.py [--pairs real:mnist_quantized digits28/int8 ...] [--seeds 100]
        [--seed 0 1 2] [--max-queries 10000] [--no-ablations] [--json-out FILE]

Pairs: the third-party MNIST models of ``../shared/real-models`` (``real:<variant>``; skipped, with a
line saying so, when the folder is missing) and the fixture pairs (``<model>/<variant>``). Variants:

* ``dflare`` (the default) and ``dflare-faithful`` (the original code, bugs included);
* ``faithful +X``: the original with one departure X switched on (``host.search.dflare.DEPARTURES``);
* ``dflare -X`` (or ``+X`` for one the default leaves out): the default with X switched back;
* ``dflare-no-mh``, the paper's ablation of MH (``dflare -drop_novelty`` is its novelty fitness).

Per pair and variant, pooled over the rng seeds: success (triggered / searched seeds), candidates
per trigger (mean, median, p90, max; a candidate is one image tried on both models, the unit of the
paper and of the original code), queries (one image through one model: twice the candidates), and
the campaign wall-clock in process. Each pair ends with the verdict of issue 17: the default must
trigger on at least as many seeds as faithful with at most its mean and p90 candidates per trigger.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_pairs import load_pair, pair_names, real_models_dir  # noqa: E402
from bench_search import machine  # noqa: E402

from host.figures import figures  # noqa: E402
from host.search import Engine  # noqa: E402
from host.search.dflare import DEFAULT, DEPARTURES, ORIGINAL, DFlareConfig, DFlareSearcher  # noqa: E402

#: Per-seed budget: 5,000 candidates (the original code's budget is 240 s per seed).
DEFAULT_MAX_QUERIES = 10_000


def variants(ablations: bool = True) -> dict[str, DFlareConfig]:
    """The variants compared, by name, in table order."""
    out = {"dflare": DEFAULT, "dflare-faithful": ORIGINAL}
    if not ablations:
        return out
    for name in DEPARTURES:
        out[f"faithful +{name}"] = ORIGINAL.with_departure(name, True)
    for name in DEPARTURES:
        on = name in DEFAULT.departures()
        out[f"dflare {'-' if on else '+'}{name}"] = DEFAULT.with_departure(name, not on)
    out["dflare-no-mh"] = replace(DEFAULT, use_mh=False)
    return out


def measure(pair, name: str, config: DFlareConfig, rng_seeds: list[int], max_queries: int) -> dict:
    """Run one variant on a pair under each rng seed; one row of pooled figures."""
    results, wall_s = [], 0.0
    for rng_seed in rng_seeds:
        engine = Engine(pair.original, pair.compressed, partial(DFlareSearcher, config=config), algo=name,
                        budget=max_queries, rng_seed=rng_seed)
        start = time.perf_counter()
        results += [e.result for e in engine.run(pair.seeds, indices=pair.indices) if e.result is not None]
        wall_s += time.perf_counter() - start
    fig = figures(results)
    failed = sorted(r.seed_index for r in results if r.status.value != "triggered")
    return {"pair": pair.name, "kind": pair.kind, "variant": name, "departures": list(config.departures()),
            **fig.to_dict(), "wall_s": wall_s, "failed_seeds": failed,
            "rng_seeds": rng_seeds, "max_queries": max_queries}


def verdict(default: dict, faithful: dict) -> tuple[bool, str]:
    """Issue 17's bar: default success >= faithful's, mean and p90 candidates per trigger <= faithful's."""
    checks = [("success", default["triggered"] >= faithful["triggered"] and
               default["success_rate"] >= faithful["success_rate"]),
              ("mean", _le(default["candidates_per_trigger"], faithful["candidates_per_trigger"])),
              ("p90", _le(default["p90_candidates_per_trigger"], faithful["p90_candidates_per_trigger"]))]
    failed = [name for name, ok in checks if not ok]
    return not failed, "met" if not failed else "NOT met (" + ", ".join(failed) + ")"


def _le(a: float | None, b: float | None) -> bool:
    if b is None:
        return True
    return a is not None and a <= b


def _fmt(value, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def table(rows: list[dict]) -> str:
    """A Markdown table: one row per variant."""
    lines = ["| variant | success | candidates / trigger: mean | median | p90 | max | queries | wall-clock s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {100 * r['success_rate']:.1f}% ({r['triggered']}/{r['seeds']}) | "
                     f"{_fmt(r['candidates_per_trigger'])} | {_fmt(r['median_candidates_per_trigger'])} | "
                     f"{_fmt(r['p90_candidates_per_trigger'])} | {_fmt(r['max_candidates_per_trigger'])} | "
                     f"{r['total_queries']} | {r['wall_s']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", nargs="+", default=None,
                        help="pairs to run (default: the real ones when present, then every fixture pair)")
    parser.add_argument("--seeds", type=int, default=100, help="seeds per pair (default 100)")
    parser.add_argument("--seed", type=int, nargs="+", default=[0, 1, 2], help="rng seeds, pooled (default 0 1 2)")
    parser.add_argument("--max-queries", type=int, default=DEFAULT_MAX_QUERIES,
                        help=f"query budget per seed (default {DEFAULT_MAX_QUERIES}: 5,000 candidates)")
    parser.add_argument("--variants", nargs="+", default=None, help="variant names to run (default: all)")
    parser.add_argument("--no-ablations", action="store_true", help="only dflare and dflare-faithful")
    parser.add_argument("--json-out", type=Path, metavar="FILE", help="also write every row to FILE as JSON")
    args = parser.parse_args(argv)

    if not real_models_dir().is_dir():
        print(f"real models: {real_models_dir()} is missing; skipping the real pairs "
              "(set DFLARE_REAL_MODELS to their folder)")
    names = args.pairs or pair_names()
    chosen = variants(not args.no_ablations)
    if args.variants:
        unknown = sorted(set(args.variants) - set(chosen))
        if unknown:
            raise SystemExit(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(chosen)}")
        chosen = {k: v for k, v in chosen.items() if k in args.variants}
    import ai_edge_litert

    print(f"Machine: {machine()}; ai-edge-litert {getattr(ai_edge_litert, '__version__', '?')}, "
          f"numpy {np.__version__}; delegate xnnpack, 1 thread per model; {args.seeds} seeds per pair, "
          f"rng seeds {', '.join(map(str, args.seed))}, {args.max_queries} queries "
          f"({args.max_queries // 2} candidates) per seed; load average at the start {os.getloadavg()[0]:.1f}.")
    all_rows, verdicts = [], []
    for name in names:
        if name.startswith("real:") and not real_models_dir().is_dir():
            continue
        pair = load_pair(name, args.seeds)
        rows = []
        for variant, config in chosen.items():
            rows.append(measure(pair, variant, config, args.seed, args.max_queries))
            print(f"  {name} {variant}: {rows[-1]['triggered']}/{rows[-1]['seeds']}, "
                  f"{_fmt(rows[-1]['candidates_per_trigger'])} candidates per trigger, "
                  f"{rows[-1]['wall_s']:.1f} s", file=sys.stderr, flush=True)
        all_rows += rows
        print(f"\n### {name}\n")
        print(table(rows))
        by_variant = {r["variant"]: r for r in rows}
        if "dflare" in by_variant and "dflare-faithful" in by_variant:
            ok, text = verdict(by_variant["dflare"], by_variant["dflare-faithful"])
            verdicts.append((name, ok))
            print(f"\nDefault vs faithful on {name}: {text}.")
        if args.json_out:  # after every pair, so a long run killed halfway keeps what it measured
            args.json_out.write_text(json.dumps(all_rows))
    if verdicts:
        met = [n for n, ok in verdicts if ok]
        print(f"\nDefault at least as effective as faithful on {len(met)} of {len(verdicts)} pairs"
              + ("." if len(met) == len(verdicts) else f"; not on {', '.join(n for n, ok in verdicts if not ok)}."))
        print(f"Load average at the end: {os.getloadavg()[0]:.1f}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
