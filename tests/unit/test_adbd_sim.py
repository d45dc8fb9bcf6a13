"""The simulated adbd, driven by the real adb-shell client: auth, shell (v1, v2), sync, tcp streams.

Scripted tests list the exchanges they expect and check that every one was consumed, in order and
with nothing unexpected between them, as adb_shell's own tests check their fake transport.
"""

from __future__ import annotations

import hashlib
import io
import os
import socket
import struct
import threading
from pathlib import Path

import pytest
from adb_shell.adb_device import AdbDeviceTcp
from adb_shell.auth.keygen import keygen
from adb_shell.auth.sign_pythonrsa import PythonRSASigner
from adb_shell.exceptions import AdbTimeoutError, PushFailedError, TcpTimeoutException

from tests.adbd_sim import (
    A_CNXN,
    AUTH_TOKEN_BYTES,
    AdbdSim,
    DeviceConfig,
    ExchangeScript,
    decode_android_pubkey,
    pack_message,
    verify_token_signature,
)

#: Short client timeouts: the simulator answers in milliseconds, and a refused auth must fail fast.
TRANSPORT_TIMEOUT_S = 5.0
AUTH_TIMEOUT_S = 0.5


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> tuple[PythonRSASigner, str, PythonRSASigner, str]:
    """Two adb key pairs made by adb_shell.auth.keygen (2048-bit RSA, as adb makes them)."""
    d = tmp_path_factory.mktemp("keys")
    out = []
    for name in ("adbkey", "otherkey"):
        keygen(str(d / name))
        out += [PythonRSASigner.FromRSAKeyPath(str(d / name)), (d / f"{name}.pub").read_text()]
    return tuple(out)


def _connect(sim: AdbdSim, signer: PythonRSASigner, auth_timeout_s: float = AUTH_TIMEOUT_S) -> AdbDeviceTcp:
    device = AdbDeviceTcp(sim.host, sim.port, default_transport_timeout_s=TRANSPORT_TIMEOUT_S)
    assert device.connect(rsa_keys=[signer], auth_timeout_s=auth_timeout_s, read_timeout_s=TRANSPORT_TIMEOUT_S)
    return device


def test_authorized_key_connects_with_a_verified_signature(tmp_path: Path, keys) -> None:
    signer, pub, _, _ = keys
    script = ExchangeScript([
        ("host>", "CNXN", lambda e: e.data.startswith(b"host::")),
        ("dev<", "AUTH", lambda e: e.arg0 == 1 and len(e.data) == AUTH_TOKEN_BYTES),
        ("host>", "AUTH", lambda e: e.arg0 == 2 and len(e.data) == 256),
        ("dev<", "CNXN", lambda e: b"features=shell_v2" in e.data),
    ], strict=True)
    with AdbdSim(tmp_path / "dev", DeviceConfig(authorized_keys=[pub]), script=script) as sim:
        device = _connect(sim, signer)
        device.close()
        sim.wait_for(lambda: sim.live_connections == 0)
    assert script.remaining == [] and script.errors == []
    assert sim.auth_log == ["signature-accepted"]


def test_signature_is_checked_against_the_token(keys) -> None:
    signer, pub, other_signer, _ = keys
    token = os.urandom(AUTH_TOKEN_BYTES)
    key = decode_android_pubkey(pub)
    assert verify_token_signature(key, token, signer.Sign(token))
    assert not verify_token_signature(key, token, other_signer.Sign(token))
    assert not verify_token_signature(key, os.urandom(AUTH_TOKEN_BYTES), signer.Sign(token))


def test_unknown_key_gets_a_new_token_then_the_prompt_is_accepted(tmp_path: Path, keys) -> None:
    signer, pub, other_signer, other_pub = keys
    script = ExchangeScript([
        ("host>", "CNXN"),
        ("dev<", "AUTH", lambda e: e.arg0 == 1),
        ("host>", "AUTH", lambda e: e.arg0 == 2),
        ("dev<", "AUTH", lambda e: e.arg0 == 1),  # rejected: a fresh token
        ("host>", "AUTH", lambda e: e.arg0 == 3 and e.data.endswith(b"\x00")),
        ("dev<", "CNXN"),
    ], strict=True)
    config = DeviceConfig(authorized_keys=[pub], accept_new_keys=True)
    with AdbdSim(tmp_path / "dev", config, script=script) as sim:
        _connect(sim, other_signer).close()
        assert sim.auth_log == ["signature-rejected", "public-key-accepted"]
        assert [k.split()[0] for k in sim.prompted_keys] == [other_pub.split()[0]]
        script.strict = False
        _connect(sim, other_signer).close()  # "Always allow": now a signature is enough
        assert sim.auth_log[-1] == "signature-accepted"
    assert script.errors == [] and script.remaining == []


def test_unknown_key_is_refused_while_nobody_answers_the_prompt(tmp_path: Path, keys) -> None:
    _, pub, other_signer, _ = keys
    with AdbdSim(tmp_path / "dev", DeviceConfig(authorized_keys=[pub])) as sim:
        device = AdbDeviceTcp(sim.host, sim.port, default_transport_timeout_s=TRANSPORT_TIMEOUT_S)
        with pytest.raises((TcpTimeoutException, AdbTimeoutError)):
            device.connect(rsa_keys=[other_signer], auth_timeout_s=AUTH_TIMEOUT_S)
        assert sim.auth_log == ["signature-rejected", "public-key-prompt-ignored"]
        assert not any(e.command == "CNXN" and e.direction == "dev<" for e in sim.transcript)


