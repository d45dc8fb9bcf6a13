"""An adb device that cannot be found says why: a refused network address, a USB serial without the usb
extra, or a USB serial that is not attached (with the serials that are). All exit 3, like other target errors."""

from __future__ import annotations

import socket
import sys
import types
from pathlib import Path

import pytest

from host.cli import main
from host.deploy.adb import UNREADABLE_SERIAL, DeviceAddress, attached_usb_serials
from host.errors import DeviceConnectError
from host.exit_codes import ExitCode

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
USB_MODULE = "adb_shell.transport.usb_transport"


@pytest.fixture(autouse=True)
def adb_home(tmp_path: Path, monkeypatch) -> Path:
    """Where the adb key would go: never the user's own ``~/.android``."""
    home = tmp_path / "android"
    monkeypatch.setenv("ANDROID_USER_HOME", str(home))
    return home


@pytest.fixture()
def refused_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as server:
        return server.getsockname()[1]  # closed on return: nothing listens there


def _without_usb_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, USB_MODULE, None)  # the import raises ImportError, as without libusb1


class _Attached:
    def __init__(self, serial: str | None) -> None:
        self._serial = serial

    @property
    def serial_number(self) -> str:
        if self._serial is None:
            raise OSError("LIBUSB_ERROR_ACCESS")
        return self._serial


def _with_usb_devices(monkeypatch, *serials: str | None) -> None:
    """A stand-in for adb-shell's usb_transport module with these devices attached."""

    class UsbTransport:
        @classmethod
        def find_adb(cls, serial=None, port_path=None, default_transport_timeout_s=None):
            raise LookupError("No device available, or it is in the wrong configuration.")

        @classmethod
        def find_all_adb_devices(cls, default_transport_timeout_s=None):
            yield from (_Attached(s) for s in serials)

    module = types.ModuleType(USB_MODULE)
    module.UsbTransport = UsbTransport
    monkeypatch.setitem(sys.modules, USB_MODULE, module)


def _run_argv(out: Path, target: str) -> list[str]:
    return ["run", "--original", str(FIXTURES / "models/digits28-float32.tflite"),
            "--compressed", str(FIXTURES / "models/digits28-float16.tflite"),
            "--seeds", str(FIXTURES / "seeds/digits28.npz"), "--limit", "1", "--max-queries", "10",
            "--out", str(out), "--progress", "log", "--target", target]


def test_a_refused_network_address_is_named(refused_port: int, capsys) -> None:
    assert main(["info", f"adb://127.0.0.1:{refused_port}"]) == ExitCode.unreachable
    err = capsys.readouterr().err
    assert f"cannot reach adbd at 127.0.0.1:{refused_port} (Connection refused)" in err, err
    assert "usb" not in err.lower(), err


def test_a_host_port_serial_goes_over_tcp(refused_port: int, capsys) -> None:
    """``--serial`` as ``adb devices`` prints a network device (HOST:PORT) is network adb, not USB."""
    assert main(["deploy", "adb", "--serial", f"127.0.0.1:{refused_port}"]) == ExitCode.unreachable
    assert f"cannot reach adbd at 127.0.0.1:{refused_port}" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["info", "run"])
def test_a_usb_serial_without_the_usb_extra_says_both(command: str, monkeypatch, tmp_path: Path, adb_home: Path,
                                                      capsys) -> None:
    _without_usb_extra(monkeypatch)
    argv = ["info", "adb://nonexistent"] if command == "info" else _run_argv(tmp_path / "out", "adb://nonexistent")
    assert main(argv) == ExitCode.unreachable
    err = capsys.readouterr().err
    assert "adb://nonexistent: device 'nonexistent' is not reachable over TCP" in err, err
    assert "adb://HOST:PORT" in err and "USB devices need the usb extra" in err, err
    assert "pip install 'dflare-edge[usb]'" in err, err
    assert not adb_home.exists()  # no key is made for a device that is not there


def test_a_usb_serial_that_is_not_attached_lists_the_attached_ones(monkeypatch, capsys) -> None:
    _with_usb_devices(monkeypatch, "R58M12ABCDE", None, "emulator-5554")
    assert main(["info", "adb://nonexistent"]) == ExitCode.unreachable
    err = capsys.readouterr().err
    assert "no USB adb device with serial 'nonexistent' is attached (attached: R58M12ABCDE, " \
           f"{UNREADABLE_SERIAL}, emulator-5554)" in err, err
    assert "usb extra" not in err, err


def test_no_usb_device_attached_says_none(monkeypatch) -> None:
    _with_usb_devices(monkeypatch)
    with pytest.raises(DeviceConnectError, match=r"serial 'R58M' is attached \(attached: none\)"):
        DeviceAddress.parse("adb://R58M").transport()


def test_a_usb_stack_that_cannot_be_listed_says_so() -> None:
    class Broken:
        @classmethod
        def find_all_adb_devices(cls):
            raise OSError("LIBUSB_ERROR_NO_DEVICE")
            yield  # a generator, as adb-shell's

    assert attached_usb_serials(Broken) == ["(cannot list USB devices: LIBUSB_ERROR_NO_DEVICE)"]
