"""Shared memory for the worker's slots, also where there is no ``/dev/shm`` (Android) and no writable ``/tmp``.

A slot is created, in order of preference, as:

1. an anonymous ``memfd_create`` file (Linux 3.17+, every Android the agent supports): RAM-backed,
   nameless, gone when the last mapping closes. Its descriptor reaches the worker over the worker's
   socket (``SCM_RIGHTS``), since it has no path to open;
2. a file in ``/dev/shm`` when that is a writable directory;
3. a file in the temp directory (macOS and other systems without either).

Nothing here reads ``TMPDIR`` or ``HOME`` unless it gets to case 3.
"""

from __future__ import annotations

import os
import socket
import tempfile
from multiprocessing.connection import Connection

#: Name shown in /proc/PID/maps for the memfd regions (debugging aid only).
MEMFD_NAME = "dflare-slot"
_DEV_SHM = "/dev/shm"


def create_region(size: int) -> tuple[int, str | None]:
    """Create a shared region of ``size`` bytes; return (open fd, path or None for a memfd).

    The caller maps the fd, hands it (or the path) to the worker, then closes it.
    """
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is not None:
        try:
            fd = memfd_create(MEMFD_NAME, os.MFD_CLOEXEC)
        except OSError:
            fd = -1  # seccomp or an old kernel: fall back to a file
        if fd >= 0:
            os.ftruncate(fd, size)  # sparse: pages are used only when a batch touches them
            return fd, None
    directory = _DEV_SHM if os.path.isdir(_DEV_SHM) and os.access(_DEV_SHM, os.W_OK) else None
    fd, path = tempfile.mkstemp(prefix="dflare-slot-", dir=directory)
    os.ftruncate(fd, size)
    return fd, path


def send_fds(conn: Connection, fds: list[int]) -> None:
    """Send descriptors right after a message on ``conn`` (one byte carrying them as SCM_RIGHTS)."""
    sock = socket.socket(fileno=os.dup(conn.fileno()))
    try:
        socket.send_fds(sock, [b"\0"], fds)
    finally:
        sock.close()


def receive_fds(conn: Connection, count: int) -> list[int]:
    """Receive the descriptors :func:`send_fds` sent (the next byte on ``conn``).

    Raises:
        OSError: fewer descriptors arrived than announced.
    """
    sock = socket.socket(fileno=os.dup(conn.fileno()))
    try:
        _, fds, _, _ = socket.recv_fds(sock, 1, count)
    finally:
        sock.close()
    if len(fds) != count:
        for fd in fds:
            os.close(fd)
        raise OSError(f"expected {count} shared-memory descriptors from the agent, got {len(fds)}")
    return list(fds)