def test_shell_runs_in_the_sandbox_with_device_tools(tmp_path: Path, keys) -> None:
    signer, pub, _, _ = keys
    config = DeviceConfig(authorized_keys=[pub], python=None, free_bytes=3 * 1024**3)
    config.props["ro.product.cpu.abi"] = "x86_64"
    with AdbdSim(tmp_path / "dev", config) as sim:
        device = _connect(sim, signer)
        out = device.shell("getprop ro.product.cpu.abi; getprop no.such.prop; echo x > /data/local/tmp/f; "
                           "cat /data/local/tmp/f; ls /sys/class/thermal; df /data | tail -1")
        lines = out.splitlines()
        assert lines[:3] == ["x86_64", "", "x"]
        assert lines[3:5] == ["thermal_zone0", "thermal_zone1"]
        assert lines[5].split()[3] == str(3 * 1024**2)  # Available, in KiB
        assert (tmp_path / "dev/data/local/tmp/f").read_text() == "x\n"
        assert "not found" in device.shell("python3 -c 'print(1)' 2>&1")
        device.close()


def test_shell_v2_frames_stdout_stderr_and_the_exit_code(tmp_path: Path, keys) -> None:
    signer, pub, _, _ = keys
    with AdbdSim(tmp_path / "dev", DeviceConfig(authorized_keys=[pub])) as sim:
        device = _connect(sim, signer)
        raw = device._service(b"shell,v2", b"echo out; echo err >&2; python3 -c 'import sys; sys.exit(7)'",
                              decode=False)
        device.close()
    packets, i = [], 0
    while i < len(raw):
        kind, length = struct.unpack_from("<BI", raw, i)
        packets.append((kind, raw[i + 5:i + 5 + length]))
        i += 5 + length
    assert (1, b"out\n") in packets and (2, b"err\n") in packets
    assert packets[-1] == (3, b"\x07")


def test_sync_push_stat_list_pull_round_trip(tmp_path: Path, keys) -> None:
    signer, pub, _, _ = keys
    data = os.urandom(300_000)  # several 64 KiB DATA chunks, more than one WRTE
    with AdbdSim(tmp_path / "dev", DeviceConfig(authorized_keys=[pub])) as sim:
        device = _connect(sim, signer)
        device.push(io.BytesIO(data), "/data/local/tmp/d/blob", st_mode=0o100600, mtime=1_700_000_000)
        on_disk = tmp_path / "dev/data/local/tmp/d/blob"
        assert on_disk.read_bytes() == data and (on_disk.stat().st_mode & 0o777) == 0o600
        assert sim.pushed == {"data/local/tmp/d/blob": hashlib.sha256(data).hexdigest()}

        script = ExchangeScript([
            ("host>", "OPEN", lambda e: e.data == b"sync:\x00"),
            ("dev<", "OKAY"),
            ("host>", "WRTE", lambda e: e.data.startswith(b"STAT")),
            ("dev<", "OKAY"),
            ("dev<", "WRTE", lambda e: e.data[:4] == b"STAT" and struct.unpack("<3I", e.data[4:])[1:] ==
             (300_000, 1_700_000_000)),
            ("host>", "OKAY"),
            ("host>", "CLSE"),
            ("dev<", "CLSE"),
        ], strict=True)
        sim.script = script
        mode, size, mtime = device.stat("/data/local/tmp/d/blob")
        sim.script = None
        assert script.remaining == [] and script.errors == []
        assert (size, mtime) == (300_000, 1_700_000_000)
        assert device.stat("/data/local/tmp/nothing") == (0, 0, 0)

        names = {bytes(f.filename) for f in device.list("/data/local/tmp/d")}
        assert names == {b".", b"..", b"blob"}
        back = io.BytesIO()
        device.pull("/data/local/tmp/d/blob", back)
        assert back.getvalue() == data
        device.close()


def test_sync_push_fails_when_the_device_is_full(tmp_path: Path, keys) -> None:
    signer, pub, _, _ = keys
    with AdbdSim(tmp_path / "dev", DeviceConfig(authorized_keys=[pub], free_bytes=1000)) as sim:
        device = _connect(sim, signer)
        with pytest.raises(PushFailedError, match="No space left"):
            device.push(io.BytesIO(b"x" * 5000), "/data/local/tmp/big")
        assert not (tmp_path / "dev/data/local/tmp/big").exists()
        device.close()


def test_tcp_stream_reaches_a_real_socket_on_the_device_loopback(tmp_path: Path, keys) -> None:
    signer, pub, _, _ = keys
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def greet() -> None:
        conn, _ = server.accept()
        conn.sendall(b"hello from the device " * 1000)  # 22 KB: several WRTE/OKAY rounds at 4 KiB
        conn.close()

    threading.Thread(target=greet, daemon=True).start()
    config = DeviceConfig(authorized_keys=[pub], maxdata=4096)
    with AdbdSim(tmp_path / "dev", config) as sim:
        device = _connect(sim, signer)
        got = device._service(b"tcp", str(port).encode(), decode=False)
        device.close()
    server.close()
    assert got == b"hello from the device " * 1000
    writes = [e for e in sim.transcript if e.direction == "dev<" and e.command == "WRTE"]
    assert len(writes) >= 6 and all(len(e.data) <= 4096 for e in writes)
    assert f"tcp:{port}" in sim.services_opened


def test_corrupt_message_closes_the_connection(tmp_path: Path) -> None:
    with AdbdSim(tmp_path / "dev", DeviceConfig(auth_required=False)) as sim:
        sock = socket.create_connection((sim.host, sim.port), timeout=5)
        good = pack_message(A_CNXN, 0x01000000, 256 * 1024, b"host::\x00")
        sock.sendall(good[:20] + b"\x00\x00\x00\x00" + good[24:])  # wrong magic
        assert sock.recv(100) == b""  # closed without a CNXN
        sock.close()
        assert sim.wait_for(lambda: bool(sim.errors))
        assert "bad header" in sim.errors[0]
