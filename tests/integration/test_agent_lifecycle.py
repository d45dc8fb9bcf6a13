"""Agent lifecycle and security: graceful SIGTERM, loopback-only without a token, TLS, limits, restarts."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from device_agent._gen import agent_pb2
from host.errors import InvalidRequestError, TargetUnreachableError
from host.targets import LocalTarget, ModelSpec
from host.targets.remote import RemoteTarget
from tests.agent_support import ROOT, agent_command, agent_env, self_signed_certificate, start_agent

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
MODEL = FIXTURES / "models" / "digits28-float32.tflite"
SEEDS = FIXTURES / "seeds" / "digits28.npz"

pytestmark = pytest.mark.skipif(not MODEL.exists(), reason="fixture models missing (make fixtures)")


@pytest.fixture
def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigterm_lets_in_flight_calls_finish(agent_factory):
    agent = agent_factory()
    spec = ModelSpec.from_path(MODEL, delegate="ref")  # the slow kernels: the stream is surely in flight
    images = np.load(SEEDS)["x"][:64]
    batches = [images] * 30  # ~2 s of ref kernels: SIGTERM lands mid-stream
    target = RemoteTarget(agent.uri, token=agent.token)
    session = target.load(spec)
    older = agent_pb2.DeviceInfo()  # as for an agent before 1.2: infer_many streams, answering as it goes
    older.CopyFrom(target.device_info_message())
    older.protocol_minor = 1
    target._device_info = older
    first_answered = threading.Event()
    original_outputs = session._outputs

    def outputs_then_signal(response):
        first_answered.set()
        return original_outputs(response)

    session._outputs = outputs_then_signal
    results: list = []
    worker = threading.Thread(target=lambda: results.append(session.infer_many(batches)))
    worker.start()
    assert first_answered.wait(60), "the stream never answered"
    agent.process.terminate()  # SIGTERM while the stream still has batches to run
    worker.join(60)
    assert results and len(results[0]) == len(batches), f"the in-flight stream was cut:\n{agent.log()}"
    expected = LocalTarget().load(spec).infer(images)
    assert all(r.tobytes() == expected.tobytes() for r in results[0])
    assert agent.process.wait(30) == 0
    assert "SIGTERM received" in agent.log()
    with pytest.raises(TargetUnreachableError):
        RemoteTarget(agent.uri, token=agent.token, connect_timeout_s=0.5).info()


def test_refuses_non_loopback_bind_without_token(tmp_path):
    result = subprocess.run(agent_command("serve", "--host", "0.0.0.0", "--port", "0", "--cache-dir",
                                          str(tmp_path)), capture_output=True, text=True, env=agent_env(), timeout=60)
    assert result.returncode == 2
    assert "not a loopback address" in result.stderr and "--token-file" in result.stderr


def test_loopback_without_token_serves_anyone(agent_factory, monkeypatch):
    monkeypatch.delenv("DFLARE_TOKEN", raising=False)
    agent = agent_factory(token=None)
    assert RemoteTarget(agent.uri).info()["runtime"]


def test_unreachable_agent(unused_port):
    with pytest.raises(TargetUnreachableError, match="nothing listens"):
        RemoteTarget(f"grpc://127.0.0.1:{unused_port}", connect_timeout_s=0.5).info()
    env = {k: v for k, v in os.environ.items() if k != "DFLARE_TOKEN"}
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run([sys.executable, "-m", "host.cli", "info", f"grpc://127.0.0.1:{unused_port}"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 3, result.stderr
    assert "nothing listens" in result.stderr  # refused: reported at once


def test_max_sessions_is_resource_exhausted(agent_factory):
    agent = agent_factory("--max-sessions", "1")
    with RemoteTarget(agent.uri, token=agent.token) as target:
        spec = ModelSpec.from_path(MODEL)
        target.load(spec)
        with pytest.raises(InvalidRequestError, match="--max-sessions"):
            target.load(spec.with_options(delegate="ref"))


def test_cache_survives_a_restart(tmp_path):
    spec = ModelSpec.from_path(MODEL)
    with start_agent(tmp_path) as agent, RemoteTarget(agent.uri, token=agent.token) as target:
        target.load(spec).close()
    with start_agent(tmp_path) as agent, RemoteTarget(agent.uri, token=agent.token) as target:
        assert target.upload(spec) is False  # the digest is already in the restarted agent's cache
        target.load(spec).close()
        assert "stored model" not in agent.log()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make a certificate")
def test_tls_with_token(agent_factory, tmp_path):
    cert, key = self_signed_certificate(tmp_path)
    agent = agent_factory("--tls-cert", str(cert), "--tls-key", str(key))
    with RemoteTarget(agent.uri, token=agent.token, tls_ca_file=cert, tls_server_name="localhost") as target:
        session = target.load(ModelSpec.from_path(MODEL))
        images = np.load(SEEDS)["x"][:4]
        assert session.infer(images).tobytes() == LocalTarget().load(ModelSpec.from_path(MODEL)).infer(images).tobytes()
    with pytest.raises(TargetUnreachableError):  # a plaintext client cannot talk to a TLS agent
        RemoteTarget(agent.uri, token=agent.token, connect_timeout_s=1.0).info()


def _children(pid: int) -> list[int]:
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(c) for c in (task / "children").read_text().split()]
    return children


@pytest.mark.skipif(not Path("/proc/self/task").exists() or len(os.sched_getaffinity(0)) < 2,
                    reason="needs Linux /proc and at least two CPUs")
def test_worker_cpus_pin_workers_and_keep_the_agent_off_them(agent_factory):
    cpus = sorted(os.sched_getaffinity(0))
    agent = agent_factory("--worker-cpus", str(cpus[-1]))
    spec = ModelSpec.from_path(MODEL)
    images = np.load(SEEDS)["x"][:16]
    with RemoteTarget(agent.uri, token=agent.token) as target:
        session = target.load(spec)
        assert session.infer(images).tobytes() == LocalTarget().load(spec).infer(images).tobytes()
        (worker_pid,) = _children(agent.pid)
        assert os.sched_getaffinity(worker_pid) == {cpus[-1]}
        assert os.sched_getaffinity(agent.pid) == set(cpus[:-1])
        session.close()
    assert f"workers run on CPUs {cpus[-1]}" in agent.log()


def test_worker_cpus_the_device_lacks_are_refused(tmp_path):
    result = subprocess.run(agent_command("serve", "--port", "0", "--cache-dir", str(tmp_path), "--worker-cpus",
                                          "4096"), capture_output=True, text=True, env=agent_env(), timeout=60)
    assert result.returncode == 2
    assert "--worker-cpus names CPU 4096" in result.stderr
