#!/usr/bin/env python3
"""Mutation cost: the seven operators on one batch, on one thread and split over several.

For each image size, a batch of candidates with the operators in equal shares (the mix DFlare's
uniform choice gives) is mutated by ``mutations.apply`` on the calling thread, then by
``mutations.apply_parallel`` in row chunks over 2..N threads. Both give the same bytes (checked
here). Reported: milliseconds per batch (median of the rounds), microseconds per candidate and the
speed-up. numpy releases the GIL inside its loops, so large images gain from threads while small
ones only pay the hand-off; the cut-over is ``mutations.PARALLEL_MIN_VALUES``.

    python scripts/bench_mutations.py [--rows 32] [--rounds 15] [--threads 2] [--json]
    python scripts/bench_mutations.py --search [--search-size 224] [--search-seeds 32]

``--search`` measures the same split inside a whole DFlare search: a small random-weight CNN
(float32 and int8, made with TensorFlow, the ``repair`` extra) that takes 224x224x3 images, seeds
made by enlarging the digits32rgb fixture seeds, searched with one mutation thread and with the
engine's default. Both runs must find the same inputs with the same queries; the table gives their
wall time and the engine's mutate and inference phases.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from host.memory import reuse_freed_buffers  # noqa: E402
from host.search import mutations  # noqa: E402
from host.search.dflare import DEFAULT  # noqa: E402
from host.search.results import MutationStep  # noqa: E402

#: (H, W, C): the fixtures' sizes, then the usual mobile classifier inputs.
SHAPES: tuple[tuple[int, int, int], ...] = (
    (28, 28, 1), (32, 32, 3), (64, 64, 3), (96, 96, 3), (160, 160, 3), (224, 224, 3))


#: The noise the default search draws (the original code's: sigma 0.32 grey levels, wrap-around).
ORIGINAL_NOISE = not DEFAULT.strong_noise
#: The issue-19 bar: mean mutation cost per 224x224x3 candidate over DFlare's operator mix, one core.
GOAL_224_MS = 0.4


def batch(shape: tuple[int, int, int], rows: int, seed: int = 0) -> tuple[np.ndarray, list]:
    """Random images and one drawn step per row, operators in turn (the default search's noise)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (rows, *shape), dtype=np.uint8)
    steps = [mutations.draw(mutations.OPERATORS[i % len(mutations.OPERATORS)], rng, shape, faithful=ORIGINAL_NOISE)
             for i in range(rows)]
    return images, steps


def per_operator(shape: tuple[int, int, int], rows: int, rounds: int) -> list[dict]:
    """ms per candidate of each operator (each blur kernel apart) on one thread, and the mix's mean.

    The mean weighs operators equally and each blur's kernels equally, as DFlare draws them. The
    process keeps freed buffers for reuse, as the engine does (``host.memory``).
    """
    reuse_freed_buffers()
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (rows, *shape), dtype=np.uint8)
    out = []
    kernels = {"box_blur": mutations.BOX_KERNELS, "gaussian_blur": mutations.GAUSSIAN_KERNELS,
               "median_blur": mutations.MEDIAN_KERNELS}
    for op in mutations.OPERATORS:
        if op in kernels:
            per_kernel = {}
            for k in kernels[op]:
                steps = [MutationStep(op, {"kernel": k})] * rows
                per_kernel[k] = median_ms(lambda steps=steps: mutations.apply(images, steps), rounds) / rows
            out.append({"op": op, "ms": float(np.mean(list(per_kernel.values()))), "kernels": per_kernel})
        else:
            steps = [mutations.draw(op, rng, shape, faithful=ORIGINAL_NOISE) for _ in range(rows)]
            out.append({"op": op, "ms": median_ms(lambda steps=steps: mutations.apply(images, steps), rounds) / rows})
    out.append({"op": "mean over the operator mix", "ms": float(np.mean([r["ms"] for r in out]))})
    return out


