"""Every bad request gets its status code and a message a person can act on; the agent keeps serving.

Raw gRPC stubs check the wire contract (status codes); RemoteTarget checks the host-side
translation into host.errors. The last test proves the agent still serves correctly afterwards.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from device_agent._gen import agent_pb2, agent_pb2_grpc
from host.errors import (
    AuthenticationError,
    DelegateUnavailableError,
    InvalidRequestError,
    ModelError,
)
from host.targets import LocalTarget, ModelSpec
from host.targets.remote import RemoteTarget
from tests.agent_support import ROOT

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
MODEL = FIXTURES / "models" / "digits28-int8.tflite"
SEEDS = FIXTURES / "seeds" / "digits28.npz"
MAX_MESSAGE_BYTES = 1 << 20
MAX_BATCH_BYTES = 256 << 10
RPC_TIMEOUT_S = 60

pytestmark = [
    pytest.mark.skipif(not MODEL.exists(), reason="fixture models missing (make fixtures)"),
    pytest.mark.parametrize("agent", [["--max-message-bytes", str(MAX_MESSAGE_BYTES),
                                       "--max-batch-bytes", str(MAX_BATCH_BYTES)]], indirect=True),
]


@pytest.fixture(scope="module")
def channel(agent):
    with grpc.insecure_channel(f"127.0.0.1:{agent.port}", options=[
            ("grpc.max_send_message_length", 8 * MAX_MESSAGE_BYTES)]) as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel):
    return agent_pb2_grpc.AgentStub(channel)


@pytest.fixture(scope="module")
def auth(agent):
    return (("authorization", f"Bearer {agent.token}"),)


@pytest.fixture(scope="module")
def content() -> bytes:
    return MODEL.read_bytes()


@pytest.fixture(scope="module")
def session_id(stub, auth, content) -> str:
    """A loaded int8 model (input int8, 28x28x1)."""
    _put(stub, auth, content)
    response = stub.LoadModel(agent_pb2.LoadModelRequest(sha256=hashlib.sha256(content).hexdigest(), name="m"),
                              metadata=auth, timeout=RPC_TIMEOUT_S)
    return response.session_id


def _put(stub, auth, data: bytes, sha256: str | None = None, total_bytes: int | None = None):
    sha256 = sha256 or hashlib.sha256(data).hexdigest()
    total = len(data) if total_bytes is None else total_bytes
    chunks = [agent_pb2.PutModelChunk(sha256=sha256, total_bytes=total, data=data[:4096])]
    chunks += [agent_pb2.PutModelChunk(data=data[i: i + 4096]) for i in range(4096, len(data), 4096)]
    return stub.PutModel(iter(chunks), metadata=auth, timeout=RPC_TIMEOUT_S)


def _status(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def _infer(stub, auth, session_id, data: bytes, shape, dtype=agent_pb2.DATA_TYPE_UINT8):
    request = agent_pb2.InferRequest(session_id=session_id,
                                     input=agent_pb2.Tensor(shape=shape, dtype=dtype, data=data))
    return stub.Infer(request, metadata=auth, timeout=RPC_TIMEOUT_S)


# -- authentication -------------------------------------------------------------------------------
def test_missing_token_is_unauthenticated(stub):
    code, details = _status(lambda: stub.GetDeviceInfo(agent_pb2.GetDeviceInfoRequest(), timeout=RPC_TIMEOUT_S))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert "missing token" in details and "--token-file" in details


@pytest.mark.parametrize("method", ["GetDeviceInfo", "PutModel", "InferStream"])
def test_wrong_token_is_unauthenticated_for_every_call_kind(stub, method):
    bad = (("authorization", "Bearer not-the-token"),)
    if method == "GetDeviceInfo":
        call = lambda: stub.GetDeviceInfo(agent_pb2.GetDeviceInfoRequest(), metadata=bad, timeout=RPC_TIMEOUT_S)  # noqa: E731
    elif method == "PutModel":
        call = lambda: stub.PutModel(iter([agent_pb2.PutModelChunk()]), metadata=bad, timeout=RPC_TIMEOUT_S)  # noqa: E731
    else:
        call = lambda: list(stub.InferStream(iter([agent_pb2.InferRequest()]), metadata=bad, timeout=RPC_TIMEOUT_S))  # noqa: E731
    code, details = _status(call)
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert "token refused" in details


def test_health_needs_no_token_and_reflection_lists_the_service(channel, auth):
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "dflare.agent.v1.Agent"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=RPC_TIMEOUT_S)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = list(reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), metadata=auth, timeout=RPC_TIMEOUT_S))
    names = {s.name for s in replies[0].list_services_response.service}
    assert {"dflare.agent.v1.Agent", "grpc.health.v1.Health"} <= names


def test_remote_target_names_missing_and_refused_tokens(agent, monkeypatch):
    monkeypatch.delenv("DFLARE_TOKEN", raising=False)
    with pytest.raises(AuthenticationError, match="missing token"):
        RemoteTarget(agent.uri).info()
    with pytest.raises(AuthenticationError, match="token refused"):
        RemoteTarget(agent.uri, token="wrong").info()
    monkeypatch.setenv("DFLARE_TOKEN", agent.token)
    assert RemoteTarget(agent.uri).info()["runtime"]  # token from the environment


# -- model upload ---------------------------------------------------------------------------------
def test_truncated_model_bytes(stub, auth, content):
    half = content[: len(content) // 2]
    code, details = _status(lambda: _put(stub, auth, half, sha256=hashlib.sha256(content).hexdigest(),
                                         total_bytes=len(content)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert f"truncated: received {len(half)} of {len(content)} bytes" in details


def test_sha256_mismatch(stub, auth, content):
    claimed = hashlib.sha256(b"other bytes").hexdigest()
    code, details = _status(lambda: _put(stub, auth, content, sha256=claimed))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "sha256 mismatch" in details and hashlib.sha256(content).hexdigest() in details


def test_non_tflite_bytes(stub, auth):
    code, details = _status(lambda: _put(stub, auth, b"PK\x03\x04 this is a zip, not a model" * 10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a TFLite model" in details


def test_malformed_sha256(stub, auth):
    code, details = _status(lambda: _put(stub, auth, b"x" * 10, sha256="abc"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "64 lowercase hex" in details


def test_corrupt_model_with_a_tflite_header_is_refused_at_load(stub, auth, content):
    corrupt = content[:8] + bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8))
    _put(stub, auth, corrupt)
    code, details = _status(lambda: stub.LoadModel(
        agent_pb2.LoadModelRequest(sha256=hashlib.sha256(corrupt).hexdigest()), metadata=auth, timeout=RPC_TIMEOUT_S))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "model" in details


def test_corrupt_model_through_remote_target_is_a_model_error(agent, content):
    corrupt = ModelSpec(content[:8] + b"\x00" * 2000, name="corrupt.tflite")
    with pytest.raises(ModelError, match="corrupt.tflite"), RemoteTarget(agent.uri, token=agent.token) as target:
        target.load(corrupt)


def test_unknown_digest_is_not_found(stub, auth):
    code, details = _status(lambda: stub.LoadModel(
        agent_pb2.LoadModelRequest(sha256="0" * 64), metadata=auth, timeout=RPC_TIMEOUT_S))
    assert code == grpc.StatusCode.NOT_FOUND
    assert "upload it with PutModel" in details


# -- delegates ------------------------------------------------------------------------------------
def test_unknown_delegate(stub, auth, content, session_id):
    sha = hashlib.sha256(content).hexdigest()
    code, details = _status(lambda: stub.LoadModel(
        agent_pb2.LoadModelRequest(sha256=sha, delegate="tpu"), metadata=auth, timeout=RPC_TIMEOUT_S))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown delegate 'tpu'" in details and "xnnpack" in details


def test_unavailable_delegate_names_what_is_available(stub, auth, content, session_id):
    sha = hashlib.sha256(content).hexdigest()
    code, details = _status(lambda: stub.LoadModel(
        agent_pb2.LoadModelRequest(sha256=sha, delegate="external:/tmp/libevil.so"), metadata=auth,
        timeout=RPC_TIMEOUT_S))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "not allowed" in details and "--allow-delegate" in details


def test_gpu_delegate_missing_is_failed_precondition_through_remote_target(agent):
    with RemoteTarget(agent.uri, token=agent.token) as target:
        if "gpu" in target.info()["delegates"]:
            pytest.skip("this machine has a GPU delegate library")
        with pytest.raises(DelegateUnavailableError, match="available: cpu, xnnpack, ref"):
            target.load(ModelSpec.from_path(MODEL, delegate="gpu"))


def test_fault_injection_is_refused_without_the_test_switch(stub, auth, content, session_id):
    sha = hashlib.sha256(content).hexdigest()
    code, details = _status(lambda: stub.LoadModel(
        agent_pb2.LoadModelRequest(sha256=sha, delegate_options={"dflare.fault": "abort_on_infer"}),
        metadata=auth, timeout=RPC_TIMEOUT_S))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "for tests only" in details


# -- inference requests ---------------------------------------------------------------------------
def test_wrong_shape(stub, auth, session_id):
    code, details = _status(lambda: _infer(stub, auth, session_id, bytes(28 * 28), [1, 28, 28]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "expected (N, 28, 28, 1)" in details


def test_wrong_dtype(stub, auth, session_id):
    data = np.zeros((1, 28, 28, 1), np.float32).tobytes()
    code, details = _status(lambda: _infer(stub, auth, session_id, data, [1, 28, 28, 1], agent_pb2.DATA_TYPE_FLOAT32))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "float32 does not fit" in details and "uint8 images or int8 tensors" in details


def test_unspecified_dtype(stub, auth, session_id):
    code, details = _status(lambda: _infer(stub, auth, session_id, bytes(784), [1, 28, 28, 1],
                                           agent_pb2.DATA_TYPE_UNSPECIFIED))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "set Tensor.dtype" in details


def test_byte_length_not_matching_shape(stub, auth, session_id):
    code, details = _status(lambda: _infer(stub, auth, session_id, bytes(784 * 2 - 1), [2, 28, 28, 1]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "1567 bytes but shape (2, 28, 28, 1) of uint8 needs 1568 bytes" in details


def test_empty_batch(stub, auth, session_id):
    code, details = _status(lambda: _infer(stub, auth, session_id, b"", [0, 28, 28, 1]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "empty" in details


def test_unknown_session(stub, auth):
    code, details = _status(lambda: _infer(stub, auth, "no-such-session", bytes(784), [1, 28, 28, 1]))
    assert code == grpc.StatusCode.NOT_FOUND
    assert "unknown session 'no-such-session'" in details and "load the model again" in details


def test_oversized_message(stub, auth, session_id):
    n = 2 * MAX_MESSAGE_BYTES // 784 + 1
    code, details = _status(lambda: _infer(stub, auth, session_id, bytes(784 * n), [n, 28, 28, 1]))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert str(MAX_MESSAGE_BYTES) in details


def test_batch_over_the_batch_limit(stub, auth, session_id):
    n = MAX_BATCH_BYTES // 784 + 1
    code, details = _status(lambda: _infer(stub, auth, session_id, bytes(784 * n), [n, 28, 28, 1]))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "--max-batch-bytes" in details and f"at most {MAX_BATCH_BYTES // 784} images" in details


def test_bad_request_in_a_stream_ends_it_with_its_status(stub, auth, session_id):
    good = agent_pb2.InferRequest(session_id=session_id, request_id=0, input=agent_pb2.Tensor(
        shape=[1, 28, 28, 1], dtype=agent_pb2.DATA_TYPE_UINT8, data=bytes(784)))
    bad = agent_pb2.InferRequest(session_id=session_id, request_id=1, input=agent_pb2.Tensor(
        shape=[1, 28, 28, 1], dtype=agent_pb2.DATA_TYPE_UINT8, data=bytes(10)))
    responses = []
    stream = stub.InferStream(iter([good, bad, good]), metadata=auth, timeout=RPC_TIMEOUT_S)
    with pytest.raises(grpc.RpcError) as info:
        for response in stream:
            responses.append(response.request_id)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert responses == [0]  # the batch before the bad one was answered


def test_remote_target_checks_requests_before_sending(agent):
    with RemoteTarget(agent.uri, token=agent.token) as target:
        session = target.load(ModelSpec.from_path(MODEL))
        with pytest.raises(InvalidRequestError, match=r"expects \(N, 28, 28, 1\)"):
            session.infer(np.zeros((1, 28, 28), np.uint8))
        with pytest.raises(InvalidRequestError, match="float64 not accepted"):
            session.infer(np.zeros((1, 28, 28, 1), np.float64))
        # A batch over the agent's batch limit is split, not refused, and gives the same outputs.
        images = np.resize(np.load(SEEDS)["x"], (MAX_BATCH_BYTES // 784 + 50, 28, 28, 1))
        local = LocalTarget().load(ModelSpec.from_path(MODEL))
        assert session.infer(images).tobytes() == local.infer(images).tobytes()


# -- the host command -----------------------------------------------------------------------------
def _dflare(*args: str, env_token: str | None = None) -> subprocess.CompletedProcess:
    import os

    env = {k: v for k, v in os.environ.items() if k != "DFLARE_TOKEN"}
    env["PYTHONPATH"] = str(ROOT)
    if env_token:
        env["DFLARE_TOKEN"] = env_token
    return subprocess.run([sys.executable, "-m", "host.cli", *args], capture_output=True, text=True, env=env,
                          timeout=120)


def test_dflare_info_json(agent):
    result = _dflare("info", agent.uri, "--token-file", str(agent.token_file), "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["protocol_major"] == 1 and info["runtime"] == "ai_edge_litert"
    assert {"cpu", "xnnpack", "ref"} <= set(info["delegates"])
    assert info["max_message_bytes"] == MAX_MESSAGE_BYTES and info["cpu_count"] >= 1


def test_dflare_info_reads_the_token_from_the_environment(agent):
    result = _dflare("info", agent.uri, env_token=agent.token)
    assert result.returncode == 0, result.stderr
    assert "xnnpack" in result.stdout and agent.uri in result.stdout


def test_dflare_info_says_a_refused_token_was_refused(agent, tmp_path):
    wrong = tmp_path / "wrong-token"
    wrong.write_text("nope\n")
    result = _dflare("info", agent.uri, "--token-file", str(wrong))
    assert result.returncode == 2
    assert "token refused" in result.stderr


# -- afterwards -----------------------------------------------------------------------------------
def test_agent_still_serves_correctly_after_every_bad_request(agent):
    assert agent.alive()
    images = np.load(SEEDS)["x"][:64]
    spec = ModelSpec.from_path(MODEL, delegate="xnnpack")
    with RemoteTarget(agent.uri, token=agent.token) as target:
        got = target.load(spec).infer(images)
    assert got.tobytes() == LocalTarget().load(spec).infer(images).tobytes()
