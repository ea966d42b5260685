"""Where a container's output lives on the node, how it is kept bounded, and how to read its end.

Each container of an Instance has a work directory with `stdout.log` and `stderr.log`. The
container's shim opens them in append mode and holds them open for the whole run, so the agent
cannot rotate by renaming: the shim would keep writing into the renamed file. Rotation is
therefore copy-and-truncate, as logrotate's `copytruncate` does: the file is copied to
`<file>.1` and then cut to zero. Because the writer uses O_APPEND, its next write lands at the
new end of the file instead of leaving a hole. The price is a small window between the last copy
and the truncation in which bytes written are lost; the copy is repeated until it catches up with
the writer, so the window is as short as a stat and a truncate.

A run's output is thus at most two files, `<file>.1` (older) and `<file>` (newer), each up to the
rotation size. When the container starts again, the finished run's files become
`<file>.previous` and `<file>.previous.1`, which is what `kubectl logs --previous` shows; the new
shim then creates fresh files.

Nothing here knows about Instances or the API: paths in, bytes out, so a logs endpoint can use
the same helpers as the supervisor.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import BinaryIO, Literal

__all__ = [
    "MAX_LOG_BYTES",
    "STREAMS",
    "Stream",
    "current_log",
    "keep_previous",
    "previous_log",
    "rotate",
    "rotate_container",
    "rotated_log",
    "run_files",
    "tail",
    "tail_file",
]

Stream = Literal["stdout", "stderr"]
STREAMS: tuple[Stream, ...] = ("stdout", "stderr")
# A log file larger than this is rotated (one rotated copy is kept, so a run keeps at most twice
# this much per stream).
MAX_LOG_BYTES = 10 * 1024 * 1024
# How much is read at a time, when copying and when reading a file backwards.
_CHUNK = 1 << 16
# Copy rounds before truncating regardless: a writer faster than the copy cannot hold rotation off.
_COPY_ROUNDS = 4


# Layout


def current_log(workdir: Path, stream: Stream) -> Path:
    """The file the running container's shim appends `stream` to."""
    return workdir / f"{stream}.log"


def previous_log(workdir: Path, stream: Stream) -> Path:
    """The newest file of the container's previous run (`kubectl logs --previous`)."""
    return workdir / f"{stream}.log.previous"


def rotated_log(path: Path) -> Path:
    """The older half of the run whose newest file is `path`."""
    return path.with_name(path.name + ".1")


def run_files(workdir: Path, stream: Stream, *, previous: bool = False) -> list[Path]:
    """The existing files of one run's `stream`, oldest first."""
    newest = previous_log(workdir, stream) if previous else current_log(workdir, stream)
    return [path for path in (rotated_log(newest), newest) if path.is_file()]


# Keeping the files bounded


def rotate(path: Path, limit: int = MAX_LOG_BYTES) -> bool:
    """Copy `path` to its rotated name and truncate it, if it is larger than `limit` bytes.

    Returns whether it rotated. A file that does not exist is not an error (the container may not
    have started yet, or its directory is being removed).
    """
    try:
        if path.stat().st_size <= limit:
            return False
    except FileNotFoundError:
        return False
    target = rotated_log(path)
    staging = target.with_name(target.name + ".tmp")
    try:
        with path.open("rb") as source, staging.open("wb") as copy:
            copied = 0
            for _ in range(_COPY_ROUNDS):
                size = os.fstat(source.fileno()).st_size
                if size <= copied:
                    break
                copied += _copy_range(source, copy, copied, size)
            # Whatever the writer appended since the last round is lost: that is the price of
            # rotating a file somebody else holds open.
            os.truncate(path, 0)
            copy.flush()
            os.fsync(copy.fileno())
        # Readers see the old rotated copy or the new one, never half of it.
        staging.replace(target)
    except FileNotFoundError:
        staging.unlink(missing_ok=True)
        return False
    return True


def rotate_container(workdir: Path, limit: int = MAX_LOG_BYTES) -> list[Path]:
    """Rotate both streams of one container where needed; returns the files rotated."""
    return [
        path for path in (current_log(workdir, stream) for stream in STREAMS) if rotate(path, limit)
    ]


def keep_previous(workdir: Path) -> bool:
    """Before a new run starts: the finished run's files become the previous run's.

    Does nothing (and returns False) when the current files are empty or missing, so a container
    that fails to start again and again does not wipe out the logs of the run that crashed.
    """
    current = {stream: current_log(workdir, stream) for stream in STREAMS}
    if not any(_size(path) > 0 or rotated_log(path).is_file() for path in current.values()):
        return False
    for stream, path in current.items():
        previous = previous_log(workdir, stream)
        # The streams of one run move together, so stdout and stderr always tell of the same run.
        for source, target in ((path, previous), (rotated_log(path), rotated_log(previous))):
            if source.exists():
                source.replace(target)
            else:
                target.unlink(missing_ok=True)
    return True


# Reading


def tail_file(path: Path, lines: int) -> list[bytes]:
    """The last `lines` lines of `path` (each with its newline, if it had one), oldest first.

    Reads backwards from the end in blocks, so the cost follows the lines asked for, not the
    size of the file. A missing file has no lines.
    """
    if lines <= 0:
        return []
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return []
    with handle:
        blocks: list[bytes] = []
        read_back(handle, os.fstat(handle.fileno()).st_size, lines, blocks)
    return _split_lines(b"".join(reversed(blocks)))[-lines:]


def read_back(handle: BinaryIO, end: int, lines: int, blocks: list[bytes], newlines: int = 0) -> int:
    """Read `handle` backwards from `end` in blocks (appended to `blocks`, newest first) until
    more than `lines` newlines were seen or the start is reached; the newlines seen in all.

    One newline more than `lines` is needed to know where the first wanted line begins; a
    final newline ends the last line and does not start another.
    """
    position = end
    while position > 0 and newlines <= lines:
        start = max(0, position - _CHUNK)
        handle.seek(start)
        block = handle.read(position - start)
        blocks.append(block)
        newlines += block.count(b"\n")
        position = start
    return newlines


def tail(workdir: Path, stream: Stream, lines: int, *, previous: bool = False) -> bytes:
    """The last `lines` lines of one run's `stream`, across its rotated file when needed."""
    if lines <= 0:
        return b""
    collected: list[bytes] = []
    # One line more than asked for: while fewer than that were found, the newer file was read
    # from its very start, and its first line may be the end of a line that rotation cut, whose
    # beginning is the older file's last line.
    for path in reversed(run_files(workdir, stream, previous=previous)):
        if len(collected) > lines:
            break
        chunk = tail_file(path, lines + 2 - len(collected))
        if collected and chunk and not chunk[-1].endswith(b"\n"):
            collected[0] = chunk.pop() + collected[0]
        collected = chunk + collected
    return b"".join(collected[-lines:])


# Helpers


def _size(path: Path) -> int:
    with contextlib.suppress(FileNotFoundError):
        return path.stat().st_size
    return 0


def _split_lines(data: bytes) -> list[bytes]:
    """Lines ending in a newline (the last one perhaps not); only \\n ends a line, since a
    carriage return in program output (a progress bar) does not make a log line."""
    parts = data.split(b"\n")
    lines = [part + b"\n" for part in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def _copy_range(source: BinaryIO, copy: BinaryIO, start: int, end: int) -> int:
    """Append bytes [start, end) of `source` to `copy`; returns how many were copied."""
    source.seek(start)
    remaining = end - start
    while remaining > 0:
        block = source.read(min(_CHUNK, remaining))
        if not block:
            break
        copy.write(block)
        remaining -= len(block)
    return end - start - remaining
