"""Leader failover between two real `hypermesh controllers` processes.

Each controller concern (workloads, gc, scheduler, nodes) holds its own Lease in
hypermesh-system, so "the leader" is whoever holds all four. The tests start one process,
wait until it holds every Lease, start a second one beside it, and then end the first:

- with `kill -9`, nothing is released; the second may take each Lease only once it has expired
  (`renewTime + leaseDurationSeconds`, 12 s by default), and must then do so without help;
- with SIGTERM, the first gives its Leases up on the way out, so the second takes them at its
  next retry, long before they would have expired.

A last test runs two electors in process against an in-process server, with durations of a
second or two, for the case no process signal can stage: a leader whose connection stalls
(no error, no answer) must stop acting before its Lease expires and the other takes it.

Timing is judged from the Leases' own timestamps where possible (both processes share this
machine's clock), with generous overall deadlines, because CI machines are noisy. The durations
are the production defaults (there are no flags to change them), which keeps the kill case at
about 25 s.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from controllers import ControllerSettings
from hypermesh.api.app import APIServer
from hypermesh.client.aio import AsyncClient
from hypermesh.operator.leader import LeaderElector, LeaderSettings, parse_micro_time
from hypermesh.pki import Identity
from hypermesh.store import MemoryStore
from tests.e2e.conftest import VENV_BIN, Server, free_port

pytestmark = pytest.mark.timeout(180)

SETTINGS = ControllerSettings()
CONCERNS = ("workloads", "gc", "scheduler", "nodes")
LEASE_NAMES = tuple(f"{SETTINGS.name}-{concern}" for concern in CONCERNS)
LEASES_PATH = f"/apis/coordination.k8s.io/v1/namespaces/{SETTINGS.lease_namespace}/leases"
NS = "default"

T = TypeVar("T")


# -- processes ----------------------------------------------------------------------------------


class Daemon:
    """A `hypermesh` subcommand running against the test server, logging to a file."""

    def __init__(self, server: Server, name: str, *args: str) -> None:
        assert server.log_path is not None
        self.log_path = server.log_path.parent / f"{name}.log"
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen(
                [str(VENV_BIN / "hypermesh"), *args, "--kubeconfig", str(server.kubeconfig)],
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.strip() == "ready", f"{name} did not start:\n{self.log()}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text()

    def holds(self, lease: dict[str, Any]) -> bool:
        """Whether the Lease names this process (identities are host_pid_random)."""
        holder = (lease.get("spec") or {}).get("holderIdentity") or ""
        return f"_{self.pid}_" in holder

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        """Send `sig` and wait; the exit code (None if it had to be killed)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return None
        return self.proc.returncode


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[Server]:
    """A server of its own per test: Leases left by another test's killed process would make
    the first controller wait for them to expire."""
    srv = Server(tmp_path / "data", free_port())
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    """Everything a test started; whatever is still running at the end is killed."""
    started: list[Daemon] = []
    try:
        yield started
    finally:
        for daemon in reversed(started):
            if daemon.proc.poll() is None:
                daemon.proc.kill()
                daemon.proc.wait()


# -- reading state ------------------------------------------------------------------------------


def poll(what: str, check: Callable[[], T | None], timeout: float) -> tuple[T, float]:
    """The first truthy `check()` and how long it took; fails after `timeout` seconds."""
    start = time.monotonic()
    while True:
        result = check()
        elapsed = time.monotonic() - start
        if result:
            return result, elapsed
        assert elapsed < timeout, f"{what}: not reached in {timeout:.0f} s"
        time.sleep(0.1)


def leases(http: httpx.Client) -> dict[str, dict[str, Any]]:
    """The controllers' Leases by name (the ones that exist yet)."""
    found = {}
    for name in LEASE_NAMES:
        answer = http.get(f"{LEASES_PATH}/{name}")
        if answer.status_code == 200:
            found[name] = answer.json()
    return found


def held_by(http: httpx.Client, daemon: Daemon) -> dict[str, dict[str, Any]] | None:
    """Every controller Lease, if `daemon` holds them all."""
    current = leases(http)
    if len(current) == len(LEASE_NAMES) and all(daemon.holds(lease) for lease in current.values()):
        return current
    return None


def spec_time(lease: dict[str, Any], field: str) -> datetime:
    return parse_micro_time(lease["spec"][field])


def workload(name: str, replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "hypermesh.io/v1",
        "kind": "Workload",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "replicas": replicas,
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "containers": [
                        {
                            "name": "main",
                            "image": "busybox",
                            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
                        }
                    ]
                },
            },
        },
    }


def instances_of(http: httpx.Client, app: str) -> list[dict[str, Any]]:
    answer = http.get(
        f"/apis/hypermesh.io/v1/namespaces/{NS}/instances", params={"labelSelector": f"app={app}"}
    )
    answer.raise_for_status()
    return [i for i in answer.json()["items"] if not i["metadata"].get("deletionTimestamp")]


def leader_and_follower(
    server: Server, daemons: list[Daemon], http: httpx.Client
) -> tuple[Daemon, Daemon]:
    """Start the first process, wait until it leads every concern, then start the second."""
    first = Daemon(server, "controllers-1", "controllers")
    daemons.append(first)
    poll("the first process holds every Lease", lambda: held_by(http, first), timeout=30)
    second = Daemon(server, "controllers-2", "controllers")
    daemons.append(second)
    # The second process is only a candidate while the first renews.
    time.sleep(3)
    assert held_by(http, first), "the follower took a Lease from a live leader"
    return first, second


# -- the tests ----------------------------------------------------------------------------------


