"""The host-side forwarder: host port -> device tcp:PORT over adb-shell's transport, against the simulated adbd."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest
from adb_shell.adb_device import AdbDevice
from adb_shell.auth.keygen import keygen
from adb_shell.auth.sign_pythonrsa import PythonRSASigner
from adb_shell.transport.tcp_transport import TcpTransport

from host.deploy.adb_forward import AdbMux, AdbPortForwarder, StreamRefusedError
from tests.adbd_sim import AdbdSim, DeviceConfig

#: Generous socket timeout for the test client; the path is all loopback.
CLIENT_TIMEOUT_S = 10.0


@pytest.fixture(scope="module")
def signer_and_pub(tmp_path_factory) -> tuple[PythonRSASigner, str]:
    d = tmp_path_factory.mktemp("key")
    keygen(str(d / "adbkey"))
    return PythonRSASigner.FromRSAKeyPath(str(d / "adbkey")), (d / "adbkey.pub").read_text()


@pytest.fixture()
def echo_port():
    """An echo server on this machine's loopback, which is the simulated device's loopback."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=_echo, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()[1]
    server.close()


def _echo(conn: socket.socket) -> None:
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)


def _mux_factory(sim: AdbdSim, signer: PythonRSASigner):
    def connect() -> AdbMux:
        transport = TcpTransport(sim.host, sim.port)
        device = AdbDevice(transport, default_transport_timeout_s=5)
        device.connect(rsa_keys=[signer], auth_timeout_s=1)
        return AdbMux(transport, device.max_chunk_size, "sim")
    return connect


def _round_trip(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT_S) as client:
        sender = threading.Thread(target=client.sendall, args=(payload,))
        sender.start()
        got = bytearray()
        while len(got) < len(payload):
            chunk = client.recv(1 << 20)
            if not chunk:
                break
            got += chunk
        sender.join()
    return bytes(got)


def test_forwarded_bytes_arrive_intact_in_chunks_the_device_accepts(tmp_path: Path, signer_and_pub, echo_port) -> None:
    signer, pub = signer_and_pub
    with AdbdSim(tmp_path / "dev", DeviceConfig(authorized_keys=[pub], maxdata=16384)) as sim:
        forwarder = AdbPortForwarder(_mux_factory(sim, signer), echo_port)
        try:
            payload = os.urandom(1_000_000)
            assert _round_trip(forwarder.local_port, payload) == payload
        finally:
            forwarder.close()
    host_writes = [e for e in sim.transcript if e.direction == "host>" and e.command == "WRTE"]
    assert host_writes and max(len(e.data) for e in host_writes) <= 8192  # max_chunk_size = maxdata / 2
    assert sim.errors == []


def test_forward_reconnects_after_the_adb_link_drops(tmp_path: Path, signer_and_pub, echo_port) -> None:
    signer, pub = signer_and_pub
    with AdbdSim(tmp_path / "dev", DeviceConfig(authorized_keys=[pub])) as sim:
        forwarder = AdbPortForwarder(_mux_factory(sim, signer), echo_port)
        try:
            assert _round_trip(forwarder.local_port, b"before") == b"before"
            with socket.create_connection(("127.0.0.1", forwarder.local_port), timeout=CLIENT_TIMEOUT_S) as held:
                held.sendall(b"x")
                assert held.recv(10) == b"x"
                assert sim.drop_connections() == 1
                assert held.recv(10) == b""  # the bridged socket is closed with the link
            assert _round_trip(forwarder.local_port, b"after") == b"after"
            assert forwarder.reconnects == 1
        finally:
            forwarder.close()


def test_open_to_a_closed_device_port_is_refused(tmp_path: Path, signer_and_pub) -> None:
    signer, pub = signer_and_pub
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    with AdbdSim(tmp_path / "dev", DeviceConfig(authorized_keys=[pub])) as sim:
        mux = _mux_factory(sim, signer)()
        try:
            with pytest.raises(StreamRefusedError):
                mux.open(f"tcp:{port}", timeout_s=5)
            assert mux.shell("echo ok; getprop ro.product.model").split("\n")[:2] == ["ok", "Pixel 8"]
        finally:
            mux.close()
