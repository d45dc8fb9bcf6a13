#!/usr/bin/env python3
"""Load on one agent: several clients sending unary ``Infer`` batches at once, for a fixed time.

Starts a real agent on loopback, loads one fixture model, and runs ``--clients`` threads, each on
its own gRPC channel, sending batches of ``--batch`` images to the same session for
``--seconds``. It prints the requests answered, the errors (by status code), the latency
percentiles per call, and the resident memory (RSS) of the agent and its workers at the start and
the end, so a leak or a race under load shows up as a number.

    python scripts/agent_load.py                              # 8 clients, batch 16, 60 s
    python scripts/agent_load.py --clients 4 --seconds 10 --json
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "scripts"))

from bench_agent import child_pids  # noqa: E402

from device_agent._gen import agent_pb2, agent_pb2_grpc  # noqa: E402
from host.deploy.loopback import AgentProcess, start_agent  # noqa: E402
from host.targets import ModelSpec  # noqa: E402
from host.targets.remote import RemoteTarget  # noqa: E402

MODELS_DIR = ROOT / "tests" / "fixtures" / "models"
#: Deadline of one call: far above any batch of the fixture models, so a timeout means a hang.
RPC_TIMEOUT_S = 60.0


def rss_bytes(pid: int) -> int:
    """Resident memory of a process from /proc (0 where unreadable)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def memory(agent: AgentProcess) -> dict[str, int]:
    """RSS of the agent process and the sum over its workers, in bytes."""
    return {"agent": rss_bytes(agent.pid), "workers": sum(rss_bytes(p) for p in child_pids(agent.pid))}


def percentile_ms(latencies_s: list[float], q: float) -> float | None:
    return None if not latencies_s else float(np.percentile(latencies_s, q) * 1000)


def run_load(agent: AgentProcess, model: Path, clients: int, batch: int, seconds: float, delegate: str) -> dict:
    """Drive the agent; return requests, errors by code, p50/p99 ms and RSS at start and end."""
    with RemoteTarget(agent.uri, token=agent.token) as target:
        session = target.load(ModelSpec.from_path(model, delegate=delegate))
        target._forget(session)  # stays loaded for the load run; the agent stops it at exit
        shape = (batch, *session.image_shape)
    images = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    request = agent_pb2.InferRequest(session_id=session.session_id, input=agent_pb2.Tensor(
        shape=shape, dtype=agent_pb2.DATA_TYPE_UINT8, data=images.tobytes()))
    metadata = (("authorization", f"Bearer {agent.token}"),) if agent.token else ()
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()
    start_memory = memory(agent)
    stop_at = time.monotonic() + seconds

    def client(index: int) -> None:
        with grpc.insecure_channel(f"127.0.0.1:{agent.port}") as channel:
            stub = agent_pb2_grpc.AgentStub(channel)
            while time.monotonic() < stop_at:
                t0 = time.perf_counter()
                try:
                    stub.Infer(request, timeout=RPC_TIMEOUT_S, metadata=metadata)
                    latencies[index].append(time.perf_counter() - t0)
                except grpc.RpcError as error:
                    with lock:
                        errors[f"{error.code().name}: {(error.details() or '')[:120]}"] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + RPC_TIMEOUT_S)
    every = [x for per_client in latencies for x in per_client]
    return {
        "model": model.name, "delegate": delegate, "clients": clients, "batch": batch, "seconds": seconds,
        "requests": len(every), "errors": sum(errors.values()), "errors_by_kind": dict(errors),
        "p50_ms": percentile_ms(every, 50), "p99_ms": percentile_ms(every, 99),
        "rss_start_bytes": start_memory, "rss_end_bytes": memory(agent),
    }


def print_report(result: dict) -> None:
    mib = 1 << 20
    start, end = result["rss_start_bytes"], result["rss_end_bytes"]
    print(f"{result['model']} on {result['delegate']}: {result['clients']} clients, batch {result['batch']}, "
          f"{result['seconds']:g} s")
    print(f"requests {result['requests']}, errors {result['errors']}")
    for kind, count in sorted(result["errors_by_kind"].items()):
        print(f"  {count:6d}  {kind}")
    if result["p50_ms"] is not None:
        print(f"latency per call: p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms")
    print(f"RSS agent {start['agent'] / mib:.1f} -> {end['agent'] / mib:.1f} MiB, "
          f"workers {start['workers'] / mib:.1f} -> {end['workers'] / mib:.1f} MiB")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="digits28-float32", help="fixture model name (default digits28-float32)")
    parser.add_argument("--delegate", default="xnnpack")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args(argv)
    model = MODELS_DIR / f"{args.model}.tflite"
    with tempfile.TemporaryDirectory(prefix="dflare-load-") as tmp, \
            start_agent(Path(tmp), log_level="WARNING") as agent:
        result = run_load(agent, model, args.clients, args.batch, args.seconds, args.delegate)
    if args.json:
        print(json.dumps(result))
    else:
        print_report(result)
    return 0 if result["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
