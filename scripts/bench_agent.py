#!/usr/bin/env python3
"""Agent throughput: raw interpreter vs ``Infer`` vs ``InferStream``, in images per second.

For each fixture model and batch size (1, 16, 64, 256) it measures, in one process:
    raw     ModelRunner.infer in this process (preprocess + quantize + invoke + dequantize)
    infer   RemoteSession.infer: one unary Infer call per batch to a real agent on loopback
    stream  RemoteSession.infer_many: InferStream with several batches in flight

The agent runs as a subprocess (``dflare-agent serve --port 0``) on this machine, so the agent
paths pay gRPC, the copy into the worker's shared memory and the worker hop; the interpreter work
is identical (same delegate, threads, preprocessing). The three paths are measured in interleaved
rounds so a machine whose load drifts affects them alike; each figure is the median round.

    python scripts/bench_agent.py                 # table
    python scripts/bench_agent.py --json          # one JSON list of {model, batch, path, images_per_s}
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from host.targets import LocalTarget, ModelSpec  # noqa: E402
from host.targets.remote import RemoteTarget  # noqa: E402

MODELS_DIR = ROOT / "tests" / "fixtures" / "models"
SEEDS_DIR = ROOT / "tests" / "fixtures" / "seeds"
BATCH_SIZES = (1, 16, 64, 256)
PATHS = ("raw", "infer", "stream")
#: Interleaved rounds per (model, batch); each path's figure is its median round, so a burst of
#: load from other processes during one round does not decide the result.
ROUNDS = 5
#: Batches per infer_many call in the stream path: long enough that stream start-up is noise.
STREAM_BATCHES = 16
#: Images per measured call loop at least, so batch 1 is timed over many calls.
MIN_IMAGES_PER_ROUND = 256
#: Agent start-up (imports numpy, grpc, the runtime) on a busy machine.
AGENT_STARTUP_TIMEOUT_S = 60.0


def start_agent(workdir: Path) -> tuple[subprocess.Popen, str, str]:
    token = secrets.token_hex(16)
    (workdir / "token").write_text(token)
    log = open(workdir / "agent.log", "wb")  # noqa: SIM115 - closed with the process
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "device_agent", "serve", "--port", "0", "--token-file", str(workdir / "token"),
         "--cache-dir", str(workdir / "cache"), "--log-level", "WARNING"],
        stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + AGENT_STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        match = re.search(r"listening on (\S+):(\d+)", (workdir / "agent.log").read_text())
        if match:
            return process, f"grpc://{match.group(1)}:{match.group(2)}", token
        if process.poll() is not None:
            break
        time.sleep(0.05)
    process.kill()
    raise SystemExit(f"the agent did not start:\n{(workdir / 'agent.log').read_text()}")


def images_for(model: Path, n: int) -> np.ndarray:
    name = model.name.rsplit("-", 1)[0]
    x = np.load(SEEDS_DIR / f"{name}.npz")["x"]
    return np.resize(x, (n, *x.shape[1:])).copy()


def timed(run: Callable[[], int], seconds: float) -> tuple[int, float]:
    """Call ``run`` (returns images processed) until ``seconds`` and MIN_IMAGES_PER_ROUND have passed."""
    images, start = 0, time.perf_counter()
    while True:
        images += run()
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and images >= MIN_IMAGES_PER_ROUND:
            return images, elapsed


def _runs(local, remote, images: np.ndarray) -> dict[str, Callable[[], int]]:
    """One call per path, each returning the number of images it ran."""
    batch = len(images)
    stream_batches = [images] * STREAM_BATCHES
    return {
        "raw": lambda: (local.infer(images), batch)[1],
        "infer": lambda: (remote.infer(images), batch)[1],
        "stream": lambda: (remote.infer_many(stream_batches), batch * STREAM_BATCHES)[1],
    }


def bench_model(model: Path, target: RemoteTarget, delegate: str, threads: int, seconds: float) -> list[dict]:
    spec = ModelSpec.from_path(model, delegate=delegate, threads=threads)
    local = LocalTarget().load(spec)
    remote = target.load(spec)
    rows = []
    try:
        for batch in BATCH_SIZES:
            images = images_for(model, batch)
            runs = _runs(local, remote, images)
            for run in runs.values():
                run()  # warm up: first resize/allocate, first RPC
            rates: dict[str, list[float]] = {path: [] for path in PATHS}
            for _ in range(ROUNDS):
                for path in PATHS:
                    n, elapsed = timed(runs[path], seconds / ROUNDS)
                    rates[path].append(n / elapsed)
            for path in PATHS:
                rows.append({"model": model.stem, "batch": batch, "path": path,
                             "images_per_s": round(float(np.median(rates[path])), 1)})
    finally:
        remote.close()
    return rows


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}, Python " \
           f"{platform.python_version()}"


def print_table(rows: list[dict]) -> None:
    by_key: dict[tuple[str, int], dict[str, float]] = {}
    for row in rows:
        by_key.setdefault((row["model"], row["batch"]), {})[row["path"]] = row["images_per_s"]
    print("| model | batch | raw img/s | Infer img/s (% of raw) | InferStream img/s (% of raw) |")
    print("|---|---:|---:|---:|---:|")
    for (model, batch), paths in by_key.items():
        raw = paths["raw"]
        print(f"| {model} | {batch} | {raw:,.0f} | {paths['infer']:,.0f} ({100 * paths['infer'] / raw:.0f}%) | "
              f"{paths['stream']:,.0f} ({100 * paths['stream'] / raw:.0f}%) |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="", help="comma-separated model stems (default: every fixture model)")
    parser.add_argument("--delegate", default="xnnpack", help="delegate for all paths (default xnnpack)")
    parser.add_argument("--threads", type=int, default=1,
                        help="interpreter threads for all paths (default 1: the raw path is single-threaded too)")
    parser.add_argument("--seconds", type=float, default=1.5, help="measured seconds per path per batch size")
    parser.add_argument("--json", action="store_true", help="print one JSON list of rows")
    args = parser.parse_args(argv)
    models = sorted(MODELS_DIR.glob("*.tflite"))
    if args.models:
        wanted = set(args.models.split(","))
        models = [m for m in models if m.stem in wanted]
    if not models:
        raise SystemExit(f"no fixture models in {MODELS_DIR} (make fixtures)")
    with tempfile.TemporaryDirectory(prefix="bench-agent-") as tmp:
        process, uri, token = start_agent(Path(tmp))
        try:
            with RemoteTarget(uri, token=token) as target:
                rows = []
                for model in models:
                    rows += bench_model(model, target, args.delegate, args.threads, args.seconds)
                    if not args.json:
                        print(f"measured {model.stem}", file=sys.stderr)
        finally:
            process.terminate()
            process.wait(30)
    if args.json:
        print(json.dumps(rows))
    else:
        print(f"machine: {machine()}; delegate {args.delegate}, threads {args.threads}\n")
        print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
