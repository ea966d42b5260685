"""The audit log's hash chain: written, continued after a restart, and checked."""

from __future__ import annotations

import time
from pathlib import Path

import orjson

from hypermesh.api import audit


def write(path: Path, count: int, *, first: int = 0) -> None:
    log = audit.AuditLog(path)
    log.open()
    for index in range(first, first + count):
        log.record(audit.entry(user=f"u{index}", groups=("g",), verb="get", code=200, started=time.monotonic(), resource="instances", namespace="default", name=f"i{index}"))
    log.close()


def test_a_written_log_verifies_and_continues_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    write(path, 5)
    write(path, 3, first=5)
    lines, problem = audit.verify(path)
    assert (lines, problem) == (8, None)
    records = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert records[0]["prev"] == audit.GENESIS
    assert records[5]["prev"] == records[4]["hash"]
    assert records[7]["user"] == "u7" and records[7]["resource"]["name"] == "i7"
    assert path.stat().st_mode & 0o777 == 0o600


def test_an_edited_line_is_found(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    write(path, 6)
    lines = path.read_bytes().splitlines()
    lines[3] = lines[3].replace(b'"code":200', b'"code":403')
    path.write_bytes(b"\n".join(lines) + b"\n")
    _, problem = audit.verify(path)
    assert problem is not None and problem.line == 4
    assert "changed after it was written" in problem.message


def test_an_edited_line_with_a_recomputed_hash_breaks_the_next_link(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    write(path, 6)
    lines = path.read_bytes().splitlines()
    record = orjson.loads(lines[2])
    record["user"] = "someone-else"
    record["hash"] = audit.line_hash(record)
    lines[2] = orjson.dumps(record)
    path.write_bytes(b"\n".join(lines) + b"\n")
    _, problem = audit.verify(path)
    assert problem is not None and problem.line == 4
    assert "chain broken" in problem.message


def test_a_removed_line_is_found(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    write(path, 6)
    lines = path.read_bytes().splitlines()
    del lines[1]
    path.write_bytes(b"\n".join(lines) + b"\n")
    _, problem = audit.verify(path)
    assert problem is not None and problem.line == 2


def test_a_torn_last_line_is_cut_and_the_chain_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    write(path, 4)
    with open(path, "ab") as handle:
        handle.write(b'{"user":"half-writ')
    write(path, 2, first=4)
    assert audit.verify(path) == (6, None)


def test_garbage_is_reported_not_raised(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.write_bytes(b"not json\n")
    _, problem = audit.verify(path)
    assert problem is not None and problem.line == 1 and "not JSON" in problem.message
