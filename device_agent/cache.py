"""Content-addressed model store on disk: ``<dir>/<sha256>.tflite``, capped in bytes.

Models arrive through ``PutModel`` as chunks; :meth:`ModelCache.put` streams them into a
temporary file while hashing, checks the size, the digest and the TFLite identifier, flushes it
to disk and renames it into place (then flushes the directory), so neither a crash nor a power
loss leaves a half-written model under a digest. When a new model does not fit, the least
recently used models that no session has loaded (not pinned) are deleted; if that is not enough,
the upload fails with :class:`LimitExceededError`.

A file is trusted by its contents, never its name: an entry is hashed before its first use by
each agent process (and again whenever its size or modification time changes), and one whose
bytes do not hash to its name (planted, truncated, bit-rotted) is deleted; the request then gets
NOT_FOUND, so the client uploads the model again, which replaces the entry.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Iterable

from device_agent.errors import AgentInvalidRequestError, LimitExceededError, NotFoundError
from device_agent.runtime import TFLITE_FILE_IDENTIFIER

log = logging.getLogger(__name__)

#: Default cache capacity: room for dozens of the small classifiers this tool targets while
#: staying a small fraction of a phone's free storage.
DEFAULT_CAPACITY_BYTES = 1 << 30

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_SUFFIX = ".tflite"
#: Bytes of a TFLite flatbuffer checked for the file identifier (4-byte root offset + "TFL3").
_HEADER_BYTES = 8
#: Read size when hashing a stored model: large enough that hashing runs at disk speed.
_HASH_CHUNK_BYTES = 1 << 20
#: Longest client-supplied digest quoted back in a message.
_QUOTED_CHARS = 80
#: The cache directory is private to the agent's user: another user who could write there could
#: plant models, and one who could read there could copy them.
PRIVATE_DIR_MODE = 0o700


def default_cache_dir() -> str:
    """``$XDG_CACHE_HOME/dflare-agent`` (``~/.cache/dflare-agent``), created private (0700).

    When home is read-only (a service account, a phone's shell), a directory private to this
    user under the temp dir: ``dflare-agent-cache-<uid>`` if it exists as this user's own 0700
    directory or can be made so, else a fresh randomly named one; never a shared, predictable path.
    """
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    path = os.path.join(base, "dflare-agent")
    try:
        os.makedirs(path, mode=PRIVATE_DIR_MODE, exist_ok=True)
        return path
    except OSError:
        pass
    uid = os.getuid() if hasattr(os, "getuid") else 0
    path = os.path.join(tempfile.gettempdir(), f"dflare-agent-cache-{uid}")
    try:
        os.mkdir(path, PRIVATE_DIR_MODE)
    except FileExistsError:
        pass
    except OSError:
        return tempfile.mkdtemp(prefix="dflare-agent-cache-")
    if _is_private_dir(path):
        return path
    log.warning("%s is not a directory private to this user; using a new private one instead", path)
    return tempfile.mkdtemp(prefix="dflare-agent-cache-")


def _is_private_dir(path: str) -> bool:
    """True for a real directory (not a symlink) owned by this user that no one else may use."""
    try:
        info = os.lstat(path)
    except OSError:
        return False
    own = not hasattr(os, "getuid") or info.st_uid == os.getuid()
    return stat.S_ISDIR(info.st_mode) and own and not info.st_mode & 0o077


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file's contents, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_sha256(sha256: str) -> str:
    """Return ``sha256`` if it is 64 lowercase hex characters.

    Raises:
        AgentInvalidRequestError: anything else.
    """
    if not _SHA256_RE.match(sha256 or ""):
        quoted = repr(sha256) if len(sha256 or "") <= _QUOTED_CHARS else f"{len(sha256)} characters"
        raise AgentInvalidRequestError(
            f"sha256 must be 64 lowercase hex characters (hashlib.sha256(model).hexdigest()), got {quoted}"
        )
    return sha256


class ModelCache:
    """Models on disk by sha256, at most ``capacity_bytes`` in total.

    Args:
        directory: where models are stored (created if missing); models already there are kept.
        capacity_bytes: the most bytes the stored models may take.
    """

    def __init__(self, directory: str | os.PathLike, capacity_bytes: int = DEFAULT_CAPACITY_BYTES) -> None:
        if capacity_bytes <= 0:
            raise ValueError(f"cache capacity must be positive, got {capacity_bytes} bytes")
        self.directory = Path(directory)
        self.directory.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
        self.capacity_bytes = int(capacity_bytes)
        self._lock = threading.Lock()
        self._sizes: OrderedDict[str, int] = OrderedDict()  # least recently used first
        self._pins: dict[str, int] = {}
        # Entries whose bytes were hashed in this process, with the (size, mtime, inode) then seen:
        # a file changed since (replaced, truncated) is hashed again.
        self._verified: dict[str, tuple[int, int, int]] = {}
        self._verify_lock = threading.Lock()  # one hash at a time: a phone's storage is the limit
        self._reserved_bytes = 0
        self._scan()

    def _scan(self) -> None:
        found = []
        for path in self.directory.glob(f"*{_SUFFIX}"):
            sha = path.name[: -len(_SUFFIX)]
            if _SHA256_RE.match(sha):
                stat = path.stat()
                found.append((stat.st_mtime, sha, stat.st_size))
        for _, sha, size in sorted(found):
            self._sizes[sha] = size
        for leftover in self.directory.glob(".upload-*"):
            leftover.unlink(missing_ok=True)  # an upload interrupted by a crash or kill

    @property
    def used_bytes(self) -> int:
        with self._lock:
            return sum(self._sizes.values())

    def __contains__(self, sha256: str) -> bool:
        with self._lock:
            return sha256 in self._sizes

    def path(self, sha256: str) -> Path:
        """Return a stored model's file, its contents verified, and mark it recently used.

        Raises:
            NotFoundError: the digest is not stored, or its file's bytes do not hash to it (the
                entry is deleted: upload the model again).
        """
        check_sha256(sha256)
        with self._lock:
            if sha256 not in self._sizes:
                raise NotFoundError(f"model {sha256} is not on this agent: upload it with PutModel first")
            self._sizes.move_to_end(sha256)
        problem = self._verify(sha256)
        if problem:
            raise NotFoundError(f"model {sha256} was stored corrupt ({problem}) and was deleted: upload it again "
                                "with PutModel")
        return self._file(sha256)

    def _verify(self, sha256: str) -> str:
        """Hash an entry's file unless already verified unchanged; delete it if wrong. Returns what is wrong, or ""."""
        path = self._file(sha256)
        with self._verify_lock:
            try:
                info = path.stat()
            except OSError as exc:
                problem = f"its file is unreadable: {exc.strerror}"
            else:
                seen = (info.st_size, info.st_mtime_ns, info.st_ino)
                if self._verified.get(sha256) == seen:
                    return ""
                try:
                    actual = file_sha256(path)
                except OSError as exc:
                    problem = f"its file is unreadable: {exc.strerror}"
                else:
                    if actual == sha256:
                        self._verified[sha256] = seen
                        return ""
                    problem = f"its {info.st_size} bytes hash to {actual}"
            self._verified.pop(sha256, None)
        log.error("model %s in the cache is corrupt (%s): deleting it", sha256, problem)
        with self._lock:
            if sha256 in self._sizes:
                self._sizes.pop(sha256)
                path.unlink(missing_ok=True)
        return problem

    def _file(self, sha256: str) -> Path:
        return self.directory / f"{sha256}{_SUFFIX}"

    def pin(self, sha256: str) -> Path:
        """Keep a model from eviction while a session uses it; returns its file.

        Raises:
            NotFoundError: the digest is not stored.
        """
        path = self.path(sha256)
        with self._lock:
            self._pins[sha256] = self._pins.get(sha256, 0) + 1
        return path

    def unpin(self, sha256: str) -> None:
        """Undo one :meth:`pin`."""
        with self._lock:
            count = self._pins.get(sha256, 0) - 1
            if count > 0:
                self._pins[sha256] = count
            else:
                self._pins.pop(sha256, None)

    def put(self, sha256: str, total_bytes: int, chunks: Iterable[bytes]) -> tuple[int, bool]:
        """Store a model from its chunks, verifying length, digest and TFLite identifier.

        Args:
            sha256: the digest the sender claims.
            total_bytes: the size the sender claims.
            chunks: the model's bytes in order (the first one may be empty).

        Returns:
            (size in bytes, True when the model was already stored and nothing was written).

        Raises:
            AgentInvalidRequestError: bad digest format, size mismatch, digest mismatch, not TFLite.
            LimitExceededError: the model does not fit even after evicting unloaded models.
        """
        check_sha256(sha256)
        with self._lock:
            present = sha256 in self._sizes
        if present and not self._verify(sha256):  # a corrupt entry is deleted and replaced by this upload
            with self._lock:
                if sha256 in self._sizes:
                    self._sizes.move_to_end(sha256)
                    return self._sizes[sha256], True
        if total_bytes <= 0:
            raise AgentInvalidRequestError("PutModel's first chunk must give total_bytes, the model's size (> 0)")
        self._reserve(total_bytes)
        try:
            size = self._write(sha256, total_bytes, chunks)
        finally:
            with self._lock:
                self._reserved_bytes -= total_bytes
        return size, False

    def _reserve(self, total_bytes: int) -> None:
        with self._lock:
            if total_bytes > self.capacity_bytes:
                raise LimitExceededError(
                    f"model is {total_bytes} bytes, larger than the agent's model cache "
                    f"({self.capacity_bytes} bytes); restart the agent with a larger --cache-max-bytes"
                )
            for sha in list(self._sizes):
                if sum(self._sizes.values()) + self._reserved_bytes + total_bytes <= self.capacity_bytes:
                    break
                if sha not in self._pins:
                    self._evict_locked(sha)
            used = sum(self._sizes.values()) + self._reserved_bytes
            if used + total_bytes > self.capacity_bytes:
                raise LimitExceededError(
                    f"model cache is full: {used} of {self.capacity_bytes} bytes are held by loaded models "
                    f"and uploads, {total_bytes} more needed; unload sessions or restart the agent with a "
                    "larger --cache-max-bytes"
                )
            self._reserved_bytes += total_bytes

    def _evict_locked(self, sha256: str) -> None:
        size = self._sizes.pop(sha256)
        self._file(sha256).unlink(missing_ok=True)  # _verified keeps its stat: a new file differs
        log.info("evicted model %s (%d bytes) from the cache", sha256, size)

    def _write(self, sha256: str, total_bytes: int, chunks: Iterable[bytes]) -> int:
        digest = hashlib.sha256()
        received = 0
        header = b""
        fd, tmp_name = tempfile.mkstemp(prefix=".upload-", dir=self.directory)
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    received += len(chunk)
                    if received > total_bytes:
                        raise AgentInvalidRequestError(
                            f"model upload sent more than the announced total_bytes={total_bytes}"
                        )
                    if len(header) < _HEADER_BYTES:
                        header += chunk[: _HEADER_BYTES - len(header)]
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())  # the bytes are on disk before the name points at them
            if received != total_bytes:
                raise AgentInvalidRequestError(
                    f"model upload truncated: received {received} of {total_bytes} bytes; upload it again"
                )
            actual = digest.hexdigest()
            if actual != sha256:
                raise AgentInvalidRequestError(
                    f"sha256 mismatch: the bytes received hash to {actual}, the request said {sha256}; "
                    "the model was corrupted in transit or the digest was computed over other bytes"
                )
            if header[4:8] != TFLITE_FILE_IDENTIFIER:
                raise AgentInvalidRequestError(
                    f"not a TFLite model: bytes 4..8 are {header[4:8]!r}, expected {TFLITE_FILE_IDENTIFIER!r} "
                    "(send the .tflite file itself)"
                )
            os.replace(tmp_name, self._file(sha256))
            _fsync_dir(self.directory)  # and the rename itself survives a power loss
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        info = self._file(sha256).stat()
        with self._lock:
            self._sizes[sha256] = received
        with self._verify_lock:  # hashed while it arrived: no need to read it back
            self._verified[sha256] = (info.st_size, info.st_mtime_ns, info.st_ino)
        log.info("stored model %s (%d bytes)", sha256, received)
        return received
