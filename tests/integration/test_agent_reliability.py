"""Reliability of the agent under load, faults and bad input (issue 23), on loopback only.

Every test drives a real ``dflare-agent`` process (or a real worker process) with real clients,
signals and files; time bounds are liveness checks with generous margins, never measurements.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from device_agent._gen import agent_pb2, agent_pb2_grpc
from device_agent.worker import LoadSpec, Worker
from host.targets import ModelSpec
from host.targets.remote import RemoteTarget
from tests.agent_support import AgentProcess

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
MODEL = FIXTURES / "models" / "digits28-float32.tflite"
#: The load of issue 23: 8 clients sending unary Infer batches of 16 images at once.
CLIENTS = 8
BATCH = 16
#: Long enough for tens of thousands of calls, where the race hit about 1 in 1,200 calls.
LOAD_S = 15.0
#: One-image batches through a worker alone: the race fired thousands of times in this long.
WORKER_LOAD_S = 6.0
#: Deadline of a single call in these tests: far above any batch on a loaded 2-core machine.
RPC_TIMEOUT_S = 60.0

pytestmark = pytest.mark.skipif(not MODEL.exists(), reason="fixture models missing (make fixtures)")


def _images(count: int = BATCH) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (count, 28, 28, 1), dtype=np.uint8)


def _stub(agent: AgentProcess) -> tuple[grpc.Channel, agent_pb2_grpc.AgentStub, tuple]:
    channel = grpc.insecure_channel(f"127.0.0.1:{agent.port}")
    metadata = (("authorization", f"Bearer {agent.token}"),) if agent.token else ()
    return channel, agent_pb2_grpc.AgentStub(channel), metadata


def _load(agent: AgentProcess, delegate: str = "xnnpack") -> str:
    """Upload and load the fixture model; return the session id."""
    with RemoteTarget(agent.uri, token=agent.token) as target:
        session = target.load(ModelSpec.from_path(MODEL, delegate=delegate))
        target._forget(session)  # keep the session loaded after the target closes
        return session.session_id


def _infer_request(session_id: str, images: np.ndarray, request_id: int = 0) -> agent_pb2.InferRequest:
    return agent_pb2.InferRequest(session_id=session_id, request_id=request_id, input=agent_pb2.Tensor(
        shape=images.shape, dtype=agent_pb2.DATA_TYPE_UINT8, data=images.tobytes()))


def _hammer(call, duration_s: float, clients: int = CLIENTS) -> tuple[int, list[str]]:
    """Run ``call()`` from ``clients`` threads for ``duration_s``; return (calls, error descriptions)."""
    stop_at = time.monotonic() + duration_s
    counts = [0] * clients
    errors: list[str] = []

    def run(index: int) -> None:
        while time.monotonic() < stop_at:
            try:
                call(index)
                counts[index] += 1
            except Exception as exc:  # noqa: BLE001 - every failure is what the test counts
                detail = exc.details() if isinstance(exc, grpc.RpcError) else exc
                errors.append(f"{type(exc).__name__}: {detail}")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(duration_s + RPC_TIMEOUT_S)
    return sum(counts), errors


# -- 1. concurrent unary Infer ---------------------------------------------------------------------
def test_worker_serves_eight_threads_without_a_queue_race() -> None:
    """Eight threads submitting one-image batches to one worker: all answered (the slot/queue race is gone)."""
    worker = Worker("race", BATCH * 28 * 28)
    worker.start()
    try:
        worker.load(LoadSpec(str(MODEL), "xnnpack", None, {"mean": [0.0], "std": [255.0]}, (), {}))
        data = _images(1).tobytes()
        calls, errors = _hammer(lambda _i: worker.infer(data, (1, 28, 28, 1), "uint8"), WORKER_LOAD_S)
    finally:
        worker.close()
    assert errors == []
    assert calls > CLIENTS


def test_eight_unary_clients_get_no_errors(agent: AgentProcess) -> None:
    """8 clients, each on its own channel, batch 16, unary Infer on one session: 0 errors."""
    session_id = _load(agent)
    request = _infer_request(session_id, _images())
    channels = [_stub(agent) for _ in range(CLIENTS)]
    reference = channels[0][1].Infer(request, timeout=RPC_TIMEOUT_S, metadata=channels[0][2]).outputs[0].data

    def call(index: int) -> None:
        _, stub, metadata = channels[index]
        response = stub.Infer(request, timeout=RPC_TIMEOUT_S, metadata=metadata)
        assert response.outputs[0].data == reference

    try:
        calls, errors = _hammer(call, LOAD_S)
    finally:
        for channel, _, _ in channels:
            channel.close()
    assert errors == []
    assert calls > CLIENTS
