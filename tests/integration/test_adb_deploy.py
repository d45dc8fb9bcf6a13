"""``dflare deploy adb`` against the simulated adbd, driven by the real adb-shell client.

The device is a sandbox on this machine (tests/adbd_sim.py); its ``python3`` is this interpreter, so
the agent pushed as a zipapp really starts, binds the "device" loopback and serves through the
forward. Failure paths check the error class (the stage) and that the message names the device and
says what to do.
"""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest
from adb_shell.auth.keygen import keygen

from host.deploy.adb import AdbDeployment, AdbDeployOptions, default_adb_key_path
from host.errors import (
    DeviceCheckError,
    DeviceNotAuthorizedError,
    NoPythonError,
    PushError,
    UnsupportedAbiError,
)
from host.targets.remote import AgentProbe
from tests.adbd_sim import AdbdSim, DeviceConfig

#: The simulated device answers at once; a refused key must fail fast.
AUTH_TIMEOUT_S = 0.5


@pytest.fixture(scope="module")
def adb_key(tmp_path_factory) -> tuple[Path, str]:
    d = tmp_path_factory.mktemp("adbkey")
    keygen(str(d / "adbkey"))
    return d / "adbkey", (d / "adbkey.pub").read_text()


def _options(key: Path, **kw) -> AdbDeployOptions:
    return AdbDeployOptions(key_path=key, auth_timeout_s=AUTH_TIMEOUT_S, **kw)


def _sim(tmp_path: Path, pub: str, **config) -> AdbdSim:
    return AdbdSim(tmp_path / "device", DeviceConfig(authorized_keys=[pub], **config))


def test_unauthorized_device_names_the_key_and_the_prompt(tmp_path: Path, adb_key) -> None:
    key, _ = adb_key
    with AdbdSim(tmp_path / "device", DeviceConfig(authorized_keys=[])) as sim:
        deployment = AdbDeployment(f"adb://{sim.host}:{sim.port}", _options(key), probe=AgentProbe())
        with pytest.raises(DeviceNotAuthorizedError) as info:
            deployment.initialize()
        assert sim.auth_log == ["signature-rejected", "public-key-prompt-ignored"]
    message = str(info.value)
    assert message.startswith(f"adb://{sim.host}:{sim.port}: ")
    assert f"{key}.pub" in message and "Allow USB debugging" in message


