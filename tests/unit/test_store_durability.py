"""An acknowledged write survives kill -9 of the store's process at any moment.

A child process (`store_storm.py`) runs a write storm against a SqliteStore and prints each
write only after the store acknowledged it. The test kills the child with SIGKILL mid-storm,
reopens the file and checks that every acknowledged write is there with its value and revision,
that multi-key transactions are all-or-nothing, that no revision was lost or reused, and that
the next run resumes the numbering. Three rounds on the same file, killed at different moments.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from hypermesh.store import KeyValue, SqliteStore

STORM = Path(__file__).with_name("store_storm.py")
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Acks:
    """What the children acknowledged, over all rounds."""

    puts: dict[str, int] = field(default_factory=dict)
    pairs: dict[str, int] = field(default_factory=dict)  # "/storm/<round>/pair/<n>" -> revision
    counter: int = 0
    counter_revision: int = 0


def run_round(db: Path, round_: int, kill_after: float, acks: Acks) -> int:
    """Run one storm, kill it `kill_after` seconds after its first ack; returns the ack count."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    child = subprocess.Popen(
        [sys.executable, str(STORM), str(db), str(round_), "32"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert child.stdout is not None and child.stderr is not None
    stderr = child.stderr
    lines: list[bytes] = []
    first_ack = threading.Event()

    def read() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            lines.append(line)
            if len(lines) > 1:
                first_ack.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert first_ack.wait(20), stderr.read().decode() if child.poll() is not None else ""
        time.sleep(kill_after)
        assert child.poll() is None, "the storm ended on its own"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        reader.join(10)
        stderr.close()
    # Lines in the pipe were printed before the kill: they are acknowledged too. A line cut
    # short by the kill (no newline) is not.
    count = 0
    for raw in lines:
        if not raw.endswith(b"\n"):
            continue
        kind, *fields = raw.decode().split()
        if kind == "ready":
            continue
        subject, revision = fields
        count += 1
        if kind == "put":
            acks.puts[subject] = int(revision)
        elif kind == "pair":
            acks.pairs[f"/storm/{round_}/pair/{int(subject):06d}"] = int(revision)
        elif kind == "counter" and int(subject) > acks.counter:
            acks.counter, acks.counter_revision = int(subject), int(revision)
    return count


async def check_store(db: Path, acks: Acks) -> None:
    store = await SqliteStore.open(db)
    try:
        everything = (await store.range("/storm/")).kvs
        by_key = {kv.key: kv for kv in everything}
        # Every acknowledged put is there, with its value and its revision.
        for key, revision in acks.puts.items():
            assert by_key.get(key) == KeyValue(
                key, f"value of {key}".encode(), revision, revision, 1
            )
        # Each writer waited for one ack before the next write: what survived is a prefix.
        written: dict[str, list[int]] = defaultdict(list)
        for kv in everything:
            parts = kv.key.split("/")
            if len(parts) == 5 and parts[3].startswith("w"):
                written[f"{parts[2]}/{parts[3]}"].append(int(parts[4]))
        for writer, numbers in written.items():
            assert sorted(numbers) == list(range(len(numbers))), writer
        # Transactions are all-or-nothing, acknowledged ones are present.
        pair_keys = {key.rsplit("/", 1)[0] for key in by_key if "/pair/" in key}
        for base in pair_keys:
            a, b = by_key.get(f"{base}/a"), by_key.get(f"{base}/b")
            assert a is not None and b is not None, base
            assert a.mod_revision == b.mod_revision
        for base, revision in acks.pairs.items():
            assert by_key[f"{base}/a"].mod_revision == revision
        # The counter holds at least the last acknowledged increment, at most one more.
        counter = await store.get("/storm/counter")
        if acks.counter:
            assert counter is not None
            assert acks.counter <= int(counter.value) <= acks.counter + 1
            assert counter.mod_revision >= acks.counter_revision
        # Every revision up to the head was taken by exactly one transaction: no gap, no reuse.
        revisions: set[int] = set()
        async with asyncio.timeout(30):
            async for batch in store.watch("", start_revision=1):
                revisions.update(event.kv.mod_revision for event in batch.events)
                if batch.revision >= store.revision:
                    break
        assert revisions == set(range(1, store.revision + 1))
        assert max([*acks.puts.values(), *acks.pairs.values(), 0]) <= store.revision
    finally:
        await store.close()


def test_acknowledged_writes_survive_kill_9(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    acks = Acks()
    for round_, kill_after in enumerate([0.4, 1.1, 0.15]):
        acknowledged = run_round(db, round_, kill_after, acks)
        assert acknowledged > 50, f"round {round_} acknowledged only {acknowledged} writes"
        asyncio.run(check_store(db, acks))
