"""Reading a TOML file with errors a person can act on (campaign and lab files share this)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

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
