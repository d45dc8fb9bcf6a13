"""Facts about the device the agent runs on: CPU, ABI, memory, OS and Android properties.

Pure standard library (plus ``getprop`` on Android), so it works in a bare device Python.
"""

from __future__ import annotations

import os
import platform
import shutil
import socket
import subprocess

from device_agent.bundled_runtime import bundled_runtime

#: Android properties reported by GetDeviceInfo: enough to tell devices and builds apart.
ANDROID_PROPERTIES = (
    "ro.product.manufacturer",
    "ro.product.model",
    "ro.product.device",
    "ro.build.version.release",
    "ro.build.version.sdk",
    "ro.build.fingerprint",
    "ro.board.platform",
    "ro.hardware",
    "ro.soc.model",
    "ro.product.cpu.abilist",
)
#: getprop answers instantly on a healthy device; a hung one must not block GetDeviceInfo.
_GETPROP_TIMEOUT_S = 2.0


def static_info() -> dict:
    """Return what does not change while the agent runs (machine, OS, properties)."""
    properties = _android_properties() or _os_release()
    runtime = bundled_runtime()
    if runtime is not None:  # the self-contained Android runtime: say what it is and what it cannot load
        properties["dflare.runtime"] = str(runtime.get("kind", "self-contained runtime"))
        properties["dflare.unavailable_delegates"] = (", ".join(runtime.get("unavailable_delegates", ()))
                                                      + ", vendor NPU delegates (they need Android's own libraries)")
    abis = [abi for abi in properties.get("ro.product.cpu.abilist", "").split(",") if abi]
    return {
        "machine": platform.machine(),
        "abis": abis,
        "system": platform.system(),
        "release": platform.release(),
        "cpu_count": os.cpu_count() or 0,
        "python_version": platform.python_version(),
        "hostname": socket.gethostname(),
        "properties": properties,
    }


def memory_bytes() -> tuple[int, int]:
    """Return (total, available) physical memory in bytes; zeros when the OS does not say."""
    try:
        with open("/proc/meminfo") as f:
            fields = {line.split(":")[0]: line.split()[1] for line in f if ":" in line}
        total = int(fields.get("MemTotal", 0)) * 1024
        available = int(fields.get("MemAvailable", fields.get("MemFree", 0))) * 1024
        return total, available
    except (OSError, ValueError, IndexError):
        pass
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        return os.sysconf("SC_PHYS_PAGES") * page, os.sysconf("SC_AVPHYS_PAGES") * page
    except (ValueError, OSError, AttributeError):
        return 0, 0


def _android_properties() -> dict[str, str]:
    getprop = shutil.which("getprop")
    if getprop is None:
        return {}
    properties = {}
    for name in ANDROID_PROPERTIES:
        try:
            value = subprocess.run([getprop, name], capture_output=True, text=True,
                                   timeout=_GETPROP_TIMEOUT_S).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            continue
        if value:
            properties[name] = value
    return properties


def _os_release() -> dict[str, str]:
    try:
        with open("/etc/os-release") as f:
            lines = f.read().splitlines()
    except OSError:
        return {}
    properties = {}
    for line in lines:
        key, sep, value = line.partition("=")
        if sep and key in ("ID", "VERSION_ID", "PRETTY_NAME"):
            properties[f"os-release.{key}"] = value.strip().strip('"')
    return properties
