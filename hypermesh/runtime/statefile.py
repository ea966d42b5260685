"""Small state files the agent must never lose or half-write: the address and id-range pools.

Both pools are one JSON document each, read and rewritten whole under an exclusive `flock`
on a lock file beside it, so two threads or processes never interleave, and replaced with
write-to-temp, fsync, rename and a directory fsync, so a crash leaves the old document or the
new one and a power cut cannot undo an answer already given.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold the lock of the state file `path` (on `path.lock`, created 0600) for the block."""
    lock_path = path.with_name(path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        # Closing the descriptor drops the lock.
        os.close(fd)


def save(path: Path, data: bytes) -> None:
    """Replace `path` with `data` (mode 0600), durably."""
    tmp = path.with_name(path.name + ".tmp")
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)
    # The rename itself is durable only once the directory is synced.
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
