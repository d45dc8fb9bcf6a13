#!/usr/bin/env python3
"""Agent throughput: raw interpreter vs ``Infer`` vs ``InferStream``, in images per second.

For each fixture model and batch size (1, 16, 64, 256) it measures, in one process:
    raw     ModelRunner.infer in this process (preprocess + quantize + invoke + dequantize)
    infer   RemoteSession.infer: one unary Infer call per batch to a real agent on loopback
    stream  RemoteSession.infer_many: InferStream with several batches in flight (one stream carries
            about 0.1 s of work, at least 16 batches)

The agent runs as a subprocess (``dflare-agent serve --port 0``) on this machine, so the agent
paths pay gRPC, the copy into the worker's shared memory and the worker hop; the interpreter work
is identical (same delegate, threads, preprocessing). The three paths are measured in interleaved
rounds so a machine whose load drifts affects them alike; each figure is the median round.

Wall-clock rates on a shared machine move with other people's jobs, so each row also carries the
CPU time spent per batch (over all rounds) by this process (``client``; for ``raw`` that is the
whole work), the agent's servicer process (``agent``) and its worker process (``worker``), read
from /proc (Linux). CPU time does not depend on how busy the machine is, so it shows where an
agent path's overhead goes. The load average is printed before and after.

    python scripts/bench_agent.py                 # table
    python scripts/bench_agent.py --worker-cpus 1 # the agent's workers on CPU 1, everything else on the rest
    python scripts/bench_agent.py --json          # one JSON list of {model, batch, path, images_per_s,
                                                  #   cpu_ms_per_batch: {client, agent, worker}}
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from device_agent.cpu_affinity import parse_cpu_list, pin_agent_beside_workers  # noqa: E402
from host.deploy.loopback import AgentProcess, launch_agent  # noqa: E402
from host.targets import LocalTarget, ModelSpec  # noqa: E402
from host.targets.remote import RemoteTarget  # noqa: E402

MODELS_DIR = ROOT / "tests" / "fixtures" / "models"
SEEDS_DIR = ROOT / "tests" / "fixtures" / "seeds"
BATCH_SIZES = (1, 16, 64, 256)
PATHS = ("raw", "infer", "stream")
#: Interleaved rounds per (model, batch); each path's figure is its median round, so a burst of
#: load from other processes during one round does not decide the result.
ROUNDS = 5
#: Batches per infer_many call in the stream path, at least: a stream's set-up and the pipeline's
#: fill and drain (the worker idles until the first batch arrives and after the last) cost about
#: 2 ms, a fixed cost that steady streaming does not pay.
MIN_STREAM_BATCHES = 16
#: ...and enough batches that one stream runs about this long at the raw rate, so that fixed cost
#: stays under ~2% on small models too (16 batches of 64 of the digits28 models last ~10 ms).
STREAM_SECONDS = 0.1
#: Images per measured call loop at least, so batch 1 is timed over many calls.
MIN_IMAGES_PER_ROUND = 256


_CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_cpu_s(pid: int | None) -> float:
    """User + system CPU seconds of a process (all its threads) from /proc; 0.0 where unreadable."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS_PER_S  # utime, stime (man 5 proc)


def child_pids(pid: int) -> list[int]:
    """The direct children of ``pid`` (the agent's workers), from /proc."""
    children: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                children += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return children


def start_agent(workdir: Path, worker_cpus: str = "") -> AgentProcess:
    """The package's launcher (``host.deploy.loopback``), quiet, with ``--worker-cpus`` when given."""
    return launch_agent(workdir, *(["--worker-cpus", worker_cpus] if worker_cpus else []), log_level="WARNING")


def images_for(model: Path, n: int) -> np.ndarray:
    name = model.name.rsplit("-", 1)[0]
    x = np.load(SEEDS_DIR / f"{name}.npz")["x"]
    return np.resize(x, (n, *x.shape[1:])).copy()


def timed(run: Callable[[], int], seconds: float, pids: dict[str, int | None]) -> tuple[int, float, dict[str, float]]:
    """Call ``run`` (returns images processed) until ``seconds`` and MIN_IMAGES_PER_ROUND have passed.

    Returns:
        Images processed, wall seconds, and CPU seconds spent meanwhile by each process in ``pids``
        (``client`` is this process).
    """
    cpu_before = {name: process_cpu_s(pid) for name, pid in pids.items()}
    images, start = 0, time.perf_counter()
    while True:
        images += run()
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and images >= MIN_IMAGES_PER_ROUND:
            cpu = {name: process_cpu_s(pid) - cpu_before[name] for name, pid in pids.items()}
            return images, elapsed, cpu


def stream_length(local, images: np.ndarray) -> int:
    """Batches per stream: :data:`STREAM_SECONDS` at the raw rate, at least :data:`MIN_STREAM_BATCHES`."""
    local.infer(images)
    start = time.perf_counter()
    for _ in range(3):
        local.infer(images)
    per_batch_s = (time.perf_counter() - start) / 3
    return max(MIN_STREAM_BATCHES, int(STREAM_SECONDS / max(per_batch_s, 1e-6)))


def _runs(local, remote, images: np.ndarray, stream_batches: int) -> dict[str, Callable[[], int]]:
    """One call per path, each returning the number of images it ran."""
    batch = len(images)
    batches = [images] * stream_batches
    return {
        "raw": lambda: (local.infer(images), batch)[1],
        "infer": lambda: (remote.infer(images), batch)[1],
        "stream": lambda: (remote.infer_many(batches), batch * stream_batches)[1],
    }


