#!/usr/bin/env python3
"""Cost growth: time and memory of a DFlare search as seeds, batch size and model size grow.

Three axes (DESIGN.md section 7, "cost growth"), each point measured in a fresh child process so its
peak memory is its own:

    seeds   N seeds searched in lockstep (10, 100, 1000; the 200 fixture seeds repeated, each copy with
            its own random stream), the same budget per seed
    live    the engine's batch: at most L seeds in lockstep (1, 16, 64, 256), 200 seeds; the mean
            batch sent to each model is reported
    model   model size: the fixture models, plus wider random-weight CNNs made with TensorFlow when it
            is installed (the ``repair`` extra); an untrained model costs the same per query

Per point: wall seconds, queries (one image through one model), queries per second, the resident
memory after the models and seeds are loaded (``rss_start``), the peak resident memory of the
whole child (``rss_peak``), and their difference, the search's own growth. All on XNNPACK with one
thread per model, in process (``LocalTarget``); the agent's throughput per batch size is
``bench_agent.py``'s.

    python scripts/bench_scaling.py                  # every axis, Markdown tables
    python scripts/bench_scaling.py --axis seeds --json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from device_agent.runtime import Preprocessing  # noqa: E402
from host.search import Engine, SeedStatus, searcher_factory  # noqa: E402
from host.targets import LocalTarget, ModelSpec  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures"
AXES = ("seeds", "live", "model")
SEED_COUNTS = (10, 100, 1000)
LIVE_SEEDS = (1, 16, 64, 256)
#: Width multipliers of the generated CNNs (conv 8w and 16w filters, dense 64w units).
WIDTHS = (4, 16)


def _proc_status_mib(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def rss_mib() -> float:
    """This process's resident memory now (Linux /proc), else its peak so far."""
    now = _proc_status_mib("VmRSS")
    return peak_rss_mib() if now is None else now


def peak_rss_mib() -> float:
    """This process's peak resident memory.

    VmHWM belongs to this program's address space; ``ru_maxrss`` would do elsewhere, but on Linux it
    survives ``execve`` and so reports the parent's peak when the parent was larger.
    """
    peak = _proc_status_mib("VmHWM")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 if peak is None else peak


def measure_point(point: dict) -> dict:
    """Run one search as ``point`` describes (in this process) and measure it."""
    target = LocalTarget()
    # generated models carry no normalization metadata: they take pixels / std
    pre = Preprocessing(std=(point["std"],)) if "std" in point else None
    original = target.load(ModelSpec.from_path(point["original"], delegate="xnnpack", threads=1, preprocessing=pre))
    compressed = target.load(ModelSpec.from_path(point["compressed"], delegate="xnnpack", threads=1,
                                                 preprocessing=pre))
    x = np.load(point["seeds_file"])["x"]
    seeds = np.resize(x, (point["seeds"], *x.shape[1:]))  # copies of the fixture seeds, in order
    rss_start = rss_mib()
    engine = Engine(original, compressed, searcher_factory("dflare"), budget=point["budget"],
                    rng_seed=0, max_live_seeds=point["max_live_seeds"])
    start = time.perf_counter()
    statuses = [e.result.status for e in engine.run(seeds) if e.result is not None]
    wall_s = time.perf_counter() - start
    candidates = engine.total_queries / 2  # every candidate goes through both models
    return {
        **{k: v for k, v in point.items() if k not in ("original", "compressed", "seeds_file", "std")},
        "wall_s": wall_s,
        "queries": engine.total_queries,
        "queries_per_s": engine.total_queries / wall_s if wall_s else None,
        "triggered": sum(s is SeedStatus.triggered for s in statuses),
        "mean_batch": candidates / engine.batch_calls if engine.batch_calls else None,
        "rss_start_mib": rss_start,
        "rss_peak_mib": (peak := peak_rss_mib()),
        "rss_growth_mib": peak - rss_start,
    }


