"""The one jinja2 environment of the HTML reports (campaign and compare pages).

Compiling the campaign template takes longer than rendering it (~0.1-0.2 s on a small campaign), so
compiled templates are kept in a per-user bytecode cache (``$XDG_CACHE_HOME/dflare-edge/jinja``,
else ``~/.cache/...``; jinja2 checks each template's modification time). Where no cache folder can
be made (a read-only home), templates are compiled every time.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import jinja2

TEMPLATES = Path(__file__).parent / "templates"


def _bytecode_cache() -> jinja2.BytecodeCache | None:
    base = os.environ.get("XDG_CACHE_HOME") or (Path.home() / ".cache" if Path.home().is_dir() else None)
    if base is None:
        return None
    folder = Path(base) / "dflare-edge" / "jinja"
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError:
        return None
    return jinja2.FileSystemBytecodeCache(str(folder)) if os.access(folder, os.W_OK) else None


@functools.cache
def environment() -> jinja2.Environment:
    """The reports' environment: autoescaped, strict about undefined names, templates from the package."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
        bytecode_cache=_bytecode_cache(),
    )
