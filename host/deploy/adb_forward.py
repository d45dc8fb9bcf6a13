"""Host port -> device ``tcp:PORT``, over adb-shell's transport; no ``adb`` binary or server needed.

:class:`AdbMux` owns one authenticated adb connection (adb-shell does CNXN/AUTH; we then take its
transport) and multiplexes streams on it the way ``protocol.txt`` describes: ``OPEN(local-id, 0,
"tcp:PORT")`` answered by ``OKAY(remote-id, local-id)`` or ``CLSE``; one ``WRTE`` in flight per stream
until the device's ``OKAY``; each device ``WRTE`` acknowledged with our ``OKAY``. One reader thread
reads every message, so streams never steal each other's packets (adb-shell's own ``_AdbIOManager``
drops a packet a waiting reader did not expect, which rules out a bidirectional stream on it).

:class:`AdbPortForwarder` listens on a host port and bridges each accepted connection to a new
``tcp:PORT`` stream. When the adb connection dies (cable pulled, Wi-Fi lost, adbd restarted) every
bridged socket is closed, and the next accepted connection reconnects through the ``connect``
callable: a gRPC channel reconnects by itself, so the agent session carries on.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import socket
import struct
import threading
from typing import Callable

from adb_shell.exceptions import TcpTimeoutException
from adb_shell.transport.base_transport import BaseTransport

_LOG = logging.getLogger(__name__)

A_OPEN, A_OKAY, A_CLSE, A_WRTE = 0x4E45504F, 0x59414B4F, 0x45534C43, 0x45545257
#: The adb message header: six little-endian uint32 words (protocol.txt).
_HEADER = struct.Struct("<6I")
#: How often the reader wakes from a blocked read to notice ``close()``.
READ_POLL_S = 0.5
#: How long to wait for the device to answer an OPEN, or to acknowledge one WRTE.
STREAM_TIMEOUT_S = 30.0
#: Bytes read from a local socket at a time (then split to the device's chunk size).
LOCAL_READ_BYTES = 256 * 1024


class MuxClosedError(ConnectionError):
    """The adb connection under the mux is gone."""


class StreamRefusedError(ConnectionError):
    """The device answered OPEN with CLSE (nothing listens there, or the service is unknown)."""


class MuxStream:
    """One adb stream: ``write`` waits for the device's OKAY; ``read`` returns b"" once closed."""

    def __init__(self, mux: AdbMux, local_id: int, destination: str) -> None:
        self.mux = mux
        self.local_id = local_id
        self.remote_id = 0
        self.destination = destination
        self.opened = threading.Event()
        self.refused = False
        self.closed = threading.Event()
        self._can_write = threading.Event()
        self._incoming: queue.Queue[bytes] = queue.Queue()

    def write(self, data: bytes) -> None:
        """Send data, one chunk in flight at a time.

        Raises:
            MuxClosedError: the stream or the connection closed, or the device stopped acknowledging.
        """
        step = self.mux.chunk_bytes
        for start in range(0, len(data), step):
            if not self._can_write.wait(STREAM_TIMEOUT_S) or self.closed.is_set():
                raise MuxClosedError(f"stream {self.destination} closed")
            self._can_write.clear()
            self.mux._send(A_WRTE, self.local_id, self.remote_id, data[start:start + step])

    def read(self, timeout_s: float | None = None) -> bytes:
        """The next chunk from the device; b"" when the stream closed. Raises queue.Empty on timeout."""
        if self.closed.is_set() and self._incoming.empty():
            return b""
        return self._incoming.get(timeout=timeout_s)

    def read_all(self, timeout_s: float) -> bytes:
        """Everything until the device closes the stream (a ``shell:`` command's output)."""
        out = bytearray()
        while True:
            chunk = self.read(timeout_s)
            if not chunk:
                return bytes(out)
            out += chunk

    def close(self) -> None:
        if not self.closed.is_set():
            self._mark_closed()
            with contextlib.suppress(MuxClosedError):
                self.mux._send(A_CLSE, self.local_id, self.remote_id)

    # called by the mux reader
    def _on_okay(self, remote_id: int) -> None:
        if not self.opened.is_set():
            self.remote_id = remote_id
            self.opened.set()
        self._can_write.set()

    def _on_data(self, data: bytes) -> None:
        self._incoming.put(data)

    def _mark_closed(self) -> None:
        self.closed.set()
        self._can_write.set()
        self.opened.set()
        self._incoming.put(b"")
        self.mux._forget(self)