def median_ms(run, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def measure(shape: tuple[int, int, int], rows: int, rounds: int, threads: list[int]) -> dict:
    images, steps = batch(shape, rows)
    serial = mutations.apply(images, steps)
    row = {"shape": list(shape), "rows": rows, "values": int(images.size)}
    row["serial_ms"] = median_ms(lambda: mutations.apply(images, steps), rounds)
    row["threads"] = {}
    for n in threads:
        with ThreadPoolExecutor(max_workers=n - 1) as pool:
            # force the split whatever the size, to see where it stops paying
            def run(n=n, pool=pool):
                return mutations.apply_parallel(images, steps, pool, n, min_values=0)

            if run().tobytes() != serial.tobytes():
                raise SystemExit(f"apply_parallel differs from apply on {shape} with {n} threads")
            row["threads"][n] = median_ms(run, rounds)
    return row


def _cnn_pair(size: int, seeds: np.ndarray, workdir: Path) -> tuple[Path, Path]:
    """A small strided CNN taking size x size x 3 images, as float32 and int8 TFLite files."""
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)
    model = tf.keras.Sequential([
        tf.keras.Input((size, size, 3)),
        tf.keras.layers.Conv2D(8, 5, strides=4, activation="relu"),
        tf.keras.layers.Conv2D(16, 3, strides=2, activation="relu"),
        tf.keras.layers.GlobalAveragePooling2D(),
        tf.keras.layers.Dense(10, activation="softmax"),
    ])
    from bench_scaling import tflite_pair  # the same conversion as the model axis of bench_scaling.py

    paths = tflite_pair(model, seeds.astype(np.float32) / 255.0, workdir / f"cnn{size}")
    return paths["float32"], paths["int8"]


