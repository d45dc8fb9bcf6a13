"""A model that crashes the worker costs one request: ABORTED, then the next request succeeds.

Crashes are real native crashes of the worker process: SIGABRT/SIGSEGV injected through the
test-only ``dflare.fault`` delegate option (honoured only with DFLARE_AGENT_FAULT_INJECTION=1),
and an external delegate library compiled here with gcc whose create function calls abort().
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import grpc
import numpy as np
import pytest

from device_agent._gen import agent_pb2, agent_pb2_grpc
from host.errors import WorkerCrashedError
from host.targets import LocalTarget, ModelSpec
from host.targets.remote import RemoteSession, RemoteTarget
from tests.agent_support import start_agent

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
MODEL = FIXTURES / "models" / "digits28-float32.tflite"
SEEDS = FIXTURES / "seeds" / "digits28.npz"
RPC_TIMEOUT_S = 60

ABORTING_DELEGATE_C = r"""
#include <stdlib.h>
#include <stddef.h>
/* The TFLite external delegate entry points; creating the delegate aborts the process. */
void *tflite_plugin_create_delegate(char **keys, char **values, size_t n, void (*report)(const char *)) {
  abort();
  return NULL;
}
void tflite_plugin_destroy_delegate(void *delegate) {}
"""

pytestmark = pytest.mark.skipif(not MODEL.exists(), reason="fixture models missing (make fixtures)")


@pytest.fixture(scope="module")
def aborting_delegate(tmp_path_factory) -> Path | None:
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        return None
    work = tmp_path_factory.mktemp("delegate")
    source = work / "abort_delegate.c"
    source.write_text(ABORTING_DELEGATE_C)
    library = work / "libabort_delegate.so"
    subprocess.run([gcc, "-shared", "-fPIC", "-o", str(library), str(source)], check=True, timeout=60)
    return library


@pytest.fixture(scope="module")
def fault_agent(tmp_path_factory, aborting_delegate):
    extra = ["--allow-delegate", str(aborting_delegate)] if aborting_delegate else []
    with start_agent(tmp_path_factory.mktemp("fault-agent"), *extra,
                     env={"DFLARE_AGENT_FAULT_INJECTION": "1"}) as agent:
        yield agent


@pytest.fixture(scope="module")
def target(fault_agent):
    with RemoteTarget(fault_agent.uri, token=fault_agent.token) as t:
        yield t


@pytest.fixture(scope="module")
def spec() -> ModelSpec:
    return ModelSpec.from_path(MODEL, delegate="xnnpack")


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.load(SEEDS)["x"][:16]


@pytest.fixture(scope="module")
def expected(spec, images) -> np.ndarray:
    return LocalTarget().load(spec).infer(images)


def _faulty_session(target: RemoteTarget, spec: ModelSpec, fault: str) -> RemoteSession:
    """Load ``spec`` with an injected fault (RemoteTarget has no fault option: use the raw stub)."""
    target.upload(spec)
    stub = agent_pb2_grpc.AgentStub(grpc.insecure_channel(f"{target.host}:{target.port}"))
    response = stub.LoadModel(agent_pb2.LoadModelRequest(
        sha256=spec.sha256, delegate=spec.delegate, name=spec.name, delegate_options={"dflare.fault": fault},
        preprocessing=agent_pb2.Preprocessing(mean=spec.preprocessing.mean, std=spec.preprocessing.std)),
        metadata=target._metadata, timeout=RPC_TIMEOUT_S)
    return RemoteSession(target, spec, response)


@pytest.mark.parametrize("fault, signal_name", [("abort_on_infer", "SIGABRT"), ("segv_on_infer", "SIGSEGV")])
def test_crash_during_infer_is_aborted_then_the_session_serves_again(target, spec, images, expected, fault,
                                                                      signal_name, fault_agent):
    session = _faulty_session(target, spec, fault)
    with pytest.raises(WorkerCrashedError, match=f"died \\(killed by {signal_name}\\) while running a batch") as info:
        session.infer(images)
    assert "fresh worker" in str(info.value)
    # The injected fault fires in the session's first worker only: the restarted one serves.
    assert session.infer(images).tobytes() == expected.tobytes()
    assert fault_agent.alive()
    session.close()


def test_crash_status_code_is_aborted_on_the_wire(target, spec, images):
    session = _faulty_session(target, spec, "abort_on_infer")
    stub = agent_pb2_grpc.AgentStub(grpc.insecure_channel(f"{target.host}:{target.port}"))
    request = session._request(images)
    with pytest.raises(grpc.RpcError) as info:
        stub.Infer(request, metadata=target._metadata, timeout=RPC_TIMEOUT_S)
    assert info.value.code() == grpc.StatusCode.ABORTED
    assert stub.Infer(request, metadata=target._metadata, timeout=RPC_TIMEOUT_S).outputs
    session.close()


def test_crash_inside_a_stream_ends_it_aborted_then_streams_work(target, spec, images, expected):
    session = _faulty_session(target, spec, "abort_on_infer")
    with pytest.raises(WorkerCrashedError, match="SIGABRT"):
        session.infer_many([images, images, images])
    results = session.infer_many([images, images])
    assert all(r.tobytes() == expected.tobytes() for r in results)
    session.close()


def test_crash_while_loading_is_aborted_then_loading_works(target, spec, images, expected):
    with pytest.raises(grpc.RpcError) as info:
        _faulty_session(target, spec, "abort_on_load")
    assert info.value.code() == grpc.StatusCode.ABORTED
    assert "killed by SIGABRT" in info.value.details() and "loading the model" in info.value.details()
    session = target.load(spec)
    assert session.infer(images).tobytes() == expected.tobytes()
    session.close()


def test_aborting_external_delegate_library(target, aborting_delegate, images, expected, fault_agent):
    if aborting_delegate is None:
        pytest.skip("no C compiler to build the aborting delegate")
    with pytest.raises(WorkerCrashedError, match="SIGABRT"):
        target.load(ModelSpec.from_path(MODEL, delegate=f"external:{aborting_delegate}"))
    session = target.load(ModelSpec.from_path(MODEL, delegate="xnnpack"))
    assert session.infer(images).tobytes() == expected.tobytes()
    assert fault_agent.alive()
    session.close()


def test_a_crash_leaves_other_sessions_alone(target, spec, images, expected):
    healthy = target.load(spec)
    faulty = _faulty_session(target, spec, "segv_on_infer")
    with pytest.raises(WorkerCrashedError):
        faulty.infer(images)
    assert healthy.infer(images).tobytes() == expected.tobytes()
    healthy.close()
    faulty.close()
    assert target.info()["sessions"] == 0