def test_kill_9_leader_the_follower_takes_over(fresh_server: Server, daemons: list[Daemon]) -> None:
    with fresh_server.http() as http:
        daemons.append(Daemon(fresh_server, "simulate-nodes", "simulate-nodes", "--count", "2"))
        first, second = leader_and_follower(fresh_server, daemons, http)

        os.kill(first.pid, signal.SIGKILL)
        first.proc.wait(10)
        killed_at = time.monotonic()
        # Nothing can take a Lease for over ten seconds yet, so these are the leader's last words.
        last = leases(http)
        assert all(first.holds(lease) for lease in last.values())

        taken, waited = poll(
            "the follower holds every Lease", lambda: held_by(http, second), timeout=60
        )
        print(f"failover after kill -9: {waited:.1f} s for all {len(LEASE_NAMES)} Leases")
        for name, lease in taken.items():
            before, after = last[name]["spec"], lease["spec"]
            duration = float(before["leaseDurationSeconds"])
            acquired = spec_time(lease, "acquireTime")
            expired = spec_time(last[name], "renewTime")
            # Safe: never taken while the dead leader's Lease was still valid...
            assert (acquired - expired).total_seconds() >= duration, (name, before, after)
            # ...and live: taken at the follower's next retries after expiry, not much later.
            assert (acquired - expired).total_seconds() < duration + 15, (name, before, after)
            assert after["leaseTransitions"] == before["leaseTransitions"] + 1

        # The new leader acts: a Workload made after the kill gets its Instances, bound.
        http.post(
            f"/apis/hypermesh.io/v1/namespaces/{NS}/workloads", json=workload("after-kill", 2)
        ).raise_for_status()

        def bound() -> list[dict[str, Any]] | None:
            live = instances_of(http, "after-kill")
            return live if len(live) == 2 and all(i["spec"].get("nodeName") for i in live) else None

        placed, _ = poll("Instances created and bound by the new leader", bound, timeout=45)
        assert {i["spec"]["nodeName"] for i in placed} <= {"sim-0", "sim-1"}
        print(f"Workload converged {time.monotonic() - killed_at:.1f} s after the kill")

    codes = [daemon.stop() for daemon in reversed(daemons) if daemon is not first]
    assert codes == [0, 0], "\n".join(d.log() for d in daemons)


def test_sigterm_releases_the_leases(fresh_server: Server, daemons: list[Daemon]) -> None:
    with fresh_server.http() as http:
        first, second = leader_and_follower(fresh_server, daemons, http)
        before = leases(http)

        assert first.stop(signal.SIGTERM) == 0, first.log()
        # On a clean stop the leader gave every Lease up (or the follower already has it).
        for name, lease in leases(http).items():
            holder = lease["spec"].get("holderIdentity")
            assert not holder or second.holds(lease), (name, lease["spec"])

        taken, waited = poll(
            "the follower holds every Lease", lambda: held_by(http, second), timeout=30
        )
        print(f"failover after SIGTERM: {waited:.1f} s for all {len(LEASE_NAMES)} Leases")
        for name, lease in taken.items():
            duration = float(before[name]["spec"]["leaseDurationSeconds"])
            since_renewal = (
                spec_time(lease, "acquireTime") - spec_time(before[name], "renewTime")
            ).total_seconds()
            # Taken before the old Lease could have expired: it was released, not waited out.
            assert since_renewal < duration, (name, before[name]["spec"], lease["spec"])

        http.post(
            f"/apis/hypermesh.io/v1/namespaces/{NS}/workloads", json=workload("after-term", 2)
        ).raise_for_status()
        poll(
            "Instances created by the new leader",
            lambda: len(instances_of(http, "after-term")) == 2,
            timeout=30,
        )

    assert second.stop() == 0, second.log()


class StallingClient:
    """The three calls an elector makes, passed through until `stall` is set; after that they
    never answer, as over a connection whose packets are silently dropped."""

    def __init__(self, inner: AsyncClient) -> None:
        self.inner = inner
        self.stall = False

    async def _gate(self) -> None:
        if self.stall:
            await asyncio.Event().wait()

    async def get(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        await self._gate()
        return await self.inner.get(*args, **kwargs)

    async def create(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        await self._gate()
        return await self.inner.create(*args, **kwargs)

    async def replace(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        await self._gate()
        return await self.inner.replace(*args, **kwargs)


async def test_a_stalled_leader_steps_down_before_another_takes_over() -> None:
    server = APIServer(MemoryStore())
    await server.start()
    admin = Identity("admin", ("system:masters",))
    fast = {"lease_name": "stall", "lease_duration": 2.0, "renew_interval": 0.2}
    stalling = StallingClient(AsyncClient.in_process(server, admin))
    first = LeaderElector(stalling, LeaderSettings(identity="first", **fast))  # type: ignore[arg-type]
    second = LeaderElector(
        AsyncClient.in_process(server, admin), LeaderSettings(identity="second", **fast)
    )
    tasks = [asyncio.create_task(first.run())]
    try:
        await asyncio.wait_for(first.leading.wait(), 5)
        tasks.append(asyncio.create_task(second.run()))
        await asyncio.sleep(0.5)
        assert first.leading.is_set() and not second.leading.is_set()

        stalling.stall = True
        both = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while not second.leading.is_set():
            assert loop.time() < deadline, "the second elector never took over"
            if first.leading.is_set() and second.leading.is_set():
                both.append(loop.time())
            await asyncio.sleep(0.01)
        assert not first.leading.is_set(), "two leaders: the stalled one never stepped down"
        assert not both
    finally:
        stalling.stall = False
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.stop()
