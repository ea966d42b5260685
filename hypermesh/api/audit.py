"""The audit log: one JSON line per request, chained by hashes so that edits show.

Each line records who (user, groups), what (verb, API group, resource, subresource, namespace,
name, or the path of a non-resource request), the answer's HTTP code, the latency, and when.
Request and response bodies are never recorded, so no Secret value can reach the log.

Every line carries `prev`, the hash of the line before it, and `hash`, last, the SHA-256 of the
line's own JSON up to it (the record as written, without `hash`) — a chain from the first line
on. The JSON is written once and hashed as written (no re-encoding in canonical order): a line
is checked by parsing it, dropping `hash` and encoding it again, which gives back the same
bytes for anything orjson wrote. Changing,
inserting or removing a line breaks the chain at that point, which `verify` finds and names by
line number. What a chain alone cannot show is the loss of its newest lines; an operator who
needs that ships the log off the machine as it is written (the file is append-only JSON
lines, which every log shipper reads).

Writing happens on the server's event loop into a buffered file, flushed and fsync'd four times
a second by a background task and at shutdown: a request never waits on the disk, and a crash
loses at most the last quarter second of lines (never a line in the middle). A restarted server
continues the chain from the file's last line.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson

log = logging.getLogger(__name__)

GENESIS = "0" * 64
FLUSH_INTERVAL = 0.25
# How much of the file's end is read to find the last line at start.
_TAIL = 1 << 16


def line_hash(record: dict[str, Any]) -> str:
    """The hash a record (without its own `hash`) must carry."""
    body = {key: value for key, value in record.items() if key != "hash"}
    return hashlib.sha256(orjson.dumps(body)).hexdigest()


_last_second: tuple[int, str] = (-1, "")


def _timestamp() -> str:
    """RFC 3339 with microseconds, UTC; the seconds part is formatted once a second."""
    global _last_second
    now = time.time()
    second = int(now)
    if _last_second[0] != second:
        _last_second = (second, datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S"))
    return f"{_last_second[1]}.{int((now - second) * 1_000_000):06d}Z"


class AuditLog:
    """An append-only, hash-chained request log in one file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[bytes] | None = None
        self._prev = GENESIS
        self._dirty = False
        self._flusher: asyncio.Task[None] | None = None

    def open(self) -> None:
        """Open for appending, continuing the chain of what the file already holds."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._prev = _last_hash(self.path)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._file = os.fdopen(fd, "ab", buffering=1 << 16)

    def start(self) -> None:
        if self._file is None:
            self.open()
        self._flusher = asyncio.get_running_loop().create_task(self._flush_loop(), name="audit-flush")

    async def stop(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        self.close()

    def close(self) -> None:
        if self._file is not None:
            self._flush()
            self._file.close()
            self._file = None

    def record(self, entry: dict[str, Any]) -> None:
        """Append one entry (its `prev` and `hash` are added here)."""
        if self._file is None:
            return
        entry["prev"] = self._prev
        body = orjson.dumps(entry)
        digest = hashlib.sha256(body).hexdigest()
        self._file.write(body[:-1] + b',"hash":"' + digest.encode() + b'"}\n')
        self._prev = digest
        self._dirty = True

    def _flush(self) -> None:
        if self._file is not None and self._dirty:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._dirty = False

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            try:
                self._flush()
            except OSError as exc:
                log.error("cannot write the audit log %s: %s", self.path, exc)


def entry(
    *,
    user: str,
    groups: tuple[str, ...],
    verb: str,
    code: int,
    started: float,
    api_group: str = "",
    resource: str = "",
    subresource: str = "",
    namespace: str = "",
    name: str = "",
    path: str = "",
    decision: str = "",
) -> dict[str, Any]:
    """One request's record; `started` is its time.monotonic() at arrival."""
    record: dict[str, Any] = {
        "time": _timestamp(),
        "user": user,
        "groups": list(groups),
        "verb": verb,
        "code": code,
        "latencyMs": round((time.monotonic() - started) * 1000, 3),
    }
    if resource:
        record["resource"] = {"group": api_group, "resource": resource, "subresource": subresource, "namespace": namespace, "name": name}
    else:
        record["path"] = path
    if decision:
        record["decision"] = decision
    return record


@dataclass(frozen=True)
class Problem:
    """Where a chain breaks: the 1-based line number and what is wrong there."""

    line: int
    message: str


def verify(path: Path) -> tuple[int, Problem | None]:
    """Check the whole chain; (lines read, the first problem or None)."""
    prev = GENESIS
    count = 0
    for number, raw in _lines(path):
        count = number
        try:
            record = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return count, Problem(number, f"not JSON: {exc}")
        if not isinstance(record, dict) or "hash" not in record or "prev" not in record:
            return count, Problem(number, "not an audit record (no prev/hash)")
        if record["prev"] != prev:
            return count, Problem(number, f"chain broken: prev is {str(record['prev'])[:16]}..., the line before hashes to {prev[:16]}... (a line was removed, inserted or changed before this one)")
        expected = line_hash(record)
        if record["hash"] != expected:
            return count, Problem(number, "the line was changed after it was written (its content does not match its hash)")
        prev = record["hash"]
    return count, None


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            yield number, raw.rstrip(b"\n")


def _last_hash(path: Path) -> str:
    """The hash of the file's last complete line (GENESIS for a new or empty file). A torn last
    line (a crash mid-write) is cut off so the chain continues from the last whole one."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return GENESIS
    if size == 0:
        return GENESIS
    with open(path, "r+b") as handle:
        start = max(0, size - _TAIL)
        handle.seek(start)
        tail = handle.read()
        if not tail.endswith(b"\n"):
            cut = tail.rfind(b"\n")
            handle.truncate(start + cut + 1 if cut >= 0 else start)
            tail = tail[: cut + 1] if cut >= 0 else b""
            log.warning("audit log %s ended in a torn line; it was cut off", path)
    lines = tail.rstrip(b"\n").split(b"\n")
    if not lines or not lines[-1]:
        return GENESIS if start == 0 else _last_hash_slow(path)
    try:
        return str(orjson.loads(lines[-1])["hash"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        raise ValueError(f"{path}: the last line is not an audit record; refusing to continue a chain it cannot read") from None


def _last_hash_slow(path: Path) -> str:
    prev = GENESIS
    for _, raw in _lines(path):
        if raw:
            prev = str(orjson.loads(raw)["hash"])
    return prev