def test_missing_key_is_created_like_adb_and_accepted_at_the_prompt(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ANDROID_USER_HOME", raising=False)
    key = default_adb_key_path()
    assert key == tmp_path / "home/.android/adbkey" and not key.exists()
    with AdbdSim(tmp_path / "device", DeviceConfig(accept_new_keys=True)) as sim:
        deployment = AdbDeployment(f"{sim.host}:{sim.port}", AdbDeployOptions(auth_timeout_s=AUTH_TIMEOUT_S),
                                   probe=AgentProbe())
        deployment.connect()
        deployment.stop()
        assert sim.auth_log == ["signature-rejected", "public-key-accepted"]
        assert sim.authorized_keys[0].split()[0] == Path(f"{key}.pub").read_text().split()[0]
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_unsupported_abi_is_refused_before_anything_is_pushed(tmp_path: Path, adb_key) -> None:
    key, pub = adb_key
    sim = _sim(tmp_path, pub)
    sim.config.props["ro.product.cpu.abi"] = "armeabi-v7a"
    sim.sandbox.write_props()
    with sim:
        with pytest.raises(UnsupportedAbiError, match="'armeabi-v7a'.*arm64-v8a"):
            AdbDeployment(f"{sim.host}:{sim.port}", _options(key), probe=AgentProbe()).initialize()
        assert sim.pushed == {} and sim.wait_for(lambda: sim.live_connections == 0)


def test_no_python_on_the_device_lists_what_was_tried(tmp_path: Path, adb_key) -> None:
    key, pub = adb_key
    with _sim(tmp_path, pub, python=None) as sim:
        with pytest.raises(NoPythonError) as info:  # asked for the device's Python (auto would bring a runtime)
            AdbDeployment(f"{sim.host}:{sim.port}", _options(key, runtime="python"), probe=AgentProbe()).initialize()
        assert sim.pushed == {}
    message = str(info.value)
    assert "python3" in message and "/data/local/tmp/dflare/python/bin/python3" in message
    assert "--python PATH" in message


@pytest.mark.skipif(not os.access("/usr/bin/python3", os.X_OK), reason="needs a system python3 without numpy")
def test_python_without_native_modules_names_them(tmp_path: Path, adb_key) -> None:
    key, pub = adb_key
    with _sim(tmp_path, pub, python="/usr/bin/python3") as sim:
        deployment = AdbDeployment(f"{sim.host}:{sim.port}", _options(key), probe=AgentProbe())
        try:
            deployment.connect()
            modules = deployment._shell("python3 -c 'import numpy' 2>&1")[1]
        finally:
            deployment.stop()
        if "No module named" not in modules:
            pytest.skip("this machine's /usr/bin/python3 has numpy")
        with pytest.raises(DeviceCheckError, match="lacks the native modules numpy"):
            AdbDeployment(f"{sim.host}:{sim.port}", _options(key, runtime="python"), probe=AgentProbe()).initialize()


def test_too_little_space_is_refused_before_pushing(tmp_path: Path, adb_key) -> None:
    key, pub = adb_key
    with _sim(tmp_path, pub, free_bytes=10 * 2**20) as sim:
        with pytest.raises(PushError, match="only 10 MiB free.*free some space"):
            AdbDeployment(f"{sim.host}:{sim.port}", _options(key), probe=AgentProbe()).initialize()
        assert sim.pushed == {}


def test_push_writes_bundle_and_private_token_and_skips_an_unchanged_bundle(tmp_path: Path, adb_key) -> None:
    key, pub = adb_key
    with _sim(tmp_path, pub) as sim:
        for round_ in range(2):
            deployment = AdbDeployment(f"{sim.host}:{sim.port}", _options(key), probe=AgentProbe())
            deployment.connect()
            try:
                info = deployment.check_device()
                deployment.push_agent()
            finally:
                deployment._close_adb()
            root = sim.sandbox.root / "data/local/tmp/dflare"
            token_file = root / "token"
            assert token_file.read_text() == deployment.token and len(deployment.token) >= 32
            assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
            pushed = sorted(sim.pushed)
            if round_ == 0:
                assert pushed == ["data/local/tmp/dflare/dflare-agent.pyz", "data/local/tmp/dflare/token"]
                assert sim.pushed["data/local/tmp/dflare/dflare-agent.pyz"] == deployment.bundle.sha256
                sim.pushed.clear()
            else:
                assert pushed == ["data/local/tmp/dflare/token"]  # same bytes on the device: not pushed again
    assert info["model"] == "Pixel 8" and info["soc"] == "Tensor G3" and info["android_release"] == "14"
    assert info["abi"] == "arm64-v8a" and info["platform"] == "android-arm64"
    assert info["python"]["path"] == "python3" and info["free_bytes"] == 8 * 1024**3
    assert info["thermal_c"] == {"cpu-big": 41.0, "battery": 30.5}


def test_taken_host_port_is_a_forward_error(tmp_path: Path, adb_key) -> None:
    """Covered end to end once the agent starts; here only the stage's error class and message."""
    from host.errors import ForwardError

    key, pub = adb_key
    taken = socket.create_server(("127.0.0.1", 0))
    try:
        with _sim(tmp_path, pub) as sim:
            deployment = AdbDeployment(f"{sim.host}:{sim.port}", _options(key, local_port=taken.getsockname()[1]),
                                       probe=AgentProbe())
            deployment.connect()
            deployment.device_port = 1
            deployment.device_info = {"agent": {}}
            with pytest.raises(ForwardError, match="choose another --local-port"):
                deployment.forward()
            deployment.stop()
    finally:
        taken.close()


@pytest.mark.parametrize("case, config, exit_code, expected", [
    ("not authorized", {"authorized_keys": []}, 3, ["did not accept this computer's adb key",
                                                    "'Allow USB debugging?'"]),
    ("no python", {"python": None}, 2, ["no Python 3.10+ the adb shell can run", "--python PATH"]),
    ("unsupported abi", {"props": {**DeviceConfig().props, "ro.product.cpu.abi": "armeabi-v7a"}}, 2,
     ["CPU ABI 'armeabi-v7a' (ro.product.cpu.abi) is not supported", "use a 64-bit device"]),
    ("agent fails to start", {}, 2, ["the agent exited during startup; its log (/data/local/tmp/dflare/agent.log) "
                                     "ends with:", "Address already in use"]),
])
def test_cli_deploy_failures_exit_with_a_message_naming_the_device(
        case: str, config: dict, exit_code: int, expected: list[str], tmp_path: Path, adb_key, capsys) -> None:
    """``dflare deploy adb`` (the same path ``--target adb://`` takes): exit code and one actionable line."""
    from host.cli import main

    key, pub = adb_key
    taken = socket.create_server(("127.0.0.1", 0))  # the "device" loopback is this machine's
    config = {"authorized_keys": [pub], **config}
    try:
        with AdbdSim(tmp_path / "device", DeviceConfig(**config)) as sim:
            argv = ["deploy", "adb", "--host", f"{sim.host}:{sim.port}", "--key", str(key),
                    "--auth-timeout-s", str(AUTH_TIMEOUT_S), "--start-timeout-s", "60"]
            if case == "agent fails to start":
                argv += ["--device-port", str(taken.getsockname()[1])]
            if case == "no python":
                argv += ["--runtime", "python"]  # auto would push the self-contained runtime instead
            assert main(argv) == exit_code
            if case != "agent fails to start":
                assert sim.pushed == {}  # refused before anything was copied
    finally:
        taken.close()
    err = capsys.readouterr().err
    assert err.startswith(f"dflare: error: adb://{sim.host}:{sim.port}: "), err
    for text in expected:
        assert text in err, err
