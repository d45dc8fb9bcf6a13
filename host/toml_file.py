"""Reading TOML settings with errors a person can act on: the machinery campaign and lab files share.

Each file keeps its own schema (a campaign is one flat table of settings, a lab file several tables);
reading the file, naming an unknown key with the likely intended one, and resolving relative paths
against the file's folder happen here, once.
"""

from __future__ import annotations

import difflib
import sys
from pathlib import Path
from typing import Any, Sequence

from host.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python < 3.11 only
    import tomli as tomllib


def read_toml(path: str | Path, what: str) -> dict[str, Any]:
    """Parse a TOML file.

    Args:
        path: the file.
        what: how messages name it, e.g. "campaign file" or "lab file".

    Raises:
        ConfigError: the file is missing, unreadable or not valid TOML; the message names it.
    """
    path = Path(path)
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{what} not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{what} {path} is not valid TOML: {exc}") from None


def unknown_key_hint(key: str, known: Sequence[str]) -> str:
    """``"; did you mean 'max_queries'?"`` for a near miss, else the list of known keys."""
    close = difflib.get_close_matches(key, list(known), n=1)
    return f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(known)}"


def resolve_path(value: str | Path, base: Path) -> Path:
    """A path from a settings file: ``~`` expanded, relative ones taken from the file's folder ``base``."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path
