"""``adb://`` targets end to end: the real agent deployed to the simulated adbd, used through the forward.

Needs the agent (``device_agent.cli``) and the gRPC client (``host.targets.remote``); until both are
in the tree these tests skip with that reason.
"""

from __future__ import annotations

import importlib.util
import os
import socket
from pathlib import Path

import numpy as np
import pytest
from adb_shell.auth.keygen import keygen

from host.errors import AgentStartError
from tests.adbd_sim import AdbdSim, DeviceConfig

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("device_agent.cli") is None or importlib.util.find_spec("host.targets.remote") is None,
    reason="needs the agent CLI (device_agent/cli.py) and the gRPC client (host/targets/remote.py)",
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
#: The simulated device answers at once; the real agent needs a few seconds to import numpy/grpc/litert.
AUTH_TIMEOUT_S = 1.0
START_TIMEOUT_S = 60.0


@pytest.fixture()
def device(tmp_path: Path, monkeypatch):
    """A simulated phone that trusts a fresh key in ANDROID_USER_HOME (where AdbTarget looks by default)."""
    monkeypatch.setenv("ANDROID_USER_HOME", str(tmp_path / "android"))
    (tmp_path / "android").mkdir()
    keygen(str(tmp_path / "android/adbkey"))
    pub = (tmp_path / "android/adbkey.pub").read_text()
    with AdbdSim(tmp_path / "device", DeviceConfig(authorized_keys=[pub])) as sim:
        yield sim


def _open(sim: AdbdSim, **options):
    from host.targets import open_target

    return open_target(f"adb://{sim.host}:{sim.port}", token_file=None, auth_timeout_s=AUTH_TIMEOUT_S,
                       start_timeout_s=START_TIMEOUT_S, **options)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_deploy_infer_matches_local_and_stop_cleans_up(device: AdbdSim) -> None:
    from host.targets import LocalTarget, ModelSpec

    model = ModelSpec.from_path(FIXTURES / "models/digits28-int8.tflite")
    x = np.load(FIXTURES / "seeds/digits28.npz")["x"][:16]
    target = _open(device)
    try:
        info = target.info()
        assert info["deploy"]["model"] == "Pixel 8" and info["deploy"]["abi"] == "arm64-v8a"
        pid = target.deployment.pid
        assert _pid_alive(pid)  # the agent really runs (on this machine, inside the device sandbox)
        remote_probs = target.load(model).infer(x)
    finally:
        target.close()
    local = LocalTarget()
    try:
        local_probs = local.load(model).infer(x)
    finally:
        local.close()
    np.testing.assert_array_equal(remote_probs, local_probs)
    assert device.wait_for(lambda: not _pid_alive(pid))
    agent_dir = device.sandbox.root / "data/local/tmp/dflare"
    assert not (agent_dir / "token").exists() and (agent_dir / "dflare-agent.pyz").exists()
    assert any(s.startswith("tcp:") for s in device.services_opened)


def test_target_reconnects_after_the_adb_link_drops(device: AdbdSim) -> None:
    from host.errors import TargetError
    from host.targets import ModelSpec

    model = ModelSpec.from_path(FIXTURES / "models/digits28-int8.tflite")
    x = np.load(FIXTURES / "seeds/digits28.npz")["x"][:4]
    target = _open(device)
    try:
        session = target.load(model)
        before = session.infer(x)
        assert device.drop_connections() == 1
        after = None
        for _ in range(3):  # the call in flight may fail; the channel then reconnects through the forwarder
            try:
                after = session.infer(x)
                break
            except TargetError:
                continue
        assert after is not None
        np.testing.assert_array_equal(before, after)
        assert target.info()["deploy"]["adb_reconnects"] >= 1
    finally:
        target.close()


def test_agent_that_cannot_bind_fails_with_its_log_tail(device: AdbdSim) -> None:
    taken = socket.create_server(("127.0.0.1", 0))  # the "device" loopback is this machine's
    try:
        with pytest.raises(AgentStartError) as info:
            _open(device, device_port=taken.getsockname()[1])
    finally:
        taken.close()
    message = str(info.value)
    assert message.startswith(f"adb://{device.host}:{device.port}: ")
    assert "agent.log" in message and "(empty)" not in message
