"""A simulated adbd: the real ADB wire protocol over TCP, running commands in a sandbox on this machine.

It lets the real ``adb-shell`` client (``AdbDeviceTcp`` + ``PythonRSASigner``) and the real agent be
exercised without a phone. What it implements, and the AOSP documents followed:

* Transport messages (``packages/modules/adb/protocol.txt``, formerly ``system/core/adb/protocol.txt``):
  a 24-byte header of six little-endian uint32 words ``command, arg0, arg1, data_length, data_check,
  magic`` with ``magic == command ^ 0xffffffff`` and ``data_check`` the byte sum of the payload
  (checked when the peer's version is below ``0x01000001``, which stopped sending it). A bad header,
  bad checksum or unknown command closes the connection, as the document requires. Messages before
  CNXN are ignored.
* ``CNXN(version, maxdata, "device::ro.product.name=...;features=...")`` after authentication.
* ``AUTH`` as in ``daemon/auth.cpp``: ``AUTH(TOKEN=1)`` carries 20 random bytes; an
  ``AUTH(SIGNATURE=2)`` is checked with RSA PKCS#1 v1.5 over the token as a SHA-1 digest
  (``RSA_verify(NID_sha1, token, ...)``) against every authorized key in Android's
  ``RSAPublicKey`` encoding (``libcrypto_utils/android_pubkey.c``); a failure sends a fresh token.
  ``AUTH(RSAPUBLICKEY=3)`` "shows the prompt": it is accepted only when the test says the user
  taps *Allow* (``DeviceConfig.accept_new_keys``); otherwise nothing is sent, like a locked phone.
* Streams: ``OPEN(local-id, 0, "service")`` answered by ``OKAY(local-id, remote-id)`` or
  ``CLSE(0, remote-id)``; ``WRTE`` needs an ``OKAY`` before the next ``WRTE`` on the same stream
  (both directions); ``CLSE`` ends a stream. ids are always relative to the sender.
* ``shell:CMD`` / ``exec:CMD`` (raw: output is the stream), and ``shell,v2:CMD`` / ``shell,v2,raw:``
  with the packet framing of ``shell_protocol.h`` (1-byte id + uint32 LE length; ids stdin 0,
  stdout 1, stderr 2, exit 3, close-stdin 4).
* ``sync:`` (``SYNC.TXT`` and ``daemon/file_sync_service.cpp``): 8-byte requests ``id + uint32 LE``;
  ``STAT`` (``STAT`` + mode, size, mtime), ``LIST`` (``DENT`` entries then ``DONE``),
  ``SEND path,mode`` + ``DATA`` chunks (at most 64 KiB each) + ``DONE(mtime)`` -> ``OKAY`` or
  ``FAIL``+message, ``RECV`` (``DATA``... ``DONE``), ``QUIT``.
* ``tcp:PORT`` / ``tcp:HOST:PORT``: a stream bridged to a real TCP socket on this machine (the
  device's loopback is this machine's loopback).

The "device" is a sandbox directory. Device paths under ``/data``, ``/sdcard``, ``/storage``,
``/system``, ``/vendor`` and ``/sys/class/thermal`` map into it, both for ``sync:`` and inside shell
command lines (and back, in command output). Shell commands run with ``/bin/sh`` and a ``PATH`` that
holds only ``ROOT/system/bin``: toybox-like links to this machine's tools, a ``getprop`` answering
from ``DeviceConfig.props``, a ``df`` reporting ``DeviceConfig.free_bytes``, and ``python3`` (this
machine's interpreter) only when ``DeviceConfig.python`` is set.

**Android-like arm64 mode** (``DeviceConfig.emulation``): the shell runs *inside* the sandbox, as on a
phone. ``proot -r ROOT -q qemu-aarch64-static`` gives every shell command a root that holds only
``/system/bin`` (an aarch64 static busybox standing in for toybox, plus the ``getprop``/``df``
scripts), ``/data`` (what was pushed), ``/sys/class/thermal`` and, bound from this machine, ``/proc``
(with a fake arm64 ``/proc/cpuinfo``) and the ``/dev/null``/``zero``/``random``/``urandom`` nodes:
no ``/lib``, ``/usr``, ``/etc/passwd``, ``/tmp`` or ``/dev/shm``, and ``PATH=/system/bin`` with no
``HOME``, ``TMPDIR`` or locale. Every aarch64 program, including one the agent starts itself, runs
under qemu-user: proot catches each ``execve`` (qemu-user alone cannot, without binfmt_misc, which is
machine-wide and needs privileges). proot adds two entries of its own, ``/host-rootfs`` (this machine,
for qemu) and ``/etc/ld.so.preload`` (bound to /dev/null); nothing on a standard path. Device paths
need no translation in this mode.

Every message in both directions is recorded in :attr:`AdbdSim.transcript`; an
:class:`ExchangeScript` lets a test state the exchanges it expects and check that every one was
consumed, as adb_shell's own tests do with their fake transport.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import queue
import re
import secrets
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

# --- wire constants (protocol.txt) -------------------------------------------------------------

A_SYNC, A_CNXN, A_AUTH = 0x434E5953, 0x4E584E43, 0x48545541
A_OPEN, A_OKAY, A_CLSE, A_WRTE, A_STLS = 0x4E45504F, 0x59414B4F, 0x45534C43, 0x45545257, 0x534C5453
COMMAND_NAMES = {A_SYNC: "SYNC", A_CNXN: "CNXN", A_AUTH: "AUTH", A_OPEN: "OPEN", A_OKAY: "OKAY",
                 A_CLSE: "CLSE", A_WRTE: "WRTE", A_STLS: "STLS"}
HEADER = struct.Struct("<6I")
#: The version adbd announces; 0x01000001 peers may skip the payload checksum (we accept both).
A_VERSION = 0x01000001
A_VERSION_SKIP_CHECKSUM = 0x01000001
#: maxdata adbd announces since Android 9 (protocol.txt: "maxdata=256*1024").
DEVICE_MAXDATA_BYTES = 256 * 1024
#: Older peers hard-coded 4096; a peer announcing less cannot talk to us.
MIN_PEER_MAXDATA_BYTES = 4096
AUTH_TOKEN, AUTH_SIGNATURE, AUTH_RSAPUBLICKEY = 1, 2, 3
#: adbd's token size (``atransport::token``: TOKEN_SIZE = 20, the length of a SHA-1 digest).
AUTH_TOKEN_BYTES = 20
#: Android's RSAPublicKey struct: n0inv, modulus, rr, exponent around a 2048-bit modulus.
ANDROID_PUBKEY_MODULUS_BYTES = 256
ANDROID_PUBKEY = struct.Struct(f"<II{ANDROID_PUBKEY_MODULUS_BYTES}s{ANDROID_PUBKEY_MODULUS_BYTES}sI")

# --- sync: (SYNC.TXT) -------------------------------------------------------------------------

SYNC_MAX_CHUNK_BYTES = 64 * 1024  # "Each chunk must not be larger than 64k."
SYNC_REQUEST = struct.Struct("<4sI")

# --- shell,v2 (shell_protocol.h) -------------------------------------------------------------

SHELL_ID_STDIN, SHELL_ID_STDOUT, SHELL_ID_STDERR, SHELL_ID_EXIT, SHELL_ID_CLOSE_STDIN = 0, 1, 2, 3, 4
SHELL_HEADER = struct.Struct("<BI")

#: Device path prefixes that live inside the sandbox root.
DEVICE_PREFIXES = ("/data", "/sdcard", "/storage", "/system", "/vendor", "/sys/class/thermal")
_PATH_RE = re.compile(r"(?<![\w/.~-])(" + "|".join(re.escape(p) for p in DEVICE_PREFIXES) + r")(?=/|\b|$)")
#: Tools a toybox ``/system/bin`` offers, linked from this machine when present.
TOYBOX_TOOLS = (
    "sh", "cat", "ls", "mkdir", "rm", "rmdir", "chmod", "echo", "printf", "kill", "sleep", "tail",
    "head", "uname", "id", "grep", "sed", "env", "test", "[", "true", "false", "ps", "mv", "cp", "ln",
    "stat", "cut", "tr", "wc", "nohup", "setsid", "touch", "date", "sort", "dirname", "basename",
    "readlink", "xargs", "find", "expr", "sha256sum", "timeout", "nproc", "seq", "tee", "tar", "gzip", "pwd",
)
#: How long a stream writer waits for the host's OKAY before giving up on the connection.
WRITE_ACK_TIMEOUT_S = 30.0


def default_props() -> dict[str, str]:
    """System properties of a plausible arm64 phone."""
    return {
        "ro.product.cpu.abi": "arm64-v8a",
        "ro.product.cpu.abilist": "arm64-v8a,armeabi-v7a,armeabi",
        "ro.build.version.release": "14",
        "ro.build.version.sdk": "34",
        "ro.product.model": "Pixel 8",
        "ro.product.manufacturer": "Google",
        "ro.product.name": "shiba",
        "ro.product.device": "shiba",
        "ro.soc.manufacturer": "Google",
        "ro.soc.model": "Tensor G3",
        "ro.board.platform": "zuma",
        "ro.hardware": "shiba",
    }


@dataclass
class Arm64Emulation:
    """How the Android-like arm64 mode runs (see the module docstring); the tools must be installed.

    Attributes:
        busybox: an aarch64 static busybox, copied to ``/system/bin`` as the device's toybox.
        qemu: the qemu-user binary for aarch64.
        cpu: the CPU qemu emulates (Cortex-A76: the ISA of recent phones' big cores and the Pi 5).
        proot: the proot binary.
    """

    busybox: Path
    qemu: str = "qemu-aarch64-static"
    cpu: str = "cortex-a76"
    proot: str = "proot"


#: A plausible /proc/cpuinfo of an arm64 phone; ai-edge-litert crashes reading this machine's x86 one.
ARM64_CPUINFO = "".join(
    f"processor\t: {i}\nBogoMIPS\t: 52.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp "
    "asimdhp cpuid asimdrdm lrcpc dcpop asimddp\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: "
    "0x4\nCPU part\t: 0xd0b\nCPU revision\t: 1\n\n" for i in range(2))
#: Printed with the exit status after each command in the arm64 mode: proot lives on while any process it
#: traces does (the agent a command started), so the end of its output cannot mark the command's end.
EXIT_SENTINEL = b"__ADBD_SIM_EXIT="
#: Environment variable marking every process of one simulated device (so stop() finds setsid'd ones).
DEVICE_MARKER_ENV = "ADBD_SIM_DEVICE"


@dataclass
class DeviceConfig:
    """What the simulated device looks like; tests change one field at a time.

    Attributes:
        serial: ``ro.serialno`` and the serial in the CNXN banner.
        props: system properties answered by ``getprop``.
        python: the interpreter that ``python3`` on the device runs (this machine's, by default);
            None means the device has no Python on its shell ``PATH``.
        authorized_keys: public keys in ``adb_keys`` format (base64 blob + " user@host").
        auth_required: False is ``ro.adb.secure=0`` (an emulator or userdebug build).
        accept_new_keys: the user taps *Allow* on the RSA prompt (adds the key, sends CNXN).
        free_bytes: space ``df`` reports and ``sync:`` enforces under ``/data``.
        thermal_zones: ``{type: millidegrees C}`` written under ``/sys/class/thermal``.
        maxdata: the maxdata announced in CNXN.
        emulation: run the shell in the Android-like arm64 environment (``python`` must then be None).
    """

    serial: str = "SIM0001"
    props: dict[str, str] = field(default_factory=default_props)
    python: str | None = sys.executable
    authorized_keys: list[str] = field(default_factory=list)
    auth_required: bool = True
    accept_new_keys: bool = False
    free_bytes: int = 8 * 1024**3
    thermal_zones: dict[str, int] = field(default_factory=lambda: {"cpu-big": 41000, "battery": 30500})
    maxdata: int = DEVICE_MAXDATA_BYTES
    emulation: Arm64Emulation | None = None


@dataclass(frozen=True)
class Exchange:
    """One message on the wire: ``direction`` is "host>" (received) or "dev<" (sent)."""

    direction: str
    command: str
    arg0: int
    arg1: int
    data: bytes

    def __repr__(self) -> str:
        return f"{self.direction}{self.command}({self.arg0:#x},{self.arg1:#x},{self.data[:40]!r})"


class ExchangeScript:
    """Expected exchanges, consumed in order as the simulator sees them.

    Each step is ``(direction, command)`` or ``(direction, command, predicate)`` where the predicate
    takes the :class:`Exchange`. Messages not matching the head of the script are ignored unless
    ``strict`` is set, in which case they are recorded in :attr:`errors`.
    """

    def __init__(self, steps: list[tuple], strict: bool = False) -> None:
        self.remaining = list(steps)
        self.strict = strict
        self.errors: list[str] = []
        self._lock = threading.Lock()

    def feed(self, exchange: Exchange) -> None:
        with self._lock:
            if not self.remaining:
                if self.strict:
                    self.errors.append(f"unexpected after end of script: {exchange!r}")
                return
            step = self.remaining[0]
            direction, command = step[0], step[1]
            predicate = step[2] if len(step) > 2 else None
            if exchange.direction == direction and exchange.command == command and (
                predicate is None or predicate(exchange)
            ):
                self.remaining.pop(0)
            elif self.strict:
                self.errors.append(f"expected {direction}{command}, got {exchange!r}")


# --- crypto helpers ---------------------------------------------------------------------------

def decode_android_pubkey(blob: str) -> rsa.RSAPublicKey:
    """Parse ``adb_keys``/RSAPUBLICKEY text: base64 of Android's RSAPublicKey, then " user@host".

    Raises:
        ValueError: not a 2048-bit key in that encoding.
    """
    raw = base64.b64decode(blob.strip().split()[0].rstrip("\x00"))
    if len(raw) != ANDROID_PUBKEY.size:
        raise ValueError(f"public key is {len(raw)} bytes, expected {ANDROID_PUBKEY.size}")
    size_words, _n0inv, modulus_le, _rr, exponent = ANDROID_PUBKEY.unpack(raw)
    if size_words != ANDROID_PUBKEY_MODULUS_BYTES // 4:
        raise ValueError(f"modulus is {size_words} words, expected {ANDROID_PUBKEY_MODULUS_BYTES // 4}")
    return rsa.RSAPublicNumbers(exponent, int.from_bytes(modulus_le, "little")).public_key()


def verify_token_signature(public_key: rsa.RSAPublicKey, token: bytes, signature: bytes) -> bool:
    """``RSA_verify(NID_sha1, token, sig)``: PKCS#1 v1.5 with the token standing in for a SHA-1 digest."""
    try:
        public_key.verify(signature, token, padding.PKCS1v15(), Prehashed(hashes.SHA1()))
    except (InvalidSignature, ValueError):
        return False
    return True


def pack_message(command: int, arg0: int, arg1: int, data: bytes = b"") -> bytes:
    """A 24-byte header (with checksum and magic) followed by the payload."""
    return HEADER.pack(command, arg0, arg1, len(data), sum(data) & 0xFFFFFFFF, command ^ 0xFFFFFFFF) + data


def read_message(sock: socket.socket, check_checksum: bool = True) -> tuple[int, int, int, bytes]:
    """Read one message; raises ValueError on a malformed one, ConnectionError on EOF."""
    header = _recv_exactly(sock, HEADER.size)
    command, arg0, arg1, length, check, magic = HEADER.unpack(header)
    if command not in COMMAND_NAMES or magic != command ^ 0xFFFFFFFF:
        raise ValueError(f"bad header: command {command:#x} magic {magic:#x}")
    data = _recv_exactly(sock, length) if length else b""
    if check_checksum and (sum(data) & 0xFFFFFFFF) != check:
        raise ValueError(f"bad checksum on {COMMAND_NAMES[command]}")
    return command, arg0, arg1, data


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("peer closed the connection")
        buf += chunk
    return bytes(buf)


# --- the sandboxed device ---------------------------------------------------------------------

class Sandbox:
    """The device's file system and shell environment, rooted in a directory on this machine."""

    def __init__(self, root: Path, config: DeviceConfig) -> None:
        self.root = Path(root).resolve()
        self.config = config
        self.bin_dir = self.root / "system" / "bin"
        self._build()

    def _build(self) -> None:
        for sub in ("data/local/tmp", "sdcard", "system/bin", "vendor", "sys/class/thermal"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        emulation = self.config.emulation
        if emulation is not None:
            if self.config.python:
                raise ValueError("the arm64 emulation has no device Python: set DeviceConfig.python=None")
            busybox = self.bin_dir / "busybox"
            shutil.copyfile(emulation.busybox, busybox)
            busybox.chmod(0o755)
            for tool in TOYBOX_TOOLS:
                link = self.bin_dir / tool
                if not link.is_symlink():
                    link.symlink_to("busybox")
            self.cpuinfo_path.write_text(ARM64_CPUINFO)
            # Debian's busybox has no nohup applet (Android's toybox does): the same in sh.
            self._write_script("nohup", "trap '' HUP\nexec \"$@\"\n")
        for tool in TOYBOX_TOOLS if emulation is None else ():
            target = shutil.which(tool, path="/usr/bin:/bin:/usr/sbin:/sbin")
            link = self.bin_dir / tool
            if target and not link.exists():
                link.symlink_to(target)
        self.write_props()
        free_kb = self.config.free_bytes // 1024
        self._write_script("df", (
            'echo "Filesystem 1K-blocks Used Available Use% Mounted on"\n'
            f'echo "/dev/block/dm-48 {free_kb * 2} {free_kb} {free_kb} 50% /data"\n'))
        python_link = self.bin_dir / "python3"
        if self.config.python and emulation is None:
            self._write_script("python3", f'exec "{self.config.python}" "$@"\n')
        elif python_link.exists() or python_link.is_symlink():
            python_link.unlink()
        for i, (kind, milli_c) in enumerate(self.config.thermal_zones.items()):
            zone = self.root / "sys/class/thermal" / f"thermal_zone{i}"
            zone.mkdir(parents=True, exist_ok=True)
            (zone / "type").write_text(kind + "\n")
            (zone / "temp").write_text(f"{milli_c}\n")

    def write_props(self) -> None:
        """(Re)write ``getprop`` from the config's props, as a POSIX sh script (no Python needed)."""
        props = dict(self.config.props)
        props.setdefault("ro.serialno", self.config.serial)
        cases = "".join(f"  {_sh_quote(k)}) echo {_sh_quote(v)} ;;\n" for k, v in sorted(props.items()))
        listing = "".join(f"echo {_sh_quote(f'[{k}]: [{v}]')}\n" for k, v in sorted(props.items()))
        self._write_script("getprop", (
            'if [ $# -eq 0 ]; then\n' + listing + 'exit 0\nfi\ncase "$1" in\n' + cases + '  *) echo "" ;;\nesac\n'))

    def _write_script(self, name: str, body: str) -> None:
        path = self.bin_dir / name
        if path.is_symlink():
            path.unlink()
        shell = "/system/bin/sh" if self.config.emulation is not None else "/bin/sh"
        path.write_text(f"#!{shell}\n" + body)
        path.chmod(0o755)

    def host_path(self, device_path: str) -> Path:
        """Where a device path lives on this machine; paths outside the sandbox map under it too."""
        clean = os.path.normpath("/" + device_path.lstrip("/"))
        return self.root / clean.lstrip("/")

    @property
    def cpuinfo_path(self) -> Path:
        """The fake /proc/cpuinfo of the arm64 mode (outside the root: the device cannot see the file itself)."""
        return self.root.parent / f"{self.root.name}.cpuinfo"

    def translate_command(self, command: str) -> str:
        if self.config.emulation is not None:
            return command  # the shell runs inside the root: device paths are real paths there
        return _PATH_RE.sub(lambda m: str(self.root) + m.group(1), command)

    def untranslate_output(self, data: bytes) -> bytes:
        if self.config.emulation is not None:
            return data
        return data.replace(str(self.root).encode(), b"")

    def shell_argv(self, command: str) -> list[str]:
        """The host command running one device shell command (``/bin/sh -c``, or inside the arm64 root)."""
        emulation = self.config.emulation
        if emulation is None:
            return ["/bin/sh", "-c", self.translate_command(command)]
        binds = ["/proc", f"{self.cpuinfo_path}:/proc/cpuinfo", "/dev/null", "/dev/zero", "/dev/random",
                 "/dev/urandom"]
        # Absolute paths: the device's PATH (/system/bin) is what Popen would search.
        proot, qemu = (shutil.which(t) or t for t in (emulation.proot, emulation.qemu))
        return [proot, "-r", str(self.root), "-q", f"{qemu} -cpu {emulation.cpu}",
                *(a for b in binds for a in ("-b", b)), "-w", "/data/local/tmp",
                "/system/bin/sh", "-c", f'/system/bin/sh -c "$1"; echo "{EXIT_SENTINEL.decode()}$?"', "sh", command]

    def shell_cwd(self) -> Path:
        return self.root / "data/local/tmp"

    def env(self) -> dict[str, str]:
        if self.config.emulation is not None:
            # What an adb shell on a phone has that matters here; no HOME, TMPDIR or LANG.
            return {"PATH": "/system/bin", "ANDROID_DATA": "/data", "ANDROID_ROOT": "/system",
                    DEVICE_MARKER_ENV: str(self.root)}
        return {
            "PATH": str(self.bin_dir),
            "HOME": str(self.root / "data/local/tmp"),
            "TMPDIR": str(self.root / "data/local/tmp"),
            "ANDROID_DATA": str(self.root / "data"),
            "ANDROID_ROOT": str(self.root / "system"),
            "LANG": "C.UTF-8",
        }

    def used_bytes(self) -> int:
        return sum(p.stat().st_size for p in (self.root / "data").rglob("*") if p.is_file() and not p.is_symlink())


def _sh_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


# --- streams ----------------------------------------------------------------------------------

class _Stream:
    """One open stream: the service on the device side of a host ``OPEN``."""

    def __init__(self, conn: _Connection, local_id: int, remote_id: int) -> None:
        self.conn = conn
        self.local_id = local_id
        self.remote_id = remote_id
        self.closed = threading.Event()
        self._can_write = threading.Event()
        self._can_write.set()  # the host's OPEN "implies a READY message": the first WRTE may go at once
        # Output goes through a queue and one writer thread, so the connection's reader thread never
        # blocks waiting for the host's OKAY (it is the thread that would deliver it).
        self._outbox: queue.Queue[bytes | None] = queue.Queue()
        self._writer: threading.Thread | None = None
        self._state_lock = threading.Lock()
        self._closing = False

    # device -> host
    def send(self, data: bytes) -> None:
        """Queue data as WRTE messages; one goes out per OKAY from the host (protocol.txt flow control)."""
        step = max(1, min(self.conn.peer_maxdata, self.conn.config.maxdata))
        with self._state_lock:
            if self._closing:
                return
            for start in range(0, len(data), step):
                self._outbox.put(data[start:start + step])
            self._ensure_writer()

    def _ensure_writer(self) -> None:
        if self._writer is None:
            self._writer = threading.Thread(target=self._write_loop, daemon=True, name="adbd-sim-writer")
            self._writer.start()

    def _write_loop(self) -> None:
        while True:
            item = self._outbox.get()
            if item is None:
                self._finish_close(notify_host=True)
                return
            if not self._can_write.wait(WRITE_ACK_TIMEOUT_S) or self.closed.is_set():
                return
            self._can_write.clear()
            self.conn.send(A_WRTE, self.local_id, self.remote_id, item)

    def on_okay(self) -> None:
        self._can_write.set()

    def abort(self, reply: bool) -> None:
        """Close at once, dropping queued output (the host closed, or the connection died)."""
        self._finish_close(notify_host=reply)

    def close(self) -> None:
        """Close from the device side once queued output has gone out."""
        with self._state_lock:
            if self._closing:
                return
            self._closing = True
            self._outbox.put(None)
            self._ensure_writer()

    def _finish_close(self, notify_host: bool) -> None:
        with self._state_lock:
            if self.closed.is_set():
                return
            self._closing = True
            self.closed.set()
        self._can_write.set()
        self._outbox.put(None)  # wake a writer waiting on an empty queue
        self.conn.forget(self)
        if notify_host:
            self.conn.send(A_CLSE, self.local_id, self.remote_id)
        self.on_closed()

    # host -> device
    def on_data(self, data: bytes) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def on_closed(self) -> None:
        """Release resources; called once, whoever closed the stream."""

    def start(self) -> None:
        """Begin producing output (called after OKAY for the OPEN was sent)."""


class _ShellStream(_Stream):
    """``shell:``/``exec:`` (raw) or ``shell,v2:`` (packets): ``/bin/sh -c`` in the sandbox."""

    def __init__(self, conn: _Connection, local_id: int, remote_id: int, command: str, v2: bool) -> None:
        super().__init__(conn, local_id, remote_id)
        self.v2 = v2
        self._v2_in = bytearray()
        sandbox = conn.sim.sandbox
        self.proc = subprocess.Popen(
            sandbox.shell_argv(command or "exit 0"),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE if v2 else subprocess.STDOUT,
            cwd=sandbox.shell_cwd(), env=sandbox.env(), start_new_session=True,
        )
        conn.sim.processes.append(self.proc)
        # arm64 mode: the command's end is the sentinel line (see EXIT_SENTINEL), not the pipe closing.
        self._sentinel = EXIT_SENTINEL if sandbox.config.emulation is not None else None
        self._exit_code: int | None = None

    def start(self) -> None:
        threading.Thread(target=self._pump, daemon=True, name="adbd-sim-shell").start()

    def _pump(self) -> None:
        readers = [threading.Thread(target=self._pump_one, args=(self.proc.stdout, SHELL_ID_STDOUT), daemon=True)]
        if self.v2:
            readers.append(threading.Thread(target=self._pump_one, args=(self.proc.stderr, SHELL_ID_STDERR),
                                            daemon=True))
        for r in readers:
            r.start()
        readers[0].join()
        for r in readers[1:]:
            r.join(None if self._sentinel is None else 0.5)  # proot may keep stderr open for a daemon
        code = self._exit_code if self._exit_code is not None else self.proc.wait()
        if self.v2 and not self.closed.is_set():
            self.send(SHELL_HEADER.pack(SHELL_ID_EXIT, 1) + bytes([code & 0xFF]))
        self.close()

    def _pump_one(self, pipe, shell_id: int) -> None:
        untranslate = self.conn.sim.sandbox.untranslate_output
        sentinel = self._sentinel if shell_id == SHELL_ID_STDOUT else None
        held = b""  # arm64 mode: output that may be the start of the sentinel
        while True:
            chunk = os.read(pipe.fileno(), 64 * 1024)
            if not chunk or self.closed.is_set():
                if held:
                    self._emit(shell_id, held)
                return
            if sentinel is None:
                self._emit(shell_id, untranslate(chunk))
                continue
            held += chunk
            at = held.find(sentinel)
            if at >= 0 and b"\n" in held[at:]:
                status = held[at + len(sentinel):].split(b"\n", 1)[0]
                self._emit(shell_id, held[:at])
                self._exit_code = int(status) if status.strip().isdigit() else 255
                return
            if at < 0:  # send all but a tail that could be the sentinel's beginning
                keep = max(0, len(held) - len(sentinel))
                self._emit(shell_id, held[:keep])
                held = held[keep:]

    def _emit(self, shell_id: int, data: bytes) -> None:
        if data:
            self.send(SHELL_HEADER.pack(shell_id, len(data)) + data if self.v2 else data)

    def on_data(self, data: bytes) -> None:
        if not self.v2:
            self._write_stdin(data)
            return
        self._v2_in += data
        while len(self._v2_in) >= SHELL_HEADER.size:
            shell_id, length = SHELL_HEADER.unpack_from(self._v2_in)
            if len(self._v2_in) < SHELL_HEADER.size + length:
                return
            payload = bytes(self._v2_in[SHELL_HEADER.size:SHELL_HEADER.size + length])
            del self._v2_in[:SHELL_HEADER.size + length]
            if shell_id == SHELL_ID_STDIN:
                self._write_stdin(payload)
            elif shell_id == SHELL_ID_CLOSE_STDIN:
                self._close_stdin()

    def _write_stdin(self, data: bytes) -> None:
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass

    def _close_stdin(self) -> None:
        with contextlib.suppress(BrokenPipeError, ValueError):
            self.proc.stdin.close()

    def on_closed(self) -> None:
        # adbd kills the subprocess when its stream goes away; a setsid'd child escapes, as on a device.
        # In the arm64 mode a finished command leaves proot tracing what it started: leave it be.
        if self.proc.poll() is None and self._exit_code is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, 9)
        self._close_stdin()


class _SyncStream(_Stream):
    """``sync:`` (SYNC.TXT): STAT, LIST, SEND, RECV, QUIT over 8-byte requests."""

    def __init__(self, conn: _Connection, local_id: int, remote_id: int) -> None:
        super().__init__(conn, local_id, remote_id)
        self._buf = bytearray()
        self._send_path: Path | None = None
        self._send_mode = 0o644
        self._send_data = bytearray()
        self._lock = threading.Lock()

    def on_data(self, data: bytes) -> None:
        with self._lock:
            self._buf += data
            while self._step():
                pass

    def _take(self, n: int) -> bytes | None:
        if len(self._buf) < n:
            return None
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def _step(self) -> bool:
        if len(self._buf) < SYNC_REQUEST.size:
            return False
        rid, length = SYNC_REQUEST.unpack_from(self._buf)
        sandbox = self.conn.sim.sandbox
        if self._send_path is not None:  # inside SEND: DATA chunks until DONE
            if rid == b"DATA":
                if length > SYNC_MAX_CHUNK_BYTES:
                    self._fail(f"DATA chunk of {length} bytes exceeds {SYNC_MAX_CHUNK_BYTES}")
                    return False
                if len(self._buf) < SYNC_REQUEST.size + length:
                    return False
                self._take(SYNC_REQUEST.size)
                self._send_data += self._take(length)
                return True
            if rid == b"DONE":
                self._take(SYNC_REQUEST.size)
                self._finish_send(mtime=length)
                return True
            self._fail(f"unexpected {rid!r} during SEND")
            return False
        if rid == b"QUIT":
            self._take(SYNC_REQUEST.size)
            self.close()
            return False
        if rid not in (b"STAT", b"LIST", b"SEND", b"RECV"):
            self._fail(f"unknown sync request {rid!r}")
            return False
        if len(self._buf) < SYNC_REQUEST.size + length:
            return False
        self._take(SYNC_REQUEST.size)
        path_arg = self._take(length).decode("utf-8", "replace")
        if rid == b"STAT":
            try:
                st = os.stat(sandbox.host_path(path_arg))
                reply = struct.pack("<4s3I", b"STAT", st.st_mode, st.st_size & 0xFFFFFFFF, int(st.st_mtime))
            except OSError:
                reply = struct.pack("<4s3I", b"STAT", 0, 0, 0)
            self.send(reply)
        elif rid == b"LIST":
            out = bytearray()
            directory = sandbox.host_path(path_arg)
            names = [".", ".."] + (sorted(os.listdir(directory)) if directory.is_dir() else [])
            for name in names:
                try:
                    st = os.stat(directory / name)
                except OSError:
                    continue
                raw = name.encode()
                out += struct.pack("<4s4I", b"DENT", st.st_mode, st.st_size & 0xFFFFFFFF, int(st.st_mtime),
                                   len(raw)) + raw
            out += struct.pack("<4s4I", b"DONE", 0, 0, 0, 0)
            self.send(bytes(out))
        elif rid == b"SEND":
            path, _, mode = path_arg.rpartition(",")
            if not path:
                self._fail(f"SEND without a mode: {path_arg!r}")
                return False
            self._send_path = sandbox.host_path(path)
            self._send_mode = int(mode) & 0o7777 if mode.isdigit() else 0o644
            self._send_data = bytearray()
        elif rid == b"RECV":
            try:
                content = sandbox.host_path(path_arg).read_bytes()
            except OSError as exc:
                self.send(_sync_fail(f"{path_arg}: {exc.strerror}"))
                return True
            out = bytearray()
            for i in range(0, len(content), SYNC_MAX_CHUNK_BYTES):
                chunk = content[i:i + SYNC_MAX_CHUNK_BYTES]
                out += SYNC_REQUEST.pack(b"DATA", len(chunk)) + chunk
            out += SYNC_REQUEST.pack(b"DONE", 0)
            self.send(bytes(out))
        return True

    def _finish_send(self, mtime: int) -> None:
        path, data = self._send_path, bytes(self._send_data)
        self._send_path, self._send_data = None, bytearray()
        sandbox = self.conn.sim.sandbox
        if sandbox.used_bytes() + len(data) > sandbox.config.free_bytes:
            self.send(_sync_fail("write failed: No space left on device"))
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)  # adbd's secure_mkdirs
            tmp = path.with_name(path.name + ".adbd-sim-tmp")
            tmp.write_bytes(data)
            os.chmod(tmp, self._send_mode)
            os.utime(tmp, (mtime, mtime))
            os.replace(tmp, path)
        except OSError as exc:
            self.send(_sync_fail(f"{exc.strerror}"))
            return
        self.conn.sim.pushed[str(path.relative_to(sandbox.root))] = hashlib.sha256(data).hexdigest()
        self.send(SYNC_REQUEST.pack(b"OKAY", 0))

    def _fail(self, message: str) -> None:
        self.send(_sync_fail(message))
        self.close()


def _sync_fail(message: str) -> bytes:
    raw = message.encode()
    return SYNC_REQUEST.pack(b"FAIL", len(raw)) + raw


class _TcpStream(_Stream):
    """``tcp:PORT``: bridged to a socket on this machine's loopback."""

    def __init__(self, conn: _Connection, local_id: int, remote_id: int, sock: socket.socket) -> None:
        super().__init__(conn, local_id, remote_id)
        self.sock = sock

    def start(self) -> None:
        threading.Thread(target=self._pump, daemon=True, name="adbd-sim-tcp").start()

    def _pump(self) -> None:
        while not self.closed.is_set():
            try:
                chunk = self.sock.recv(64 * 1024)
            except OSError:
                chunk = b""
            if not chunk:
                break
            self.send(chunk)
        self.close()

    def on_data(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError:
            self.close()

    def on_closed(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


# --- a connection (one adb transport) ---------------------------------------------------------

class _Connection:
    def __init__(self, sim: AdbdSim, sock: socket.socket) -> None:
        self.sim = sim
        self.config = sim.config
        self.sock = sock
        self.peer_version = 0
        self.peer_maxdata = MIN_PEER_MAXDATA_BYTES
        self.online = False
        self.token = b""
        self.streams: dict[int, _Stream] = {}
        self._next_id = 1
        self._send_lock = threading.Lock()
        self._streams_lock = threading.Lock()
        self.closed = threading.Event()

    def send(self, command: int, arg0: int, arg1: int, data: bytes = b"") -> None:
        self.sim.record(Exchange("dev<", COMMAND_NAMES[command], arg0, arg1, data))
        with self._send_lock:
            try:
                self.sock.sendall(pack_message(command, arg0, arg1, data))
            except OSError:
                self.closed.set()

    def forget(self, stream: _Stream) -> None:
        with self._streams_lock:
            self.streams.pop(stream.local_id, None)

    def serve(self) -> None:
        try:
            while not self.closed.is_set():
                check = self.peer_version < A_VERSION_SKIP_CHECKSUM
                command, arg0, arg1, data = read_message(self.sock, check_checksum=check)
                self.sim.record(Exchange("host>", COMMAND_NAMES[command], arg0, arg1, data))
                self._dispatch(command, arg0, arg1, data)
        except ValueError as exc:  # protocol.txt: a corrupt message MUST close the connection
            self.sim.errors.append(str(exc))
        except (ConnectionError, OSError):
            pass
        finally:
            self.close()

    def close(self) -> None:
        self.closed.set()
        with self._streams_lock:
            streams = list(self.streams.values())
        for stream in streams:
            stream.abort(reply=False)
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()

    def _dispatch(self, command: int, arg0: int, arg1: int, data: bytes) -> None:
        if command == A_CNXN:
            if arg1 < MIN_PEER_MAXDATA_BYTES:
                raise ConnectionError(f"peer maxdata {arg1} too small")
            self.peer_version, self.peer_maxdata = arg0, arg1
            if not self.config.auth_required:
                self._go_online()
            else:
                self._send_token()
            return
        if command == A_AUTH and self.peer_version:
            self._on_auth(arg0, data)
            return
        if not self.online:
            return  # "Any messages received before a CONNECT message MUST be ignored."
        if command == A_OPEN:
            self._on_open(arg0, data.rstrip(b"\x00").decode("utf-8", "replace"))
            return
        with self._streams_lock:
            stream = self.streams.get(arg1)
        if stream is None:
            return  # "...does not map to an open stream on the recipient's side is ignored"
        if command == A_OKAY:
            stream.remote_id = arg0
            stream.on_okay()
        elif command == A_WRTE:
            # Ready for more as soon as it is received (protocol.txt allows acking before delivery);
            # the ack must precede any reply, which adb-shell reads only after its OKAY.
            self.send(A_OKAY, stream.local_id, stream.remote_id)
            stream.on_data(data)
        elif command == A_CLSE:
            # protocol.txt says not to respond, but adbd's socket teardown does send a CLSE back
            # (local_socket_close -> remote_socket_close), and adb-shell's _clse() waits for it.
            stream.abort(reply=True)

    def _send_token(self) -> None:
        self.token = secrets.token_bytes(AUTH_TOKEN_BYTES)
        self.send(A_AUTH, AUTH_TOKEN, 0, self.token)

    def _on_auth(self, kind: int, data: bytes) -> None:
        if self.online:
            return
        if kind == AUTH_SIGNATURE:
            for key_text in list(self.sim.authorized_keys):
                try:
                    key = decode_android_pubkey(key_text)
                except ValueError:
                    continue
                if verify_token_signature(key, self.token, data):
                    self.sim.auth_log.append("signature-accepted")
                    self._go_online()
                    return
            self.sim.auth_log.append("signature-rejected")
            self._send_token()  # "replies with a new AUTH packet and a new random token"
        elif kind == AUTH_RSAPUBLICKEY:
            key_text = data.rstrip(b"\x00").decode("ascii", "replace")
            try:
                decode_android_pubkey(key_text)
            except ValueError:
                self.sim.auth_log.append("public-key-malformed")
                return
            self.sim.prompted_keys.append(key_text)
            if self.config.accept_new_keys:
                self.sim.auth_log.append("public-key-accepted")
                self.sim.authorized_keys.append(key_text)
                self._go_online()
            else:
                self.sim.auth_log.append("public-key-prompt-ignored")

    def _go_online(self) -> None:
        self.online = True
        props = self.config.props
        banner = (f"device::ro.product.name={props.get('ro.product.name', '')};"
                  f"ro.product.model={props.get('ro.product.model', '')};"
                  f"ro.product.device={props.get('ro.product.device', '')};"
                  "features=shell_v2,cmd,stat_v2,abb_exec\x00")
        self.send(A_CNXN, A_VERSION, self.config.maxdata, banner.encode())

    def _on_open(self, remote_id: int, service: str) -> None:
        if remote_id == 0:
            return
        local_id = self._next_id
        self._next_id += 1
        self.sim.services_opened.append(service)
        stream: _Stream | None = None
        if service.startswith(("shell,v2", "shell,raw,v2")) and ":" in service:
            stream = _ShellStream(self, local_id, remote_id, service.split(":", 1)[1], v2=True)
        elif service.startswith(("shell:", "exec:")):
            stream = _ShellStream(self, local_id, remote_id, service.split(":", 1)[1], v2=False)
        elif service == "sync:":
            stream = _SyncStream(self, local_id, remote_id)
        elif service.startswith("tcp:"):
            parts = service.split(":")
            host, port = ("127.0.0.1", parts[1]) if len(parts) == 2 else (parts[1], parts[2])
            try:
                sock = socket.create_connection((host, int(port)), timeout=5)
                sock.settimeout(None)
                stream = _TcpStream(self, local_id, remote_id, sock)
            except (OSError, ValueError):
                stream = None
        if stream is None:
            self.send(A_CLSE, 0, remote_id)  # "the local-id MAY be zero if this CLOSE indicates a failed OPEN"
            return
        with self._streams_lock:
            self.streams[local_id] = stream
        self.send(A_OKAY, local_id, remote_id)
        stream.start()


def _pids_with_env(name: str, value: str) -> list[str]:
    """Processes whose environment has ``name=value`` (the arm64 mode's device processes run under qemu,
    whose command lines do not name the sandbox)."""
    needle = f"{name}={value}".encode() + b"\0"
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and entry != str(os.getpid()):
            with contextlib.suppress(OSError), open(f"/proc/{entry}/environ", "rb") as f:
                if needle in f.read():
                    found.append(entry)
    return found


class AdbdSim:
    """A simulated adbd listening on 127.0.0.1; use as a context manager.

    Attributes:
        transcript: every message both ways, in order.
        auth_log: what happened at each AUTH step ("signature-accepted", ...).
        services_opened: every OPEN destination.
        pushed: sandbox-relative path -> sha256 of each file written by ``sync: SEND``.
        errors: protocol violations seen (bad header, bad checksum).
    """

    def __init__(self, root: Path | str, config: DeviceConfig | None = None,
                 script: ExchangeScript | None = None) -> None:
        self.config = config or DeviceConfig()
        self.sandbox = Sandbox(Path(root), self.config)
        self.authorized_keys: list[str] = list(self.config.authorized_keys)
        self.script = script
        self.transcript: list[Exchange] = []
        self.auth_log: list[str] = []
        self.prompted_keys: list[str] = []
        self.services_opened: list[str] = []
        self.pushed: dict[str, str] = {}
        self.errors: list[str] = []
        self.processes: list[subprocess.Popen] = []
        self._connections: list[_Connection] = []
        self._listener: socket.socket | None = None
        self._lock = threading.Lock()
        self.host = "127.0.0.1"
        self.port = 0
        self.accepting = True  # False: every new connection is closed at once (the device is out of reach)
        self.refused_connections = 0

    def record(self, exchange: Exchange) -> None:
        with self._lock:
            self.transcript.append(exchange)
        if self.script is not None:
            self.script.feed(exchange)

    def start(self) -> AdbdSim:
        self._listener = socket.create_server((self.host, 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept_loop, daemon=True, name="adbd-sim-accept").start()
        return self

    def _accept_loop(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            if not self.accepting:
                self.refused_connections += 1
                sock.close()
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Connection(self, sock)
            with self._lock:
                self._connections.append(conn)
            threading.Thread(target=conn.serve, daemon=True, name="adbd-sim-conn").start()

    def drop_connections(self) -> int:
        """Cut every live adb connection (a pulled cable or lost Wi-Fi); returns how many were cut."""
        with self._lock:
            live = [c for c in self._connections if not c.closed.is_set()]
        for conn in live:
            conn.close()
        return len(live)

    @property
    def live_connections(self) -> int:
        with self._lock:
            return sum(1 for c in self._connections if not c.closed.is_set())

    def kill_device_processes(self) -> None:
        """Kill everything the device shell started, including setsid'd daemons (a reboot)."""
        for proc in self.processes:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, 9)
        pids = subprocess.run(["pgrep", "-f", str(self.sandbox.root)], capture_output=True, text=True).stdout.split()
        pids += _pids_with_env(DEVICE_MARKER_ENV, str(self.sandbox.root))
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError, PermissionError):
                os.kill(int(pid), 9)

    def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()
        self.drop_connections()
        self.kill_device_processes()

    def __enter__(self) -> AdbdSim:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def wait_for(self, predicate: Callable[[], bool], timeout_s: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.02)
        return predicate()
