"""How to reach a target, whatever its kind: the one ``TargetOptions`` that ``open_target`` takes.

Each scheme gets the options that apply to it: an agent (``grpc://``, ``grpcs://``) the token, connect
timeout and TLS settings;
an ``adb://`` device the connect timeout (its deployment makes its own token); the host (``local:``)
the external delegate libraries it may load. Commands build one ``TargetOptions`` from their flags
and never filter options by scheme themselves.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from host.errors import ConfigError

#: The environment variable a token is read from when no token or token file is given.
TOKEN_ENV = "DFLARE_TOKEN"


def resolve_token(token: str | None = None, token_file: str | os.PathLike | None = None) -> str | None:
    """The token from the argument, else the file, else ``$DFLARE_TOKEN``, else None.

    Raises:
        ConfigError: the token file cannot be read or is empty.
    """
    if token:
        return token.strip()
    if token_file is not None:
        try:
            text = Path(token_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read token file {token_file}: {exc.strerror}") from None
        if not text:
            raise ConfigError(f"token file {token_file} is empty")
        return text
    return os.environ.get(TOKEN_ENV, "").strip() or None


@dataclass(frozen=True)
class TargetOptions:
    """Credentials and limits for opening targets.

    Attributes:
        token: the agent token (wins over ``token_file`` and ``$DFLARE_TOKEN``).
        token_file: a file holding the agent token.
        connect_timeout_s: seconds to wait for an agent to accept a connection (None: the default).
        allowed_external: delegate libraries an ``external:`` delegate may load on the host.
        tls_ca_file: PEM root certificate(s) that verify an agent's TLS certificate (turns TLS on;
            ``grpcs://`` turns it on with the system's roots).
        tls_server_name: the name the agent's certificate was issued to, when it is not the URI's host.
    """

    token: str | None = None
    token_file: str | os.PathLike | None = None
    connect_timeout_s: float | None = None
    allowed_external: tuple[str, ...] = ()
    tls_ca_file: str | os.PathLike | None = None
    tls_server_name: str | None = None

    def for_uri(self, uri: str) -> dict[str, Any]:
        """The keyword arguments the target class of ``uri``'s scheme takes from these options."""
        if uri in ("local", "local:"):
            return {"allowed_external": tuple(self.allowed_external)}
        timeout = {} if self.connect_timeout_s is None else {"connect_timeout_s": self.connect_timeout_s}
        if uri.startswith(("grpc://", "grpcs://")):
            tls = {"tls_ca_file": self.tls_ca_file, "tls_server_name": self.tls_server_name}
            return {"token": self.token, "token_file": self.token_file, **timeout, **tls}
        return timeout  # adb://: the deployment writes and passes its own token
