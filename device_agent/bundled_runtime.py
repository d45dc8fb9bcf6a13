"""Is the agent running from the self-contained Android runtime, and what can that runtime not do?

``dflare deploy adb`` pushes a runtime carrying its own glibc loader, libc and CPython
(host/deploy/runtime_bundle.py). It describes itself in ``sys.prefix/dflare-runtime.json``. Android's
GPU and NNAPI delegates, and vendor NPU delegates, are built against Android's own libc (bionic) and
libraries (libEGL, libOpenCL, libneuralnetworks); they cannot be loaded into a glibc process, so the
agent refuses them up front with a message saying what would work instead.
"""

from __future__ import annotations

import functools
import json
import os
import sys

#: The manifest's file name at the runtime's root (``sys.prefix``, set by ``PYTHONHOME``).
MANIFEST_NAME = "dflare-runtime.json"
#: Where Android keeps its own (bionic) libraries: a delegate from there cannot load into this runtime.
ANDROID_LIBRARY_DIRS = ("/system/", "/vendor/", "/apex/", "/odm/", "/product/", "/system_ext/")


@functools.lru_cache(maxsize=1)
def bundled_runtime() -> dict | None:
    """The runtime's manifest when the agent runs from the self-contained runtime, else None."""
    try:
        with open(os.path.join(sys.prefix, MANIFEST_NAME)) as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def unavailable_reason(delegate: str) -> str:
    """Why ``delegate`` (gpu, nnapi, or an Android library path) cannot run in this runtime, and what would."""
    return (f"delegate {delegate!r} is not available in dflare's self-contained Android runtime: it needs "
            "Android's own libraries (bionic libc, libEGL/libOpenCL, libneuralnetworks, the vendor's drivers), "
            "which cannot be loaded into this runtime's glibc process. The cpu, xnnpack and ref delegates work "
            "here. For the GPU, NNAPI or a vendor NPU, run the agent on a Python built for Android (Termux, or a "
            "rooted device) with a TFLite runtime built for Android: dflare deploy adb --python PATH; or pass "
            "external:/path/lib.so with a delegate library built for glibc aarch64 (docs/android.md)")


def is_android_library(path: str) -> bool:
    """True for a path under Android's system or vendor partitions (a bionic library)."""
    real = os.path.realpath(path)
    return any(p.startswith(ANDROID_LIBRARY_DIRS) for p in (path, real))