def run_child(point: dict) -> dict:
    """Measure ``point`` in a fresh interpreter, so peak memory belongs to that point alone."""
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(point)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode != 0:
        raise SystemExit(f"point {point} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def fixture_pair(model: str, variant: str = "int8") -> dict:
    return {"original": str(FIXTURES / "models" / f"{model}-float32.tflite"),
            "compressed": str(FIXTURES / "models" / f"{model}-{variant}.tflite"),
            "seeds_file": str(FIXTURES / "seeds" / f"{model}.npz")}


def generated_pairs(workdir: Path) -> list[tuple[str, dict]]:
    """Wider random-weight CNNs (float32 and int8) for the model axis; none without TensorFlow."""
    try:
        import tensorflow as tf
    except ImportError:
        print("  TensorFlow not installed: the model axis has the fixture models only", file=sys.stderr)
        return []
    x = np.load(FIXTURES / "seeds" / "digits28.npz")["x"].astype(np.float32) / 255.0
    pairs = []
    for width in WIDTHS:
        tf.keras.utils.set_random_seed(width)
        model = tf.keras.Sequential([
            tf.keras.Input((28, 28, 1)),
            tf.keras.layers.Conv2D(8 * width, 3, activation="relu"),
            tf.keras.layers.Conv2D(16 * width, 3, activation="relu"),
            tf.keras.layers.MaxPooling2D(),
            tf.keras.layers.Flatten(),
            tf.keras.layers.Dense(64 * width, activation="relu"),
            tf.keras.layers.Dense(10, activation="softmax"),
        ])
        paths = tflite_pair(model, x[:100], workdir / f"cnn-w{width}")
        # trained on nothing, fed 0..1 like the fixtures (std 255 in the point's preprocessing)
        pairs.append((f"cnn-w{width} ({model.count_params():,} parameters)",
                      {"original": str(paths["float32"]), "compressed": str(paths["int8"]), "std": 255.0,
                       "seeds_file": str(FIXTURES / "seeds" / "digits28.npz")}))
    return pairs


def tflite_pair(model, calibration: np.ndarray, stem: Path) -> dict[str, Path]:
    """Convert a Keras ``model`` to ``{stem}-float32.tflite`` and a full-int8 ``{stem}-int8.tflite``.

    ``calibration``: float32 inputs, one per representative sample of the int8 conversion.
    """
    import tensorflow as tf

    paths = {}
    for variant in ("float32", "int8"):
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        if variant == "int8":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = lambda: ([calibration[i:i + 1]] for i in range(len(calibration)))
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        path = stem.with_name(f"{stem.name}-{variant}.tflite")
        with contextlib.redirect_stdout(sys.stderr):  # the converter prints its SavedModel's signature
            path.write_bytes(converter.convert())
        paths[variant] = path
    return paths


def points(axis: str, budget: int, workdir: Path, generate: bool = True) -> list[dict]:
    pair = fixture_pair("digits28")
    if axis == "seeds":
        return [{"axis": axis, "label": f"{n} seeds", **pair, "seeds": n, "budget": budget,
                 "max_live_seeds": 256} for n in SEED_COUNTS]
    if axis == "live":
        return [{"axis": axis, "label": f"max {n} live seeds", **pair, "seeds": 200, "budget": budget,
                 "max_live_seeds": n} for n in LIVE_SEEDS]
    models = [(f"{m} (fixture)", fixture_pair(m)) for m in ("digits28", "digits28wide", "digits32rgb")]
    out = []
    for label, files in models + (generated_pairs(workdir) if generate else []):
        size = Path(files["original"]).stat().st_size + Path(files["compressed"]).stat().st_size
        out.append({"axis": axis, "label": label, **files, "seeds": 50, "budget": budget, "max_live_seeds": 256,
                    "model_bytes": size})
    return out


def markdown(rows: list[dict]) -> str:
    lines = []
    for axis in AXES:
        group = [r for r in rows if r["axis"] == axis]
        if not group:
            continue
        extra = " | model files (float32 + int8)" if axis == "model" else ""
        lines += [f"**{axis}**", "",
                  f"| point{extra} | seeds | triggered | queries (candidates: half) | wall s | queries / s "
                  "| mean batch | RSS start MiB | RSS peak MiB | growth MiB |",
                  "|---|" + ("---|" if extra else "") + "---|---|---|---|---|---|---|---|---|"]
        for r in group:
            size = f" | {r['model_bytes'] / 1024:.0f} KiB" if extra else ""
            lines.append(f"| {r['label']}{size} | {r['seeds']} | {r['triggered']} | {r['queries']} | {r['wall_s']:.2f} "
                         f"| {r['queries_per_s']:.0f} | {r['mean_batch']:.1f} | {r['rss_start_mib']:.0f} "
                         f"| {r['rss_peak_mib']:.0f} | {r['rss_growth_mib']:.1f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--axis", choices=(*AXES, "all"), default="all", help="what grows (default: every axis)")
    parser.add_argument("--budget", type=int, default=1000, help="queries per seed (default 1000)")
    parser.add_argument("--fixtures-only", action="store_true",
                        help="model axis: the fixture models only (no TensorFlow-generated CNNs)")
    parser.add_argument("--json", action="store_true", help="print the points as one JSON list")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: measure one point, print its JSON
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure_point(json.loads(args.child))))
        return 0
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as tmp:
        for axis in AXES if args.axis == "all" else (args.axis,):
            for point in points(axis, args.budget, Path(tmp), generate=not args.fixtures_only):
                rows.append(run_child(point))
                print(f"  {axis}: {point['label']}: {rows[-1]['wall_s']:.1f} s", file=sys.stderr)
    if args.json:
        print(json.dumps(rows))
    else:
        print(f"Budget {args.budget} queries per seed; DFlare; XNNPACK, 1 thread per model; "
              f"load average {os.getloadavg()[0]:.1f}.\n")
        print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
