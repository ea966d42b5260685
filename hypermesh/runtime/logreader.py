"""Reading a container's log files for a log request: history, tail, and following.

The shim writes stdout and stderr to separate files, unframed and without timestamps (see
`logfiles`), so the order of lines across the two streams is lost once written. An answer gives
stdout, then stderr: an error message is usually the last thing a crashed program says, so it
lands at the end where one looks first. `tailLines` counts lines of that whole answer.

While following, new lines of either stream go out in the order the agent sees them (it polls
four times a second) and a line is sent only once complete, so two streams never mix within a
line. A follow ends when the container's exit file appears and both files are drained, when
the caller sets its stop event, or when the caller stops iterating. Files are rotated by
copy-and-truncate (`logfiles`); a follower notices the rotated copy and reads what it missed
from there, so rotation neither repeats nor loses lines.

This module only reads files: the agent's endpoint parses requests and sends the bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from hypermesh.runtime import logfiles

__all__ = ["FOLLOW_POLL", "ROTATION_WAIT", "LogOptions", "read_logs"]

# How often a follow looks at the files.
FOLLOW_POLL = 0.25
# How long a follow waits for the rotated copy of a file it saw shrink.
ROTATION_WAIT = 2.0
# Reading unit for log files, forwards and backwards.
_CHUNK = 1 << 16


@dataclass(frozen=True)
class LogOptions:
    """What a log request asks for (Kubernetes' PodLogOptions, where the files allow it)."""

    streams: tuple[logfiles.Stream, ...] = logfiles.STREAMS
    follow: bool = False
    previous: bool = False
    tail_lines: int | None = None
    limit_bytes: int | None = None


async def read_logs(
    workdir: Path, options: LogOptions, *, stop: asyncio.Event, poll: float = FOLLOW_POLL
) -> AsyncIterator[bytes]:
    """A container's output as `options` ask: what is written so far, then (following) what
    comes, until the container ends, `stop` is set, or the caller stops iterating."""
    budget = options.limit_bytes if options.limit_bytes is not None else -1

    def spend(data: bytes) -> bytes:
        nonlocal budget
        if budget < 0:
            return data
        data, budget = data[:budget], max(0, budget - len(data))
        return data

    following = options.follow and not options.previous
    # Followers first: each notes where its file ends (and which rotated copy exists) at the
    # moment the history below is cut, so nothing is sent twice or skipped.
    followers = (
        [_Follower(logfiles.current_log(workdir, stream)) for stream in options.streams]
        if following
        else []
    )
    parts = {
        stream: [(path, _size(path)) for path in logfiles.run_files(workdir, stream, previous=options.previous)]
        for stream in options.streams
    }
    for follower in followers:
        for stream in options.streams:
            parts[stream] = [(p, min(end, follower.offset) if p == follower.path else end) for p, end in parts[stream]]
    if options.tail_lines is not None:
        lines: list[bytes] = []
        for stream in options.streams:
            lines += await asyncio.to_thread(_tail_lines, parts[stream], options.tail_lines)
        _end_lines(lines)
        if data := spend(b"".join(lines[-options.tail_lines :] if options.tail_lines else [])):
            yield data
    else:
        last = b"\n"
        for stream in options.streams:
            if parts[stream] and last != b"\n":
                # The previous stream ended mid-line; the next one starts on a line of its own.
                last = b"\n"
                if data := spend(b"\n"):
                    yield data
            for path, end in parts[stream]:
                async for chunk in _read_range(path, 0, end):
                    last = chunk[-1:]
                    if data := spend(chunk):
                        yield data

    while followers and budget != 0:
        finished = (workdir / "exit").exists() or not workdir.is_dir()
        for follower in followers:
            new = await asyncio.to_thread(follower.read_new)
            if data := spend(follower.complete_lines(new, flush=finished or follower.replaced)):
                yield data
        if finished or all(f.replaced for f in followers):
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), poll)
        if stop.is_set():
            return


@dataclass
class _Follower:
    """Reads what is appended to one log file, across copy-and-truncate rotations."""

    path: Path
    offset: int = 0
    inode: int | None = None
    rotated_inode: int | None = None
    # The run's file was moved away (a restart made it the previous run's): nothing more comes.
    replaced: bool = False
    _partial: bytes = field(default=b"", repr=False)
    _shrunk_at: float | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.rotated_inode = _inode(logfiles.rotated_log(self.path))
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return
        self.offset, self.inode = stat.st_size, stat.st_ino

    def read_new(self) -> bytes:
        """The bytes written since the last call (blocking file I/O: run it in a thread)."""
        if self.replaced:
            return b""
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            # Gone after it existed: moved aside for the next run (which makes its own file).
            self.replaced = self.inode is not None
            return b""
        if self.inode is None:
            self.inode = stat.st_ino
        elif stat.st_ino != self.inode:
            self.replaced = True
            return b""
        data = b""
        rotated_inode = _inode(logfiles.rotated_log(self.path))
        if rotated_inode is not None and rotated_inode != self.rotated_inode:
            # Rotated since the last look. Rotation copies the file, truncates it, then puts
            # the copy in place: what followed our offset is in the copy, and the live file
            # starts again from zero.
            self.rotated_inode = rotated_inode
            data = _read_all(logfiles.rotated_log(self.path), self.offset)
            self.offset, self._shrunk_at = 0, None
        elif stat.st_size < self.offset:
            # Truncated, but the copy is not in place yet: wait for it, though not for ever,
            # in case this was no rotation at all.
            now = time.monotonic()
            self._shrunk_at = self._shrunk_at or now
            if now - self._shrunk_at < ROTATION_WAIT:
                return b""
            self.offset, self._shrunk_at = 0, None
        new = _read_all(self.path, self.offset)
        self.offset += len(new)
        return data + new

    def complete_lines(self, data: bytes, *, flush: bool) -> bytes:
        """Whole lines only, so two streams never mix within a line; `flush` gives the rest."""
        data = self._partial + data
        if flush:
            self._partial = b""
            return data
        cut = data.rfind(b"\n") + 1
        self._partial = data[cut:]
        return data[:cut]


async def _read_range(path: Path, start: int, end: int) -> AsyncIterator[bytes]:
    position = start
    while position < end:
        chunk = await asyncio.to_thread(_read_all, path, position, min(end, position + _CHUNK))
        if not chunk:
            return
        position += len(chunk)
        yield chunk


def _read_all(path: Path, start: int, end: int | None = None) -> bytes:
    try:
        with path.open("rb") as handle:
            handle.seek(start)
            return handle.read(-1 if end is None else max(0, end - start))
    except FileNotFoundError:
        return b""


def _tail_lines(parts: list[tuple[Path, int]], lines: int) -> list[bytes]:
    """The last `lines` lines of the files (oldest first, each read up to its end offset),
    reading backwards so the cost follows the lines wanted rather than the file sizes."""
    if lines <= 0:
        return []
    blocks: list[bytes] = []
    newlines = 0
    for path, end in reversed(parts):
        try:
            handle = path.open("rb")
        except FileNotFoundError:
            continue
        with handle:
            newlines = logfiles.read_back(handle, end, lines, blocks, newlines)
        if newlines > lines:
            break
    return b"".join(reversed(blocks)).splitlines(keepends=True)[-lines:]


def _end_lines(lines: list[bytes]) -> None:
    """A stream's last line may lack its newline; another stream's lines must not join it."""
    for index, line in enumerate(lines[:-1]):
        if not line.endswith(b"\n"):
            lines[index] = line + b"\n"


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None
