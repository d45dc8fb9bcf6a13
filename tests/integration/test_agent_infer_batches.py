"""InferBatches (protocol 1.2): a few batches in one unary call, each its own invocation.

Raw gRPC stubs check the wire contract (order, ids, errors naming the batch); RemoteTarget checks
that ``infer_many`` takes one round trip on a 1.2 agent and the stream otherwise.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest

from device_agent._gen import agent_pb2, agent_pb2_grpc
from device_agent.server import MAX_BATCHES_PER_CALL
from host.targets import LocalTarget, ModelSpec
from host.targets.remote import RemoteTarget

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
MODEL = FIXTURES / "models" / "digits28-int8.tflite"
SEEDS = FIXTURES / "seeds" / "digits28.npz"
RPC_TIMEOUT_S = 60

pytestmark = pytest.mark.skipif(not MODEL.exists(), reason="fixture models missing (make fixtures)")


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.load(SEEDS)["x"][:40]


@pytest.fixture(scope="module")
def stub(agent):
    with grpc.insecure_channel(f"127.0.0.1:{agent.port}") as channel:
        yield agent_pb2_grpc.AgentStub(channel)


@pytest.fixture(scope="module")
def auth(agent):
    return (("authorization", f"Bearer {agent.token}"),)


@pytest.fixture(scope="module")
def session_id(agent) -> str:
    """The int8 model loaded on the agent (RemoteTarget uploads it), kept for the module."""
    target = RemoteTarget(agent.uri, token=agent.token)
    return target.load(ModelSpec.from_path(MODEL, delegate="xnnpack")).session_id


def _tensor(batch: np.ndarray) -> agent_pb2.Tensor:
    return agent_pb2.Tensor(shape=batch.shape, dtype=agent_pb2.DATA_TYPE_UINT8, data=batch.tobytes())


def _status(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def test_each_batch_is_answered_in_order_as_its_own_infer_would_be(stub, auth, session_id, images):
    batches = [images[:16], images[16:17], images[16:17], images[20:40]]
    response = stub.InferBatches(agent_pb2.InferBatchesRequest(session_id=session_id,
                                                               inputs=[_tensor(b) for b in batches]),
                                 metadata=auth, timeout=RPC_TIMEOUT_S)
    assert [r.request_id for r in response.results] == [0, 1, 2, 3]
    for batch, result in zip(batches, response.results):
        alone = stub.Infer(agent_pb2.InferRequest(session_id=session_id, input=_tensor(batch)), metadata=auth,
                           timeout=RPC_TIMEOUT_S)
        assert [tuple(t.shape) for t in result.outputs] == [tuple(t.shape) for t in alone.outputs]
        assert [t.data for t in result.outputs] == [t.data for t in alone.outputs]
        assert result.invoke_latency_us > 0


def test_bad_requests_name_the_problem_and_the_batch(stub, auth, session_id, images):
    def call(inputs):
        return lambda: stub.InferBatches(agent_pb2.InferBatchesRequest(session_id=session_id, inputs=inputs),
                                         metadata=auth, timeout=RPC_TIMEOUT_S)

    code, details = _status(call([]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "without inputs" in details
    code, details = _status(call([_tensor(images[:1])] * (MAX_BATCHES_PER_CALL + 1)))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"over this agent's limit of {MAX_BATCHES_PER_CALL} per call" in details and "InferStream" in details
    wrong = agent_pb2.Tensor(shape=(1, 27, 28, 1), dtype=agent_pb2.DATA_TYPE_UINT8, data=bytes(27 * 28))
    code, details = _status(call([_tensor(images[:2]), wrong, _tensor(images[:1])]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "InferBatches input 1 of 3" in details
    # the agent still serves the session
    ok = stub.InferBatches(agent_pb2.InferBatchesRequest(session_id=session_id, inputs=[_tensor(images[:3])] * 2),
                           metadata=auth, timeout=RPC_TIMEOUT_S)
    assert len(ok.results) == 2


class _Calls:
    """Records which RPC each remote call used."""

    def __init__(self, target: RemoteTarget, monkeypatch: pytest.MonkeyPatch) -> None:
        self.methods: list[str] = []
        unary, stream = target._invoke, target._invoke_stream
        monkeypatch.setattr(target, "_invoke", lambda method, *a, **k: (self.methods.append(method),
                                                                         unary(method, *a, **k))[1])
        monkeypatch.setattr(target, "_invoke_stream", lambda method, *a, **k: (self.methods.append(method),
                                                                               stream(method, *a, **k))[1])


def _expected(batches: list[np.ndarray]) -> list[bytes]:
    local = LocalTarget().load(ModelSpec.from_path(MODEL, delegate="xnnpack"))
    return [local.infer(b).tobytes() for b in batches]


def test_infer_many_takes_one_round_trip_on_a_1_2_agent(agent, images, monkeypatch):
    with RemoteTarget(agent.uri, token=agent.token) as target:
        assert target.device_info_message().max_batches_per_call == MAX_BATCHES_PER_CALL  # advertised
        session = target.load(ModelSpec.from_path(MODEL, delegate="xnnpack"))
        batches = [images[:16], images[3:4], images[3:4], images[3:4]]
        calls = _Calls(target, monkeypatch)
        got = session.infer_many(batches)
        assert calls.methods == ["InferBatches"]
        assert [g.tobytes() for g in got] == _expected(batches)


def test_an_agent_older_than_1_2_and_series_over_its_limits_go_on_the_stream(agent, images, monkeypatch):
    batches = [images[:16], images[3:4], images[3:4]]
    with RemoteTarget(agent.uri, token=agent.token) as target:
        session = target.load(ModelSpec.from_path(MODEL, delegate="xnnpack"))
        old = agent_pb2.DeviceInfo()
        old.CopyFrom(target.device_info_message())
        old.protocol_minor = 1
        monkeypatch.setattr(target, "_device_info", old)
        calls = _Calls(target, monkeypatch)
        assert [g.tobytes() for g in session.infer_many(batches)] == _expected(batches)
        assert calls.methods == ["InferStream"]
        # a 1.2 agent advertising fewer batches per call than there are
        fewer = agent_pb2.DeviceInfo()
        fewer.CopyFrom(target.device_info_message())
        fewer.protocol_minor, fewer.max_batches_per_call = 2, len(batches) - 1
        monkeypatch.setattr(target, "_device_info", fewer)
        assert [g.tobytes() for g in session.infer_many(batches)] == _expected(batches)
        assert calls.methods == ["InferStream", "InferStream"]
    # the host's own message limit: 40 images of 784 bytes do not fit in one 96 KiB message with its headroom
    with RemoteTarget(agent.uri, token=agent.token, max_message_bytes=96 << 10) as target:
        session = target.load(ModelSpec.from_path(MODEL, delegate="xnnpack"))
        calls = _Calls(target, monkeypatch)
        big = [images[:40]] * 3
        assert [g.tobytes() for g in session.infer_many(big)] == _expected(big)
        assert calls.methods == ["InferStream"]

