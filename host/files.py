"""Writing result files so that a reader never sees half of one: the one ``atomic_write``.

A report, summary, JUnit file or triggering input is written to a temporary file beside its target,
flushed to disk, renamed over the target, and the directory entry is flushed too. A process killed
at any point leaves either the old file or the new one, never a truncated mix; a power cut after the
call returns keeps the new one.
"""

from __future__ import annotations

import os
from pathlib import Path

#: Suffix of the temporary file beside the target (one writer per output directory, so no clash).
TEMP_SUFFIX = ".tmp"


def atomic_write(path: str | os.PathLike, data: bytes | str, encoding: str = "utf-8") -> Path:
    """Replace ``path`` with ``data`` atomically and durably; return the path.

    Args:
        path: the file to (re)write; its directory must exist.
        data: the whole content; ``str`` is encoded with ``encoding``.
        encoding: the text encoding of a ``str`` ``data``.
    """
    target = Path(path)
    payload = data.encode(encoding) if isinstance(data, str) else data
    tmp = target.with_name(target.name + TEMP_SUFFIX)
    with open(tmp, "wb") as fh:
        fh.write(payload)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, target)
    _fsync_directory(target.parent)
    return target


def _fsync_directory(directory: Path) -> None:
    """Flush the rename itself (POSIX: the directory entry lives in the directory's own blocks)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # a platform without directory handles (Windows): the rename is all we get
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories; the file itself is on disk
        pass
    finally:
        os.close(fd)
