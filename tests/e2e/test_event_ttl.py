"""Events expire after `--event-ttl`, counted from when they last happened.

As in Kubernetes (where an Event's etcd lease is refreshed by every write), the clock restarts
when an Event is written: its creation, or a recurrence that bumps its timestamps. The server
here runs with an 8 s TTL, so its sweep runs every second.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from hypermesh.api.eventttl import expired, last_seen
from tests.e2e.conftest import Server, free_port

pytestmark = pytest.mark.timeout(120)


def event(name: str, namespace: str, when: datetime) -> str:
    stamp = when.strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"""
apiVersion: v1
kind: Event
metadata: {{name: {name}, namespace: {namespace}}}
involvedObject: {{kind: Namespace, name: {namespace}}}
reason: Test
message: for the TTL test
type: Normal
firstTimestamp: "{stamp}"
lastTimestamp: "{stamp}"
count: 1
"""


@pytest.fixture(scope="module")
def short_ttl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("ttl") / "data", free_port(), extra_args=("--event-ttl", "8s"))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def names(server: Server) -> set[str]:
    return set(server.kubectl("get", "events", "-n", "default", "-o", "name").stdout.replace("event/", " ").split())


def test_events_go_ttl_after_their_last_occurrence(short_ttl: Server) -> None:
    began = time.monotonic()
    now = datetime.now(UTC)
    short_ttl.kubectl("apply", "-f", "-", input=event("once", "default", now))
    short_ttl.kubectl("apply", "-f", "-", input=event("recurring", "default", now))
    assert {"once", "recurring"} <= names(short_ttl)
    time.sleep(max(0.0, 4 - (time.monotonic() - began)))
    # It happens again: the recorder bumps count and lastTimestamp.
    again = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    short_ttl.kubectl("patch", "event", "recurring", "-n", "default", "--type=merge", "-p", f'{{"count": 2, "lastTimestamp": "{again}"}}')

    deadline = time.monotonic() + 60
    while "once" in names(short_ttl):
        assert time.monotonic() < deadline, "the Event was never deleted"
        time.sleep(0.3)
    assert time.monotonic() - began >= 8, "deleted before its TTL"
    assert "recurring" in names(short_ttl), "an Event that recurred went with its first occurrence"
    while "recurring" in names(short_ttl):
        assert time.monotonic() < deadline, "the recurring Event was never deleted"
        time.sleep(0.3)


def test_last_occurrence_counts() -> None:
    now = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    hour_ago = "2026-11-27T11:00:00Z"
    recurring = {"metadata": {"creationTimestamp": hour_ago}, "firstTimestamp": hour_ago, "lastTimestamp": "2026-11-27T11:59:00Z"}
    assert last_seen(recurring) == datetime(2026, 11, 27, 11, 59, tzinfo=UTC)
    assert not expired(recurring, now, 3600)
    series = {"metadata": {"creationTimestamp": hour_ago}, "eventTime": "2026-11-27T10:00:00.000000Z", "series": {"lastObservedTime": "2026-11-27T11:58:00.000000Z", "count": 3}}
    assert not expired(series, now, 3600)
    stale = {"metadata": {"creationTimestamp": "2026-11-27T10:59:00Z"}}
    assert expired(stale, now, 3600)
    assert not expired({"metadata": {}}, now, 3600)  # no time at all: never guessed