class AdbMux:
    """Streams over one authenticated adb transport (see the module docstring).

    Args:
        transport: an adb-shell transport on which ``AdbDevice.connect`` has completed.
        chunk_bytes: the largest WRTE payload to send (``AdbDevice.max_chunk_size``).
        name: the device, for log and error messages.
    """

    def __init__(self, transport: BaseTransport, chunk_bytes: int, name: str) -> None:
        self.transport = transport
        self.chunk_bytes = chunk_bytes
        self.name = name
        self.closed = threading.Event()
        self._send_lock = threading.Lock()
        self._streams: dict[int, MuxStream] = {}
        self._streams_lock = threading.Lock()
        self._next_id = 0
        self._reader = threading.Thread(target=self._read_loop, daemon=True, name=f"adb-mux-{name}")
        self._reader.start()

    def open(self, destination: str, timeout_s: float = STREAM_TIMEOUT_S) -> MuxStream:
        """Open a stream to a device service (``tcp:PORT``, ``shell:CMD``...).

        Raises:
            StreamRefusedError: the device refused it.
            MuxClosedError: the connection is gone, or the device did not answer in time.
        """
        with self._streams_lock:
            self._next_id = self._next_id % 0xFFFFFFFF + 1
            stream = MuxStream(self, self._next_id, destination)
            self._streams[stream.local_id] = stream
        self._send(A_OPEN, stream.local_id, 0, destination.encode() + b"\x00")
        if not stream.opened.wait(timeout_s):
            stream.close()
            raise MuxClosedError(f"{self.name}: no answer to OPEN {destination} in {timeout_s:.0f} s")
        if stream.refused:
            raise StreamRefusedError(f"{self.name}: device refused {destination}")
        if stream.closed.is_set() and not stream.remote_id:
            raise MuxClosedError(f"{self.name}: connection lost while opening {destination}")
        return stream

    def shell(self, command: str, timeout_s: float = STREAM_TIMEOUT_S) -> str:
        """Run a ``shell:`` command and return its output."""
        stream = self.open(f"shell:{command}", timeout_s)
        try:
            return stream.read_all(timeout_s).decode("utf-8", "replace")
        finally:
            stream.close()

    def close(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        with contextlib.suppress(Exception):
            self.transport.close()
        self._close_all_streams()

    # internals
    def _send(self, command: int, arg0: int, arg1: int, data: bytes = b"") -> None:
        if self.closed.is_set():
            raise MuxClosedError(f"{self.name}: adb connection closed")
        header = _HEADER.pack(command, arg0, arg1, len(data), sum(data) & 0xFFFFFFFF, command ^ 0xFFFFFFFF)
        try:
            with self._send_lock:
                self._write_all(header + data)
        except Exception as exc:  # noqa: BLE001 - any transport failure ends the connection
            self.close()
            raise MuxClosedError(f"{self.name}: adb connection lost ({exc})") from None

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            sent = self.transport.bulk_write(bytes(view[:1024 * 1024]), STREAM_TIMEOUT_S)
            view = view[sent if isinstance(sent, int) and sent > 0 else len(view):]

    def _read_exactly(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            if self.closed.is_set():
                raise MuxClosedError("closed")
            try:
                chunk = self.transport.bulk_read(n - len(buf), READ_POLL_S)
            except Exception as exc:
                if _is_timeout(exc):
                    continue
                raise
            if not chunk:
                raise MuxClosedError("end of stream")
            buf += chunk
        return bytes(buf)

    def _read_loop(self) -> None:
        try:
            while not self.closed.is_set():
                command, arg0, arg1, length, _check, magic = _HEADER.unpack(self._read_exactly(_HEADER.size))
                if magic != command ^ 0xFFFFFFFF:
                    raise MuxClosedError(f"corrupt message header (command {command:#x})")
                data = self._read_exactly(length) if length else b""
                self._dispatch(command, arg0, arg1, data)
        except Exception as exc:  # noqa: BLE001 - the reader ends on any failure, streams learn via close
            if not self.closed.is_set():
                _LOG.info("%s: adb connection lost: %s", self.name, exc)
        finally:
            self.close()

    def _dispatch(self, command: int, arg0: int, arg1: int, data: bytes) -> None:
        with self._streams_lock:
            stream = self._streams.get(arg1)
        if stream is None:
            return  # a message for a stream we already closed: protocol.txt says ignore it
        if command == A_OKAY:
            stream._on_okay(arg0)
        elif command == A_WRTE:
            stream._on_data(data)
            with contextlib.suppress(MuxClosedError):
                self._send(A_OKAY, stream.local_id, stream.remote_id)
        elif command == A_CLSE:
            if not stream.opened.is_set():
                stream.refused = True
            stream._mark_closed()

    def _forget(self, stream: MuxStream) -> None:
        with self._streams_lock:
            self._streams.pop(stream.local_id, None)

    def _close_all_streams(self) -> None:
        with self._streams_lock:
            streams = list(self._streams.values())
        for stream in streams:
            stream._mark_closed()


class AdbPortForwarder:
    """Listen on a host port; bridge each connection to the device's ``tcp:DEVICE_PORT``.

    Args:
        connect: returns a fresh :class:`AdbMux` (reconnecting and re-authenticating).
        device_port: the port on the device's loopback.
        local_host: where to listen on this host (loopback only by default: the agent's token
            is the only other guard).
        local_port: 0 picks a free port (read :attr:`local_port`).
    """

    def __init__(self, connect: Callable[[], AdbMux], device_port: int, local_host: str = "127.0.0.1",
                 local_port: int = 0) -> None:
        self._connect = connect
        self.device_port = device_port
        self._mux: AdbMux | None = None
        self._mux_lock = threading.Lock()
        self.connects = 0
        self._listener = socket.create_server((local_host, local_port))
        self.local_host = local_host
        self.local_port = self._listener.getsockname()[1]
        self.closed = threading.Event()
        self._sockets: set[socket.socket] = set()
        threading.Thread(target=self._accept_loop, daemon=True, name="adb-forward-accept").start()

    @property
    def reconnects(self) -> int:
        """How many times the adb connection was re-established after the first."""
        return max(0, self.connects - 1)

    def mux(self) -> AdbMux:
        """The live adb connection, reconnecting if it died.

        Raises:
            host.errors.DeployError subclasses from ``connect``.
        """
        with self._mux_lock:
            if self._mux is None or self._mux.closed.is_set():
                self._mux = self._connect()
                self.connects += 1
            return self._mux

    def close(self) -> None:
        self.closed.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        for sock in list(self._sockets):
            _shutdown(sock)
        with self._mux_lock:
            if self._mux is not None:
                self._mux.close()

    def _accept_loop(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._bridge, args=(client,), daemon=True, name="adb-forward").start()

    def _bridge(self, client: socket.socket) -> None:
        self._sockets.add(client)
        stream: MuxStream | None = None
        try:
            try:
                stream = self.mux().open(f"tcp:{self.device_port}")
            except Exception as exc:  # noqa: BLE001 - the client sees a closed socket; we log why
                # refused is expected while the agent starts (the health probe polls through here)
                level = logging.DEBUG if isinstance(exc, StreamRefusedError) else logging.WARNING
                _LOG.log(level, "forward to device tcp:%d failed: %s", self.device_port, exc)
                return
            up = threading.Thread(target=self._pump_up, args=(client, stream), daemon=True)
            up.start()
            while True:
                chunk = stream.read()
                if not chunk:
                    break
                client.sendall(chunk)
        except OSError:
            pass
        finally:
            _shutdown(client)
            self._sockets.discard(client)
            if stream is not None:
                stream.close()

    @staticmethod
    def _pump_up(client: socket.socket, stream: MuxStream) -> None:
        try:
            while True:
                data = client.recv(LOCAL_READ_BYTES)
                if not data:
                    break
                stream.write(data)
        except (OSError, MuxClosedError):
            pass
        finally:
            stream.close()


def _is_timeout(exc: Exception) -> bool:
    """A read that timed out with nothing to read: TCP's exception, or libusb's timeout under adb-shell's."""
    if isinstance(exc, TcpTimeoutException):
        return True
    usb_error = getattr(exc, "usb_error", None)
    return usb_error is not None and "timeout" in type(usb_error).__name__.lower()


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
