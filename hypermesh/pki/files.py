"""Writing key material to disk without ever exposing it, even for an instant.

A private key written with the default umask and chmod-ed afterwards is world-readable between
the two calls, and a crash mid-write leaves a truncated key that the next start cannot parse.
Every write here therefore creates a temporary file with its final mode already set, fsyncs it
and renames it into place, so readers see either the old file or the complete new one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
PUBLIC_FILE_MODE = 0o644


def ensure_private_dir(path: Path) -> None:
    """Create `path` (and parents) if needed and make it accessible to its owner only."""
    path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    # mkdir's mode is filtered by the umask and ignored for an existing directory.
    os.chmod(path, PRIVATE_DIR_MODE)


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Replace `path` with `data`; the file has `mode` from its first byte on."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        # O_CREAT's mode is filtered by the umask too; fchmod makes the mode exact.
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)


def write_private(path: Path, data: bytes) -> None:
    """Write a secret (private key, kubeconfig) readable by its owner only."""
    write_atomic(path, data, PRIVATE_FILE_MODE)


def write_public(path: Path, data: bytes) -> None:
    """Write a non-secret file (a certificate)."""
    write_atomic(path, data, PUBLIC_FILE_MODE)


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on `directory` so two processes never generate keys at once."""
    fd = os.open(directory / ".lock", os.O_WRONLY | os.O_CREAT, PRIVATE_FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