def measure_search(size: int, n_seeds: int, budget: int, rounds: int) -> list[dict]:
    """DFlare on ``n_seeds`` enlarged seeds, one mutation thread vs the engine's default, alternated."""
    from host.search import Engine, SeedStatus, searcher_factory
    from host.targets import LocalTarget, ModelSpec
    from host.targets.base import Preprocessing

    x = np.load(ROOT / "tests" / "fixtures" / "seeds" / "digits32rgb.npz")["x"][:n_seeds]
    factor = -(-size // x.shape[1])
    seeds = np.ascontiguousarray(np.repeat(np.repeat(x, factor, 1), factor, 2)[:, :size, :size, :])
    with tempfile.TemporaryDirectory(prefix="bench-mutations-") as tmp:
        original_path, compressed_path = _cnn_pair(size, seeds, Path(tmp))
        target = LocalTarget()
        pre = Preprocessing(std=(255.0,))  # trained on nothing, fed 0..1
        original = target.load(ModelSpec.from_path(original_path, delegate="xnnpack", threads=1, preprocessing=pre))
        compressed = target.load(ModelSpec.from_path(compressed_path, delegate="xnnpack", threads=1,
                                                     preprocessing=pre))
        runs: dict[str, list[dict]] = {"1 thread": [], "default": []}
        for _ in range(rounds):
            for label, threads in (("1 thread", 1), ("default", None)):
                engine = Engine(original, compressed, searcher_factory("dflare"), budget=budget, rng_seed=0,
                                mutation_threads=threads)
                start = time.perf_counter()
                results = [e.result for e in engine.run(seeds) if e.result is not None]
                runs[label].append({
                    "wall_s": time.perf_counter() - start, "queries": engine.total_queries,
                    "triggered": sum(r.status is SeedStatus.triggered for r in results),
                    "mutate_s": engine.statistics.get("mutate_s", 0.0),
                    "infer_s": engine.statistics.get("infer_s", 0.0),
                    "mutation_threads": engine.mutation_threads})
    if len({(r["queries"], r["triggered"]) for rs in runs.values() for r in rs}) != 1:
        raise SystemExit(f"the searches differ with the number of mutation threads: {runs}")
    rows = []
    for label, rs in runs.items():
        median = sorted(rs, key=lambda r: r["wall_s"])[len(rs) // 2]
        rows.append({"mode": label, "size": size, "seeds": n_seeds, "budget": budget,
                     "rounds": [round(r["wall_s"], 2) for r in rs], **median})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=32, help="candidates per batch (default 32)")
    parser.add_argument("--rounds", type=int, default=15, help="timed rounds per point (median; default 15)")
    parser.add_argument("--threads", type=int, nargs="+", default=[2],
                        help="thread counts to split over (default 2)")
    parser.add_argument("--per-operator", action="store_true",
                        help="ms per candidate of each operator on one thread, at --size (default 224)")
    parser.add_argument("--size", type=int, default=224, help="image side for --per-operator (default 224)")
    parser.add_argument("--json", action="store_true", help="print the rows as one JSON list")
    parser.add_argument("--search", action="store_true",
                        help="measure a whole DFlare search on large images instead (needs TensorFlow)")
    parser.add_argument("--search-size", type=int, default=224, help="image side for --search (default 224)")
    parser.add_argument("--search-seeds", type=int, default=32, help="seeds for --search (default 32)")
    parser.add_argument("--search-budget", type=int, default=400, help="queries per seed for --search (default 400)")
    args = parser.parse_args(argv)
    if args.rows < 1 or args.rounds < 1 or min(args.threads) < 2:
        parser.error("--rows and --rounds must be at least 1, --threads at least 2")
    if args.per_operator:
        rows = per_operator((args.size, args.size, 3), min(args.rows, 8), args.rounds)
        print(json.dumps(rows) if args.json else operator_table(rows, args))
        return 0
    if args.search:
        try:
            import tensorflow  # noqa: F401
        except ImportError:
            raise SystemExit("--search makes its models with TensorFlow: pip install -e '.[repair]'") from None
        rows, table = measure_search(args.search_size, args.search_seeds, args.search_budget, rounds=3), search_table
    else:
        rows, table = [measure(shape, args.rows, args.rounds, args.threads) for shape in SHAPES], batch_table
    print(json.dumps(rows) if args.json else table(rows, args))
    return 0


def batch_table(rows: list[dict], args: argparse.Namespace) -> str:
    """Markdown: one line per image size, one thread vs each split."""
    head = " | ".join(f"{n} threads: ms (speed-up)" for n in args.threads)
    lines = [f"{args.rows} candidates per batch, operators in turn; median of {args.rounds} rounds; "
             f"{os.cpu_count()} CPUs; cut-over PARALLEL_MIN_VALUES = {mutations.PARALLEL_MIN_VALUES:,} values.", "",
             f"| image | values per batch | 1 thread: ms per batch | us per candidate | {head} |",
             "|---" * (4 + len(args.threads)) + "|"]
    for r in rows:
        cells = " | ".join(f"{ms:.2f} ({r['serial_ms'] / ms:.2f}x)" for ms in r["threads"].values())
        lines.append(f"| {'x'.join(map(str, r['shape']))} | {r['values']:,} | {r['serial_ms']:.2f} | "
                     f"{1e3 * r['serial_ms'] / r['rows']:.0f} | {cells} |")
    return "\n".join(lines)


def operator_table(rows: list[dict], args: argparse.Namespace) -> str:
    """Markdown: ms per candidate of each operator, and the mix's mean against the goal."""
    lines = [f"{args.size}x{args.size}x3, {min(args.rows, 8)} candidates per call, one thread, the default search's "
             f"noise; median of {args.rounds} rounds; load average {os.getloadavg()[0]:.1f}.", "",
             "| operator | ms per candidate | per kernel |", "|---|---|---|"]
    for r in rows:
        kernels = ", ".join(f"k={k}: {ms:.3f}" for k, ms in r.get("kernels", {}).items())
        lines.append(f"| {r['op']} | {r['ms']:.3f} | {kernels} |")
    mean = rows[-1]["ms"]
    if args.size == 224:
        lines += ["", f"Mean {mean:.3f} ms per candidate (goal <= {GOAL_224_MS} ms: "
                      f"{'met' if mean <= GOAL_224_MS else 'NOT met'})."]
    return "\n".join(lines)


def search_table(rows: list[dict], args: argparse.Namespace) -> str:
    """Markdown: the search with one mutation thread and with the engine's default."""
    lines = [f"DFlare, {rows[0]['seeds']} seeds of {args.search_size}x{args.search_size}x3, {rows[0]['budget']} "
             f"queries per seed, {os.cpu_count()} CPUs; median of 3 alternating rounds.", "",
             "| mutation threads | wall s (rounds) | mutate s | inference s | queries | triggered |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['mode']} ({r['mutation_threads']}) | {r['wall_s']:.2f} "
                     f"({', '.join(map(str, r['rounds']))}) | {r['mutate_s']:.2f} | {r['infer_s']:.2f} | "
                     f"{r['queries']:,} | {r['triggered']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
