"""Deploy ``dflare-agent`` to an Android device over adb, with adb-shell (no ``adb`` binary needed).

The lifecycle, spelled out once (as Mobly's ``ClientBase.initialize``)::

    connect -> check device -> push bundle + token -> start agent -> forward port -> health check

Each stage raises its own :class:`host.errors.DeviceDeployError` subclass, whose message starts with
the device (``adb://SERIAL``) and says what to do. Only failures at the start, forward and health
stages trigger :meth:`AdbDeployment.stop` (the agent process exists from then on); earlier stages
leave nothing running. ``stop`` kills the agent, deletes its token and closes the forward.

One adb connection is live at a time: the stages use adb-shell's ``AdbDevice`` (shell + sync push),
which is then closed, and the forwarder (:mod:`host.deploy.adb_forward`) opens its own connection.
That is what a USB device allows, and the forwarder reconnects by itself when the link drops.

On a stock ``arm64-v8a`` phone (no Python) the push is the self-contained runtime
(:mod:`host.deploy.runtime_bundle`: its own loader, libc, CPython and wheels), unpacked into
``DEVICE_DIR/runtime``. It is pushed only when the device's copy differs (its marker file holds the
tarball's sha256), and replaced whole: the tarball goes to ``runtime.staging``, is checked and
unpacked there, the marker is written last, then the directory is renamed into place. The agent is
started only from a runtime whose marker matches, so a half-pushed runtime never runs. With
``--python`` (Termux, a rooted device), or on other ABIs, the agent zipapp runs on the device's Python.

The agent runs from ``/data/local/tmp/dflare`` (the directory the adb shell user may write), bound
to the device's loopback on a random port with a fresh random token pushed as a 0600 file (never on a
command line, where ``ps`` would show it). Shell commands report their exit status through a marker
line, because adb-shell 0.4.4 speaks only the v1 ``shell:`` service, which carries no exit code.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import secrets
import shlex
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from adb_shell.adb_device import AdbDevice
from adb_shell.auth.keygen import keygen
from adb_shell.auth.sign_pythonrsa import PythonRSASigner
from adb_shell.exceptions import (
    AdbCommandFailureException,
    AdbConnectionError,
    AdbTimeoutError,
    DeviceAuthError,
    InvalidResponseError,
    PushFailedError,
    TcpTimeoutException,
)
from adb_shell.transport.base_transport import BaseTransport
from adb_shell.transport.tcp_transport import TcpTransport

from host.deploy.adb_forward import AdbMux, AdbPortForwarder, MuxClosedError
from host.deploy.bundle import BUNDLE_NAME, NATIVE_REQUIREMENTS, PLATFORMS, Bundle, build_bundle, platform_for_abi
from host.deploy.runtime_bundle import PLATFORM as RUNTIME_PLATFORM
from host.deploy.runtime_bundle import PYTHON_VERSION as RUNTIME_PYTHON
from host.deploy.runtime_bundle import RuntimeBundle, agent_command, build_runtime
from host.errors import (
    AgentStartError,
    ConfigError,
    DeviceCheckError,
    DeviceConnectError,
    DeviceNotAuthorizedError,
    ForwardError,
    NoPythonError,
    PushError,
    UnsupportedAbiError,
)

_LOG = logging.getLogger(__name__)

#: Where the agent lives on the device: the one directory the adb shell user can write everywhere.
DEFAULT_DEVICE_DIR = "/data/local/tmp/dflare"
#: The default adb port for network (``adb tcpip``) devices.
DEFAULT_ADB_PORT = 5555
#: Interpreters tried in order when none is given: the shell PATH, a standalone CPython pushed next
#: to the agent (python.org's Android builds), then Termux's (readable from adb only as root).
PYTHON_CANDIDATES = ("python3", "python", "{device_dir}/python/bin/python3",
                     "/data/data/com.termux/files/usr/bin/python3")
#: Oldest Python the agent supports (pyproject's requires-python: the generated protobuf code needs
#: protobuf 7, which needs Python 3.10).
MIN_PYTHON = (3, 10)
#: Android 7.0 (API 24): the oldest release CPython's Android support (PEP 738) and toybox's setsid cover.
MIN_SDK = 24
#: Room for the model cache beyond the bundle: a few small models and the agent log.
MODEL_CACHE_HEADROOM_BYTES = 64 * 1024 * 1024
#: Random device ports come from this range: above most well-known services, below the
#: kernel's ephemeral range on Android (32768+ is ephemeral; collisions there would be transient).
DEVICE_PORT_RANGE = (20000, 32000)
#: How long the user has to tap "Allow USB debugging" when the device does not know our key yet.
DEFAULT_AUTH_TIMEOUT_S = 30.0
#: One socket read/write on the adb transport.
DEFAULT_TRANSPORT_TIMEOUT_S = 10.0
#: One shell command (getprop, df, sha256sum, kill): generous for a busy phone.
SHELL_TIMEOUT_S = 60.0
#: From starting the agent to a healthy answer: importing numpy + grpc + the TFLite runtime takes
#: 1-3 s on a phone and about 3 s under qemu; a cold flash cache can add several seconds.
DEFAULT_START_TIMEOUT_S = 60.0
#: Delay between health probes while the agent starts.
HEALTH_POLL_INTERVAL_S = 0.25
#: How long ``stop`` waits for SIGTERM before SIGKILL.
STOP_GRACE_S = 5.0
#: Lines of the agent log shown when it fails to start.
LOG_TAIL_LINES = 40
#: The runtime's directory under the device directory, and where a new one is unpacked before it replaces it.
RUNTIME_DIR = "runtime"
STAGING_DIR = "runtime.staging"
#: Written last into an unpacked runtime: the tarball's sha256. No marker, no start.
RUNTIME_MARKER = ".dflare-runtime"
#: Unpacking ~140 MB on a phone's flash takes seconds; under emulation (busybox tar via qemu) ~10 s.
UNPACK_TIMEOUT_S = 300.0
#: How the agent runs: "auto" (a device Python with the native modules when the shell finds one, else
#: the self-contained runtime on android-arm64), "runtime" (always the self-contained runtime) or
#: "python" (the zipapp on the device's Python).
RUNTIME_MODES = ("auto", "runtime", "python")
#: The adb shell prints this, then the exit status, after each command (v1 shell has no exit code).
_RC_MARKER = "__DFLARE_RC="


def default_adb_key_path() -> Path:
    """``$ANDROID_USER_HOME/adbkey``, else ``~/.android/adbkey`` (where adb keeps its key)."""
    base = os.environ.get("ANDROID_USER_HOME") or os.path.join(os.path.expanduser("~"), ".android")
    return Path(base) / "adbkey"


def load_adb_key(path: str | Path | None = None) -> tuple[PythonRSASigner, Path]:
    """Load the adb RSA key, creating it (2048-bit, PKCS#8 PEM + ``.pub``) as adb does when missing.

    Returns:
        The signer and the private key path (the public key is ``path + ".pub"``).
    """
    path = Path(path) if path else default_adb_key_path()
    if not path.exists() or not Path(str(path) + ".pub").exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        _LOG.warning("no adb key at %s: creating one (the device will ask to allow this computer)", path)
        keygen(str(path))
        path.chmod(0o600)
    return PythonRSASigner.FromRSAKeyPath(str(path)), path


@dataclass(frozen=True)
class DeviceAddress:
    """``adb://SERIAL`` (USB, needs the ``usb`` extra) or ``adb://HOST:PORT`` (network adb)."""

    serial: str | None = None
    host: str | None = None
    port: int = DEFAULT_ADB_PORT

    @classmethod
    def parse(cls, text: str) -> DeviceAddress:
        """Parse ``adb://SERIAL``, ``adb://HOST:PORT``, ``SERIAL`` or ``HOST:PORT``.

        Raises:
            ConfigError: empty or malformed.
        """
        body = text[len("adb://"):] if text.startswith("adb://") else text
        if not body:
            raise ConfigError(f"empty adb address {text!r}: use adb://SERIAL or adb://HOST:PORT")
        host, sep, port = body.rpartition(":")
        if sep and host:
            if not port.isdigit():
                raise ConfigError(f"bad port in {text!r}: use adb://HOST:PORT")
            return cls(host=host.strip("[]"), port=int(port))
        return cls(serial=body)

    @property
    def uri(self) -> str:
        return f"adb://{self.host}:{self.port}" if self.host else f"adb://{self.serial}"

    def __str__(self) -> str:
        return self.uri

    @property
    def tcp_address(self) -> str:
        """``HOST:PORT`` of network adb (``[HOST]:PORT`` for IPv6); empty for a USB serial."""
        if not self.host:
            return ""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def transport(self) -> BaseTransport:
        """A new adb-shell transport to the device (not yet connected).

        Raises:
            DeviceConnectError: a USB serial without the usb extra, or no USB device with that serial
                (the message lists the attached ones).
        """
        if self.host:
            return TcpTransport(self.host, self.port)
        try:
            from adb_shell.transport.usb_transport import UsbTransport
        except (ImportError, OSError):  # libusb1 missing, or its shared library
            raise DeviceConnectError(
                self, f"device {self.serial!r} is not reachable over TCP (a bare serial is no network address: "
                      f"network adb takes adb://HOST:PORT, e.g. adb://192.168.1.5:{DEFAULT_ADB_PORT}), and USB "
                      "devices need the usb extra, which is not installed: pip install 'dflare-edge[usb]'") from None
        try:
            return UsbTransport.find_adb(self.serial)
        except Exception:  # noqa: BLE001 - adb-shell raises several unrelated types here
            attached = attached_usb_serials(UsbTransport)
            listed = ", ".join(attached) if attached else "none"
            raise DeviceConnectError(
                self, f"no USB adb device with serial {self.serial!r} is attached (attached: {listed}); check "
                      "the cable and that USB debugging is on, or pick one of those serials") from None


#: Shown for an attached USB adb device whose serial cannot be read (on Linux: no udev rule for it).
UNREADABLE_SERIAL = "(a device whose serial cannot be read: check its udev permissions)"


def attached_usb_serials(usb_transport: type) -> list[str]:
    """The serials of the USB adb devices attached now, through adb-shell's ``UsbTransport`` class.

    Never raises: a device whose serial cannot be read is listed as :data:`UNREADABLE_SERIAL`, and a
    USB stack that cannot be enumerated at all gives ``["(cannot list USB devices: ...)"]``.
    """
    serials = []
    try:
        for transport in usb_transport.find_all_adb_devices():
            try:
                serials.append(str(transport.serial_number))
            except Exception:  # noqa: BLE001 - usb1.USBError, whose module may not even import here
                serials.append(UNREADABLE_SERIAL)
    except Exception as exc:  # noqa: BLE001 - libusb errors (permissions, no USB bus in a container)
        serials.append(f"(cannot list USB devices: {exc})")
    return serials


@dataclass
class AdbDeployOptions:
    """How to deploy; every field has a working default.

    Attributes:
        device_dir: where the bundle, token, log and model cache go on the device.
        python: the device interpreter (else the first of ``PYTHON_CANDIDATES`` that works).
        device_port: the agent's port on the device loopback (else random in ``DEVICE_PORT_RANGE``).
        local_port: the host port to forward from (0: a free one).
        bundle: a prebuilt zipapp (``dflare deploy build``); else one is built for the device's ABI.
        runtime: one of ``RUNTIME_MODES``.
        runtime_bundle: a prebuilt runtime tarball (``dflare bundle build``, or its ``.json``); else it is
            built (or taken from the cache) now.
        cache_dir: where runtimes are built and cached (default ``runtime_bundle.default_cache_dir()``).
        key_path: the adb private key (else ``~/.android/adbkey``, created when missing).
        agent_args: extra ``dflare-agent serve`` arguments (e.g. ``--tls-cert``).
        purge: ``stop`` deletes the whole device directory, not just the token and pid file.
    """

    device_dir: str = DEFAULT_DEVICE_DIR
    python: str | None = None
    device_port: int | None = None
    local_port: int = 0
    bundle: Path | None = None
    runtime: str = "auto"
    runtime_bundle: Path | None = None
    cache_dir: Path | None = None
    key_path: Path | None = None
    auth_timeout_s: float = DEFAULT_AUTH_TIMEOUT_S
    transport_timeout_s: float = DEFAULT_TRANSPORT_TIMEOUT_S
    start_timeout_s: float = DEFAULT_START_TIMEOUT_S
    agent_args: tuple[str, ...] = ()
    purge: bool = False
    extra_env: dict[str, str] = field(default_factory=dict)


class AgentProbe(Protocol):
    """How the health stage asks the started agent whether it serves; each check answers (ok, why not).

    gRPC stays in :mod:`host.targets` (this package sits below it): callers pass
    :class:`host.targets.remote.AgentProbe`.
    """

    def health(self, address: str, token: str) -> tuple[bool, str]:
        """One health check of the agent at ``address`` (``HOST:PORT``): (serving, why not)."""
        ...

    def check_token(self, address: str, token: str) -> tuple[bool, str]:
        """One call that needs ``token``: (accepted, why not); a refused token starts with UNAUTHENTICATED."""
        ...


class AdbDeployment:
    """One agent deployed on one device; use :meth:`initialize` / :meth:`stop` or ``with``.

    ``probe`` runs the health stage's checks over the forward (see :class:`AgentProbe`).

    After ``initialize``: :attr:`grpc_address` is the forwarded ``127.0.0.1:PORT``, :attr:`token`
    the agent's token, and :attr:`device_info` what the checks found (model, SoC, Android version,
    ABI, Python, free space, temperatures when readable).
    """

    def __init__(self, address: DeviceAddress | str, options: AdbDeployOptions | None = None, *,
                 probe: AgentProbe) -> None:
        self.address = DeviceAddress.parse(address) if isinstance(address, str) else address
        self.options = options or AdbDeployOptions()
        self.probe = probe
        self.device_info: dict = {}
        self.token = ""
        self.device_port = 0
        self.pid = 0
        self.python = ""
        self.bundle: Bundle | None = None
        self.runtime: RuntimeBundle | None = None
        #: Decided by check_device: the agent runs from the self-contained runtime (not a device Python).
        self.uses_runtime = False
        self.forwarder: AdbPortForwarder | None = None
        self._adb: AdbDevice | None = None
        self._signer: PythonRSASigner | None = None
        self._key_path: Path | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._started_at = 0.0

    def __repr__(self) -> str:
        return f"<AdbDeployment {self.address.uri}>"

    @property
    def uri(self) -> str:
        return self.address.uri

    @property
    def grpc_address(self) -> str:
        if self.forwarder is None:
            raise ForwardError(self.uri, "not forwarded yet: call initialize() first")
        return f"127.0.0.1:{self.forwarder.local_port}"

    @property
    def device_dir(self) -> str:
        return self.options.device_dir.rstrip("/")

    # --- lifecycle ------------------------------------------------------------------------------

    def initialize(self) -> dict:
        """connect -> check -> push -> start -> forward -> health; returns :attr:`device_info`.

        Only errors at the start, forward and health stages trigger :meth:`stop`.

        Raises:
            DeviceConnectError, DeviceNotAuthorizedError, DeviceCheckError (UnsupportedAbiError,
            NoPythonError), PushError, AgentStartError, ForwardError.
        """
        self.connect()
        try:
            self.check_device()
            self.push_agent()
        except BaseException:
            self._close_adb()
            raise
        try:
            self.start_agent()
            self.forward()
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self.device_info

    def __enter__(self) -> AdbDeployment:
        self.initialize()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- stage: connect -------------------------------------------------------------------------

    def connect(self) -> None:
        """Open the adb connection used by the check, push and start stages."""
        self._adb, _ = self._open_device()

    def _open_device(self) -> tuple[AdbDevice, BaseTransport]:
        transport = self.address.transport()  # first: no key is created for a device that is not there
        if self._signer is None:
            self._signer, self._key_path = load_adb_key(self.options.key_path)
        device = AdbDevice(transport, default_transport_timeout_s=self.options.transport_timeout_s)
        try:
            device.connect(rsa_keys=[self._signer], auth_timeout_s=self.options.auth_timeout_s,
                           read_timeout_s=self.options.transport_timeout_s)
        except OSError as exc:
            with contextlib.suppress(Exception):
                device.close()
            where = f" at {self.address.tcp_address}" if self.address.host else ""
            raise DeviceConnectError(self.uri, f"cannot reach adbd{where} ({exc.strerror or exc}): for network adb "
                                               f"run `adb tcpip {DEFAULT_ADB_PORT}` or enable Wireless debugging, "
                                               "and check HOST:PORT") from None
        except (TcpTimeoutException, AdbTimeoutError, DeviceAuthError, InvalidResponseError) as exc:
            with contextlib.suppress(Exception):
                device.close()
            raise DeviceNotAuthorizedError(
                self.uri,
                f"the device did not accept this computer's adb key {self._key_path}.pub within "
                f"{self.options.auth_timeout_s:.0f} s ({type(exc).__name__}): unlock the device, accept the "
                "'Allow USB debugging?' prompt (tick 'Always allow from this computer') and retry",
            ) from None
        return device, transport

    def _connect_mux(self) -> AdbMux:
        device, transport = self._open_device()
        return AdbMux(transport, device.max_chunk_size, self.uri)

    def _close_adb(self) -> None:
        if self._adb is not None:
            with contextlib.suppress(Exception):
                self._adb.close()
            self._adb = None

    # --- shell helpers --------------------------------------------------------------------------

    def _shell(self, command: str, timeout_s: float = SHELL_TIMEOUT_S) -> tuple[int, str]:
        """Run a command; return (exit status, stdout+stderr). Uses whichever connection is live."""
        wrapped = f"( {command} ) 2>&1; echo {_RC_MARKER}$?"
        try:
            if self._adb is not None:
                out = self._adb.shell(wrapped, read_timeout_s=timeout_s, timeout_s=timeout_s)
            elif self.forwarder is not None:
                out = self.forwarder.mux().shell(wrapped, timeout_s)
            else:
                raise DeviceConnectError(self.uri, "no adb connection: call connect() first")
        except (AdbConnectionError, AdbTimeoutError, TcpTimeoutException, MuxClosedError, OSError) as exc:
            raise DeviceConnectError(self.uri, f"adb connection lost while running {command.split()[0]!r}: "
                                               f"{exc}") from None
        head, sep, tail = out.rpartition(_RC_MARKER)
        if not sep:
            return 255, out
        try:
            return int(tail.strip().splitlines()[0]), head.rstrip("\n")
        except (ValueError, IndexError):
            return 255, out

    # --- stage: check ---------------------------------------------------------------------------

    def check_device(self) -> dict:
        """ABI, Android version, a Python with the native modules, free space; fills device_info.

        Raises:
            UnsupportedAbiError, NoPythonError, DeviceCheckError.
        """
        props = self._getprops((
            "ro.product.cpu.abi", "ro.product.cpu.abilist", "ro.build.version.release", "ro.build.version.sdk",
            "ro.product.model", "ro.product.manufacturer", "ro.soc.manufacturer", "ro.soc.model",
            "ro.board.platform", "ro.hardware", "ro.serialno",
        ))
        abi = props.get("ro.product.cpu.abi", "")
        info: dict = {
            "uri": self.uri,
            "serial": props.get("ro.serialno") or self.address.serial or "",
            "model": props.get("ro.product.model", ""),
            "manufacturer": props.get("ro.product.manufacturer", ""),
            "soc": props.get("ro.soc.model") or props.get("ro.board.platform") or props.get("ro.hardware", ""),
            "soc_manufacturer": props.get("ro.soc.manufacturer", ""),
            "android_release": props.get("ro.build.version.release", ""),
            "sdk": int(props["ro.build.version.sdk"]) if props.get("ro.build.version.sdk", "").isdigit() else None,
            "abi": abi,
            "abilist": [a for a in props.get("ro.product.cpu.abilist", "").split(",") if a],
        }
        self.device_info = info
        platform = platform_for_abi(abi, android=True)
        if platform is None:
            supported = ", ".join(a for p, abis in PLATFORMS.items() if p.startswith("android-") for a in abis)
            raise UnsupportedAbiError(self.uri, f"CPU ABI {abi or '(empty)'!r} (ro.product.cpu.abi) is not supported: "
                                                f"the agent runs on {supported}, the ABIs with a TFLite Python "
                                                "runtime; use a 64-bit device")
        info["platform"] = platform
        if info["sdk"] is not None and info["sdk"] < MIN_SDK:
            raise DeviceCheckError(self.uri, f"Android {info['android_release']} (API {info['sdk']}) is too old: "
                                             f"the agent needs API {MIN_SDK} (Android 7.0) or newer")
        info["python"] = self._choose_python(platform)
        info["free_bytes"] = self._free_bytes()
        info["thermal_c"] = self._thermal()
        return info

    def _choose_python(self, platform: str) -> dict:
        """Decide between the self-contained runtime and a device Python (sets :attr:`uses_runtime`).

        ``auto``: a device Python with the native modules (Termux, a rooted device) is used when the
        shell finds one, since it can load Android's own delegates; otherwise, on android-arm64, the
        self-contained runtime. ``--python PATH`` always means that Python.

        Raises:
            ConfigError: an unknown mode, or "runtime" on a platform without one.
            NoPythonError, DeviceCheckError: the device Python is required and unusable.
        """
        mode = self.options.runtime
        if mode not in RUNTIME_MODES:
            raise ConfigError(f"runtime {mode!r}: choose one of {', '.join(RUNTIME_MODES)}")
        if mode == "runtime" and platform != RUNTIME_PLATFORM:
            raise ConfigError(f"{self.uri}: there is a self-contained runtime for {RUNTIME_PLATFORM} only, this "
                              f"device is {platform}: use --runtime python (and --python PATH)")
        self.uses_runtime = mode == "runtime"
        if not self.uses_runtime:
            try:
                return self._find_python()
            except (NoPythonError, DeviceCheckError) as exc:
                if mode == "python" or self.options.python or platform != RUNTIME_PLATFORM:
                    raise
                self.device_info["device_python"] = str(exc).removeprefix(f"{self.uri}: ")
                self.uses_runtime = True  # a stock phone: no usable Python, so bring one
        return {"path": f"{self.runtime_dir}/bin/python3", "version": RUNTIME_PYTHON,
                "runtime": "self-contained (pushed by dflare)"}

    @property
    def runtime_dir(self) -> str:
        return f"{self.device_dir}/{RUNTIME_DIR}"

    def _getprops(self, names: tuple[str, ...]) -> dict[str, str]:
        command = "; ".join(f'echo "{n}=$(getprop {n})"' for n in names)
        rc, out = self._shell(command)
        if rc != 0:
            raise DeviceCheckError(self.uri, f"getprop failed (exit {rc}): {out[-300:]}")
        props = {}
        for line in out.splitlines():
            key, sep, value = line.partition("=")
            if sep and key in names:
                props[key] = value.strip()
        return props

    def _find_python(self) -> dict:
        probe = ("import json,sys,importlib.util as u;"
                 "m={n: u.find_spec(n) is not None for n in "
                 "(\"numpy\",\"grpc\",\"ai_edge_litert\",\"tflite_runtime\")};"
                 "print(\"DFLARE_PY\"+json.dumps({\"version\":list(sys.version_info[:3]),\"modules\":m}))")
        candidates = [self.options.python] if self.options.python else [
            c.format(device_dir=self.device_dir) for c in PYTHON_CANDIDATES]
        script = "; ".join(
            f"echo DFLARE_TRY {shlex.quote(c)}; {shlex.quote(c)} -c {shlex.quote(probe)} 2>&1 | tail -n 3"
            for c in candidates)
        _, out = self._shell(script)
        found: list[tuple[str, dict]] = []
        current = None
        for line in out.splitlines():
            if line.startswith("DFLARE_TRY "):
                current = line[len("DFLARE_TRY "):].strip()
            elif line.startswith("DFLARE_PY") and current:
                with contextlib.suppress(ValueError):
                    found.append((current, json.loads(line[len("DFLARE_PY"):])))
        usable = [(c, p) for c, p in found if tuple(p["version"][:2]) >= MIN_PYTHON]
        if not usable:
            too_old = ", ".join(f"{c} is {'.'.join(map(str, p['version']))}" for c, p in found)
            raise NoPythonError(
                self.uri,
                f"no Python {MIN_PYTHON[0]}.{MIN_PYTHON[1]}+ the adb shell can run (tried {', '.join(candidates)}"
                f"{'; ' + too_old if too_old else ''}). Install one the shell user can execute, e.g. push "
                f"python.org's Android build to {self.device_dir}/python, or use Termux's on a rooted device, "
                "then pass --python PATH")
        path, probe_result = usable[0]
        modules = probe_result["modules"]
        missing = []
        for import_names, pip_name in NATIVE_REQUIREMENTS:
            if not any(modules.get(n) for n in import_names.split("|")):
                missing.append(pip_name)
        if missing:
            raise DeviceCheckError(
                self.uri, f"{path} (Python {'.'.join(map(str, probe_result['version']))}) lacks the native "
                          f"modules {', '.join(missing)}; install them for this device's ABI "
                          f"({self.device_info.get('abi')}), e.g. in Termux: pkg install python-numpy, then pip "
                          "install grpcio and a TFLite runtime built for Android")
        self.python = path
        return {"path": path, "version": ".".join(map(str, probe_result["version"])), "modules": modules}

    def _free_bytes(self) -> int | None:
        parent = os.path.dirname(self.device_dir) or "/"
        rc, out = self._shell(f"df -k {shlex.quote(parent)} | tail -n 1")
        fields = out.split()
        if rc != 0 or len(fields) < 4 or not fields[3].isdigit():
            _LOG.info("%s: cannot read free space from df: %r", self.uri, out[-200:])
            return None
        return int(fields[3]) * 1024

    def _thermal(self) -> dict[str, float]:
        rc, out = self._shell('for z in /sys/class/thermal/thermal_zone*; do t=$(cat "$z/temp" 2>/dev/null) && '
                              'echo "$(cat "$z/type" 2>/dev/null)=$t"; done')
        temps: dict[str, float] = {}
        for line in out.splitlines():
            kind, sep, value = line.rpartition("=")
            with contextlib.suppress(ValueError):
                raw = float(value)
                # Zones report millidegrees; a few old kernels report whole degrees.
                temps[kind or f"zone{len(temps)}"] = raw / 1000.0 if abs(raw) > 200 else raw
        return temps

    # --- stage: push ----------------------------------------------------------------------------

    def push_agent(self) -> None:
        """Push the runtime or zipapp (skipped when the device already has these bytes) and a fresh token.

        Raises:
            PushError: the device refused a file, or ran out of space.
        """
        if self.uses_runtime:
            self.push_runtime()
            self.token = secrets.token_urlsafe(32)
            self._push_bytes(self.token.encode(), f"{self.device_dir}/token", 0o600)
            return
        bundle = self._bundle()
        free = self.device_info.get("free_bytes")
        needed = bundle.size_bytes + MODEL_CACHE_HEADROOM_BYTES
        if free is not None and free < needed:
            raise PushError(self.uri, f"only {free // 2**20} MiB free under {os.path.dirname(self.device_dir)}, "
                                      f"the agent needs {needed // 2**20} MiB (bundle + model cache): free some space")
        d = shlex.quote(self.device_dir)
        rc, out = self._shell(f"mkdir -p {d}/cache && chmod 700 {d}")
        if rc != 0:
            raise PushError(self.uri, f"cannot create {self.device_dir}: {out[-300:]}")
        remote = f"{self.device_dir}/{BUNDLE_NAME}"
        if self._remote_sha256(remote) != bundle.sha256:
            self._push_bytes(bundle.path.read_bytes(), remote, 0o644)
            got = self._remote_sha256(remote)
            if got is not None and got != bundle.sha256:
                raise PushError(self.uri, f"{remote} arrived corrupted (sha256 {got[:12]}, sent {bundle.sha256[:12]}):"
                                          " retry, or check the USB cable")
        self.token = secrets.token_urlsafe(32)
        self._push_bytes(self.token.encode(), f"{self.device_dir}/token", 0o600)
        self.device_info["bundle"] = {"platform": bundle.platform, "sha256": bundle.sha256, "bytes": bundle.size_bytes}

    def push_runtime(self) -> bool:
        """Put the self-contained runtime in ``DEVICE_DIR/runtime``; returns whether anything was pushed.

        Skipped when the device's marker holds this tarball's sha256. Otherwise the tarball is pushed into
        a staging directory, checked, unpacked there, marked (last), and renamed into place, replacing the
        old runtime whole (an agent running from it is stopped first).

        Raises:
            PushError: the device refused a file, ran out of space, or could not unpack the tarball.
        """
        runtime = self._runtime_bundle()
        d, q = self.device_dir, shlex.quote
        record = {"platform": runtime.platform, "sha256": runtime.sha256, "bytes": runtime.size_bytes,
                  "unpacked_bytes": runtime.unpacked_bytes, "kind": "self-contained runtime"}
        self.device_info["bundle"] = record
        rc, out = self._shell(f"mkdir -p {q(d)}/cache && chmod 700 {q(d)}")
        if rc != 0:
            raise PushError(self.uri, f"cannot create {d}: {out[-300:]}")
        if self._runtime_marker(self.runtime_dir) == runtime.sha256:
            record.update(pushed=False, push_s=0.0)
            return False
        free = self.device_info.get("free_bytes")
        needed = runtime.size_bytes + runtime.unpacked_bytes + MODEL_CACHE_HEADROOM_BYTES
        if free is not None and free < needed:
            raise PushError(self.uri, f"only {free // 2**20} MiB free under {os.path.dirname(d)}, the runtime needs "
                                      f"{needed // 2**20} MiB (tarball + unpacked + model cache): free some space")
        start = time.monotonic()
        self._kill_previous()  # it runs from the runtime about to be replaced
        staging, tarball = f"{d}/{STAGING_DIR}", f"{d}/{STAGING_DIR}.tar.gz"
        rc, out = self._shell(f"rm -rf {q(staging)} {q(tarball)} && mkdir -p {q(staging)}")
        if rc != 0:
            raise PushError(self.uri, f"cannot prepare {staging}: {out[-300:]}")
        self._push_stream(str(runtime.path), tarball, 0o644)  # adb-shell streams a file named by path
        got = self._remote_sha256(tarball)
        if got != runtime.sha256:
            raise PushError(self.uri, f"{tarball} arrived corrupted (sha256 {str(got)[:12]}, sent "
                                      f"{runtime.sha256[:12]}): retry, or check the USB cable")
        rc, out = self._shell(f"tar -xzf {q(tarball)} -C {q(staging)} && rm -f {q(tarball)} && "
                              f"echo {runtime.sha256} > {q(staging + '/' + RUNTIME_MARKER)}", UNPACK_TIMEOUT_S)
        if rc != 0:
            raise PushError(self.uri, f"cannot unpack the runtime into {staging} (exit {rc}): {out[-500:]}; "
                                      "check the free space (df /data)")
        current, old = self.runtime_dir, f"{d}/{RUNTIME_DIR}.old"
        rc, out = self._shell(f"rm -rf {q(old)} && {{ [ ! -d {q(current)} ] || mv {q(current)} {q(old)}; }} && "
                              f"mv {q(staging)} {q(current)} && rm -rf {q(old)}")
        if rc != 0 or self._runtime_marker(current) != runtime.sha256:
            raise PushError(self.uri, f"cannot move the new runtime into {current} (exit {rc}): {out[-300:]}")
        record.update(pushed=True, push_s=round(time.monotonic() - start, 1))
        return True

    def _runtime_marker(self, runtime_dir: str) -> str:
        rc, out = self._shell(f"cat {shlex.quote(runtime_dir + '/' + RUNTIME_MARKER)} 2>/dev/null")
        return out.strip() if rc == 0 else ""

    def _runtime_bundle(self) -> RuntimeBundle:
        if self.runtime is None:
            given = self.options.runtime_bundle
            if given:
                manifest = Path(given) if str(given).endswith(".json") else Path(str(given) + ".json")
                self.runtime = RuntimeBundle.load(manifest)
            else:
                self.runtime = build_runtime(RUNTIME_PLATFORM, self.options.cache_dir, log=_LOG.info)
        return self.runtime

    def _push_stream(self, local: str, remote: str, mode: int) -> None:
        try:
            self._adb.push(local, remote, st_mode=0o100000 | mode, read_timeout_s=SHELL_TIMEOUT_S)
        except (PushFailedError, AdbCommandFailureException) as exc:
            raise PushError(self.uri, f"push to {remote} failed: {exc}") from None
        except (AdbConnectionError, AdbTimeoutError, TcpTimeoutException, OSError) as exc:
            raise PushError(self.uri, f"connection lost while pushing {remote}: {exc}") from None

    def _bundle(self) -> Bundle:
        if self.bundle is not None:
            return self.bundle
        platform = self.device_info.get("platform") or "android-arm64"
        if self.options.bundle:
            import hashlib

            path = Path(self.options.bundle)
            manifest_path = Path(str(path) + ".json")
            manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
            if manifest.get("platform") and manifest["platform"] != platform:
                raise PushError(self.uri, f"bundle {path} was built for {manifest['platform']}, the device needs "
                                          f"{platform}: dflare deploy build --platform {platform}")
            content = path.read_bytes()
            self.bundle = Bundle(path, platform, PLATFORMS[platform], hashlib.sha256(content).hexdigest(),
                                 len(content), manifest.get("version", ""))
        else:
            self._tmp = tempfile.TemporaryDirectory(prefix="dflare-bundle-")
            self.bundle = build_bundle(self._tmp.name, platform)
        return self.bundle

    def _remote_sha256(self, remote: str) -> str | None:
        rc, out = self._shell(f"sha256sum {shlex.quote(remote)} 2>/dev/null")
        fields = out.split()
        return fields[0] if rc == 0 and fields and len(fields[0]) == 64 else None

    def _push_bytes(self, data: bytes, remote: str, mode: int) -> None:
        try:
            self._adb.push(io.BytesIO(data), remote, st_mode=0o100000 | mode,
                           read_timeout_s=SHELL_TIMEOUT_S)
        except (PushFailedError, AdbCommandFailureException) as exc:
            raise PushError(self.uri, f"push to {remote} failed: {exc}") from None
        except (AdbConnectionError, AdbTimeoutError, TcpTimeoutException, OSError) as exc:
            raise PushError(self.uri, f"connection lost while pushing {remote}: {exc}") from None

    # --- stage: start ---------------------------------------------------------------------------

    def start_agent(self) -> None:
        """Start ``dflare-agent serve`` detached (setsid + nohup), bound to the device loopback.

        Raises:
            AgentStartError: the shell could not launch it.
        """
        self.device_port = self.options.device_port or (
            DEVICE_PORT_RANGE[0] + secrets.randbelow(DEVICE_PORT_RANGE[1] - DEVICE_PORT_RANGE[0]))
        d = self.device_dir
        q = shlex.quote
        self._kill_previous()
        args = ["serve", "--host", "127.0.0.1", "--port", str(self.device_port), "--token-file", f"{d}/token",
                "--cache-dir", f"{d}/cache", *self.options.agent_args]
        if self.uses_runtime:
            runtime = self._runtime_bundle()
            if self._runtime_marker(self.runtime_dir) != runtime.sha256:
                raise AgentStartError(self.uri, f"{self.runtime_dir} is not a complete copy of runtime "
                                                f"{runtime.sha256[:12]} (no matching {RUNTIME_MARKER}): redeploy")
            runtime_env, argv = agent_command(self.runtime_dir)
            env_vars = {**runtime_env, **self.options.extra_env}
            self.python = " ".join(argv[:4])
        else:
            env_vars, argv = dict(self.options.extra_env), [self.python, f"{d}/{BUNDLE_NAME}"]
        env = " ".join(f"{k}={q(v)}" for k, v in env_vars.items())
        command = (
            f"cd {q(d)} && rm -f agent.log agent.pid && S=$(command -v setsid); "
            f"{env} $S nohup {' '.join(q(a) for a in argv)} {' '.join(q(a) for a in args)} "
            f"> {q(d + '/agent.log')} 2>&1 < /dev/null & echo $! > {q(d + '/agent.pid')}; cat {q(d + '/agent.pid')}"
        )
        rc, out = self._shell(command)
        pid = out.strip().splitlines()[-1] if out.strip() else ""
        if rc != 0 or not pid.isdigit():
            raise AgentStartError(self.uri, f"could not launch the agent (exit {rc}): {out[-500:]}")
        self.pid = int(pid)
        self._started_at = time.monotonic()
        self.device_info["agent"] = {"pid": self.pid, "device_port": self.device_port, "python": self.python}

    def _kill_previous(self) -> None:
        """An agent left by an earlier deploy holds a stale token (and maybe the runtime about to be
        replaced): stop it, and wait for it to be gone, as :meth:`stop` does, before starting another."""
        pid_file = shlex.quote(f"{self.device_dir}/agent.pid")
        self._shell(f"if [ -f {pid_file} ]; then p=$(cat {pid_file}); kill $p 2>/dev/null; i=0; "
                    f"while kill -0 $p 2>/dev/null && [ $i -lt {int(STOP_GRACE_S * 10)} ]; do sleep 0.1; i=$((i+1)); "
                    f"done; kill -9 $p 2>/dev/null; fi; rm -f {pid_file}; true")

    def agent_log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines of the agent's log on the device ("" when unreadable)."""
        try:
            _, out = self._shell(f"tail -n {lines} {shlex.quote(self.device_dir + '/agent.log')}")
        except DeviceConnectError:
            return ""
        return out

    def agent_alive(self) -> bool:
        rc, out = self._shell(f"kill -0 {self.pid} 2>/dev/null && echo alive")
        return "alive" in out

    # --- stage: forward -------------------------------------------------------------------------

    def forward(self) -> None:
        """Close the stage connection and forward a host port to the agent over a fresh one.

        Raises:
            ForwardError: the host port is taken, or the device cannot be reconnected.
        """
        self._close_adb()
        try:
            self.forwarder = AdbPortForwarder(self._connect_mux, self.device_port,
                                              local_port=self.options.local_port)
        except OSError as exc:
            raise ForwardError(self.uri, f"cannot listen on host port {self.options.local_port}: {exc.strerror}: "
                                         "choose another --local-port") from None
        try:
            self.forwarder.mux()
        except DeviceConnectError as exc:
            raise ForwardError(self.uri, f"cannot reconnect for the forward: {exc}") from None
        self.device_info["agent"]["local_port"] = self.forwarder.local_port

    # --- stage: health --------------------------------------------------------------------------

    def wait_healthy(self) -> None:
        """Poll the agent's gRPC health service through the forward until it is SERVING.

        Raises:
            AgentStartError: it died (its log tail is in the message) or stayed unhealthy too long.
        """
        deadline = time.monotonic() + self.options.start_timeout_s
        last = ""
        while True:
            healthy, last = self.probe.health(self.grpc_address, self.token)
            if healthy:
                accepted, last = self.probe.check_token(self.grpc_address, self.token)
                if accepted:  # launch -> serving with our token: imports, delegate probe, first RPC
                    self.device_info["agent"]["start_s"] = round(time.monotonic() - self._started_at, 1)
                    return
                if last.startswith("UNAUTHENTICATED"):
                    raise AgentStartError(self.uri, f"the agent is up but refused the token pushed to "
                                                    f"{self.device_dir}/token ({last}); another agent may hold "
                                                    f"port {self.device_port}: redeploy with another --device-port")
            if not self.agent_alive():
                tail = self.agent_log_tail()
                raise AgentStartError(self.uri, f"the agent exited during startup; its log ({self.device_dir}/"
                                                f"agent.log) ends with:\n{tail or '(empty)'}")
            if time.monotonic() > deadline:
                tail = self.agent_log_tail()
                raise AgentStartError(self.uri, f"the agent did not become healthy within "
                                                f"{self.options.start_timeout_s:.0f} s ({last}); its log ends with:\n"
                                                f"{tail or '(empty)'}")
            time.sleep(HEALTH_POLL_INTERVAL_S)

    # --- stop -----------------------------------------------------------------------------------

    def stop(self) -> None:
        """Kill the agent, delete its token (or the whole directory with ``purge``), close the forward.

        Best effort: a device that is gone is logged, not raised, so cleanup never masks the first error.
        """
        d = shlex.quote(self.device_dir)
        try:
            if self.pid:
                self._shell(f"kill {self.pid} 2>/dev/null; i=0; while kill -0 {self.pid} 2>/dev/null && "
                            f"[ $i -lt {int(STOP_GRACE_S * 10)} ]; do sleep 0.1; i=$((i+1)); done; "
                            f"kill -9 {self.pid} 2>/dev/null; true")
            if self.token or self.pid:
                self._shell(f"rm -rf {d}" if self.options.purge else f"rm -f {d}/token {d}/agent.pid")
        except DeviceConnectError as exc:
            _LOG.warning("%s: could not stop the agent cleanly: %s", self.uri, exc)
        self.pid = 0
        self.token = ""
        if self.forwarder is not None:
            self.forwarder.close()
            self.forwarder = None
        self._close_adb()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
