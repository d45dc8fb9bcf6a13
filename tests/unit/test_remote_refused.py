"""A ``grpc://`` target whose port refuses connections fails at once, not after the connect timeout (issue 23)."""

from __future__ import annotations

import socket
import time

import pytest

from host.errors import TargetUnreachableError
from host.targets.remote import RemoteTarget

#: A connect timeout far beyond how long the refusal may take: the call must not wait it out.
CONNECT_TIMEOUT_S = 120.0


def _refused_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_refused_connection_fails_fast_naming_the_port() -> None:
    port = _refused_port()
    target = RemoteTarget(f"grpc://127.0.0.1:{port}", connect_timeout_s=CONNECT_TIMEOUT_S, retries=0)
    start = time.monotonic()
    with pytest.raises(TargetUnreachableError, match=f"nothing listens at 127.0.0.1:{port} .*refused"):
        target.info()
    assert time.monotonic() - start < CONNECT_TIMEOUT_S / 2  # liveness: it did not wait for the timeout
    target.close()
