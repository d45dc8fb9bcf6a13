"""Render a page in headless Chromium: its DOM after scripts ran, console messages, and a screenshot.

Console messages come from ``--enable-logging=stderr --v=0``, which logs every console call and
uncaught error as a ``CONSOLE`` line; the DOM comes from ``--dump-dom``. A fresh profile directory
per call keeps runs independent.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

#: Where Debian's ``chromium`` package puts the browser (``.ci/run`` installs it).
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome")

#: A cold headless start plus rendering a ~1 MB page takes a few seconds; this leaves ample margin.
RENDER_TIMEOUT_S = 120

_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
          "--disable-component-update", "--no-first-run", "--disable-sync", "--hide-scrollbars",
          "--enable-logging=stderr", "--v=0")

_CONSOLE = re.compile(r":CONSOLE[:(]")


@dataclass(frozen=True)
class Rendered:
    dom: str
    console: list[str]


def find_chromium() -> str | None:
    for name in CHROMIUM_CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _chromium(binary: str, args: list[str]) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="dflare-chromium-") as profile:
        proc = subprocess.run([binary, *_FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                              text=True, timeout=RENDER_TIMEOUT_S)
    if proc.returncode != 0:
        raise RuntimeError(f"chromium exited with {proc.returncode}: {proc.stderr[-2000:]}")
    return proc


def render(page: Path, screenshot: Path | None = None, window: tuple[int, int] = (1280, 2200),
           binary: str | None = None) -> Rendered:
    """Load ``page`` headless; return its DOM and console lines; optionally save a PNG screenshot."""
    binary = binary or find_chromium()
    if binary is None:
        raise RuntimeError("chromium not found")
    url = page.resolve().as_uri()
    proc = _chromium(binary, ["--dump-dom", url])
    console = [line for line in proc.stderr.splitlines() if _CONSOLE.search(line)]
    if screenshot is not None:
        shot = _chromium(binary, [f"--window-size={window[0]},{window[1]}", f"--screenshot={screenshot}", url])
        console += [line for line in shot.stderr.splitlines() if _CONSOLE.search(line)]
    return Rendered(proc.stdout, console)