def bench_model(model: Path, target: RemoteTarget, agent_pid: int, delegate: str, threads: int,
                seconds: float, batch_sizes: tuple[int, ...] = BATCH_SIZES) -> list[dict]:
    spec = ModelSpec.from_path(model, delegate=delegate, threads=threads)
    local = LocalTarget().load(spec)
    remote = target.load(spec)
    workers = child_pids(agent_pid)  # one session is loaded at a time, so one worker
    pids = {"client": os.getpid(), "agent": agent_pid, "worker": workers[0] if len(workers) == 1 else None}
    rows = []
    try:
        for batch in batch_sizes:
            images = images_for(model, batch)
            stream_batches = stream_length(local, images)
            runs = _runs(local, remote, images, stream_batches)
            for run in runs.values():
                run()  # warm up: first resize/allocate, first RPC
            rates: dict[str, list[float]] = {path: [] for path in PATHS}
            # CPU is summed over all rounds (clock ticks are 10 ms, too coarse for one short round).
            cpu_s: dict[str, dict[str, float]] = {path: dict.fromkeys(pids, 0.0) for path in PATHS}
            images_run = dict.fromkeys(PATHS, 0)
            for _ in range(ROUNDS):
                for path in PATHS:
                    n, elapsed, cpu = timed(runs[path], seconds / ROUNDS, pids)
                    rates[path].append(n / elapsed)
                    images_run[path] += n
                    for name, spent_s in cpu.items():
                        cpu_s[path][name] += spent_s
            for path in PATHS:
                rows.append({"model": model.stem, "batch": batch, "path": path,
                             "images_per_s": round(float(np.median(rates[path])), 1),
                             "stream_batches": stream_batches if path == "stream" else None,
                             "cpu_ms_per_batch": {name: round(1000.0 * spent_s * batch / images_run[path], 3)
                                                  for name, spent_s in cpu_s[path].items()}})
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
    by_key: dict[tuple[str, int], dict[str, dict]] = {}
    for row in rows:
        by_key.setdefault((row["model"], row["batch"]), {})[row["path"]] = row
    print("| model | batch | raw img/s | Infer img/s (% of raw) | InferStream img/s (% of raw) |")
    print("|---|---:|---:|---:|---:|")
    for (model, batch), paths in by_key.items():
        raw, infer, stream = (paths[p]["images_per_s"] for p in PATHS)
        print(f"| {model} | {batch} | {raw:,.0f} | {infer:,.0f} ({100 * infer / raw:.0f}%) | "
              f"{stream:,.0f} ({100 * stream / raw:.0f}%) |")
    print("\nCPU ms per batch (client + agent + worker = total; raw is the client alone)\n")
    print("| model | batch | raw | Infer | InferStream |")
    print("|---|---:|---:|---:|---:|")
    for (model, batch), paths in by_key.items():
        cells = [f"{paths['raw']['cpu_ms_per_batch']['client']:.2f}"]
        for path in ("infer", "stream"):
            cpu = paths[path]["cpu_ms_per_batch"]
            cells.append(f"{cpu['client']:.2f} + {cpu['agent']:.2f} + {cpu['worker']:.2f} = "
                         f"{sum(cpu.values()):.2f}")
        print(f"| {model} | {batch} | {' | '.join(cells)} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="", help="comma-separated model stems (default: every fixture model)")
    parser.add_argument("--delegate", default="xnnpack", help="delegate for all paths (default xnnpack)")
    parser.add_argument("--threads", type=int, default=1,
                        help="interpreter threads for all paths (default 1: the raw path is single-threaded too)")
    parser.add_argument("--seconds", type=float, default=1.5, help="measured seconds per path per batch size")
    parser.add_argument("--batches", default=",".join(map(str, BATCH_SIZES)),
                        help="comma-separated batch sizes (default %(default)s)")
    parser.add_argument("--worker-cpus", default="", metavar="LIST",
                        help="start the agent with --worker-cpus LIST and run this process (client and raw path) "
                             "on the other CPUs, as if the host were another machine (Linux)")
    parser.add_argument("--json", action="store_true", help="print one JSON list of rows")
    args = parser.parse_args(argv)
    models = sorted(MODELS_DIR.glob("*.tflite"))
    if args.models:
        wanted = set(args.models.split(","))
        models = [m for m in models if m.stem in wanted]
    if not models:
        raise SystemExit(f"no fixture models in {MODELS_DIR} (make fixtures)")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-agent-") as tmp:
        agent = start_agent(Path(tmp), args.worker_cpus)
        process, uri, token = agent.process, agent.uri, agent.token
        if args.worker_cpus:  # after the agent started: it must still see the workers' CPUs
            pin_agent_beside_workers(parse_cpu_list(args.worker_cpus))
        try:
            with RemoteTarget(uri, token=token) as target:
                rows = []
                for model in models:
                    rows += bench_model(model, target, process.pid, args.delegate, args.threads, args.seconds,
                                        tuple(int(b) for b in args.batches.split(",")))
                    if not args.json:
                        print(f"measured {model.stem}", file=sys.stderr)
        finally:
            agent.stop()
    if args.json:
        print(json.dumps(rows))
    else:
        load_after = os.getloadavg()
        pinning = f"; workers on CPUs {args.worker_cpus}, agent and client on the others" if args.worker_cpus else ""
        print(f"machine: {machine()}; delegate {args.delegate}, threads {args.threads}{pinning}; load average (1 min) "
              f"{load_before[0]:.1f} before, {load_after[0]:.1f} after\n")
        print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
