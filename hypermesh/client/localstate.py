"""The client's own files under `$HYPERMESH_HOME` (default `~/.hypermesh`), written privately.

A command-line client is a new process per command, so everything it learns that is worth
keeping between commands lives on disk: discovery documents, QUIC session tickets, and whether
HTTP/3 reached a server lately. Some of it is secret (a session ticket resumes a TLS session),
none of it is precious: a file that is missing, stale or unreadable is simply relearned. So every
read here tolerates garbage and every write is atomic (a temporary file renamed into place) with
mode 0600 in directories of mode 0700.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

import orjson

# How long a failed HTTP/3 attempt sends later commands straight to TCP.
H3_FAILURE_TTL = 600.0


def home() -> Path:
    """`$HYPERMESH_HOME`, or `~/.hypermesh` when it is unset."""
    return Path(os.environ.get("HYPERMESH_HOME") or "~/.hypermesh").expanduser()


def private_dir(path: Path) -> Path:
    """Create `path` if needed, and every missing parent, with mode 0700."""
    # os.makedirs applies `mode` to the leaf only; a fresh $HYPERMESH_HOME must be private too.
    for directory in reversed([path, *path.parents]):
        if not directory.exists():
            with contextlib.suppress(FileExistsError):
                directory.mkdir(mode=0o700)
    with contextlib.suppress(OSError):
        if path.stat().st_mode & 0o077:
            path.chmod(0o700)
    return path


def write_private(path: Path, data: bytes) -> None:
    """Atomically replace `path` with `data`, mode 0600, in a 0700 directory."""
    import tempfile

    private_dir(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_json(path: Path) -> Any:
    """The JSON in `path`, or None when it is missing or not JSON."""
    try:
        return orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None


def server_key(server: str) -> str:
    """A file-name-safe key for one server URL: `https://[::1]:6443` -> `__1_6443`."""
    from urllib.parse import urlsplit

    parts = urlsplit(server)
    host = parts.hostname or "unknown"
    port = parts.port or 443
    safe = "".join(c if c.isalnum() or c in ".-" else "_" for c in host)
    return f"{safe}_{port}"


class TransportMemory:
    """Remembers, per server, that HTTP/3 got no answer, so later commands skip the wait.

    Blocked UDP costs the whole QUIC connect timeout on every command; after one failure the
    next ten minutes of commands go straight to TCP, then HTTP/3 is tried again.
    """

    def __init__(self, path: Path | None = None, *, ttl: float = H3_FAILURE_TTL) -> None:
        self.path = path if path is not None else home() / "cache" / "transport.json"
        self.ttl = ttl

    def _entries(self) -> dict[str, Any]:
        data = read_json(self.path)
        return data if isinstance(data, dict) else {}

    def h3_failed_recently(self, server: str) -> bool:
        """True if HTTP/3 to `server` failed less than `ttl` seconds ago."""
        entry = self._entries().get(server)
        if not isinstance(entry, dict):
            return False
        failed_at = entry.get("h3_failed_at")
        return isinstance(failed_at, int | float) and 0 <= time.time() - failed_at < self.ttl

    def remember_h3_failure(self, server: str, reason: str) -> None:
        """Record that HTTP/3 to `server` failed just now (and why, for people reading the file)."""
        entries = self._entries()
        entries[server] = {"h3_failed_at": time.time(), "reason": reason}
        self._save(entries)

    def forget(self, server: str) -> None:
        """Drop what is known about `server` (HTTP/3 worked again)."""
        entries = self._entries()
        if entries.pop(server, None) is not None:
            self._save(entries)

    def _save(self, entries: dict[str, Any]) -> None:
        # The cache is an optimisation: a read-only home must not break a command.
        with contextlib.suppress(OSError):
            write_private(self.path, orjson.dumps(entries, option=orjson.OPT_INDENT_2))
