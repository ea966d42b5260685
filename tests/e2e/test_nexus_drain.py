"""`nexus cordon|uncordon|drain` against a real `hypermesh server` with its controllers.

The nodes are simulated in the test's event loop (`hypermesh.cli.simulate.NodeSimulator`, the
code behind `hypermesh simulate-nodes`): they heartbeat and report every Instance bound to
them Running and Ready, so the workloads controller sees availability as it would from real
agents. nexus runs as the installed console script once the dispatcher knows the commands,
and until then through the module's own parsers and `run`, in a thread either way so the
simulated nodes keep answering meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from controllers.kinds import INSTANCES, NODES, WORKLOADS
from hypermesh.cli import simulate
from hypermesh.cli.nexus import dispatch, errors
from hypermesh.cli.nexus.commands import drain
from hypermesh.cli.nexus.session import Session
from hypermesh.client.aio import AsyncClient
from hypermesh.client.config import load_config
from hypermesh.operator import InformerSettings, get_condition
from tests.e2e.conftest import VENV_BIN, Server, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

NEXUS = str(VENV_BIN / "nexus")
NS = "default"
FAST = InformerSettings(watch_timeout=30, stall_timeout=15.0, backoff_base=0.05, backoff_cap=0.5)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    base = tmp_path_factory.mktemp("hm-drain")
    srv = Server(base / "data", free_port(), controllers=True)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
async def client(server: Server) -> AsyncIterator[AsyncClient]:
    api = AsyncClient.from_config(load_config(str(server.kubeconfig)))
    try:
        yield api
    finally:
        await api.aclose()


# -- helpers ----------------------------------------------------------------------------------


class Done:
    """What one nexus run printed and returned."""

    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr


def _in_process(server: Server, argv: list[str]) -> Done:
    """The module's parsers and `run`, as the dispatcher will call them once it knows them."""
    parser = argparse.ArgumentParser(prog="nexus")
    dispatch._global_flags(parser, suppress=False)
    common = argparse.ArgumentParser(add_help=False)
    dispatch._global_flags(common, suppress=True)
    drain.add_parsers(parser.add_subparsers(dest="command"), common)
    args = parser.parse_args(["--kubeconfig", str(server.kubeconfig), "-n", NS, *argv])
    out, err = io.StringIO(), io.StringIO()
    session = Session(kubeconfig=args.kubeconfig, namespace=args.namespace, stdout=out, stderr=err)
    try:
        code = drain.run(args, session)
    except Exception as exc:  # noqa: BLE001 - mirrors dispatch.run: a failure is a message
        text, code = errors.describe(exc)
        session.err(text)
    finally:
        session.close()
    return Done(code, out.getvalue(), err.getvalue())


async def nexus(server: Server, home: Path, *argv: str) -> Done:
    """Run nexus in a thread, so the simulated nodes keep running meanwhile."""
    if "drain" not in dispatch.COMMANDS:
        return await asyncio.to_thread(_in_process, server, list(argv))
    env = {**os.environ, "HYPERMESH_HOME": str(home), "NO_COLOR": "1"}
    env.pop("KUBECONFIG", None)
    command = [NEXUS, "--kubeconfig", str(server.kubeconfig), "-n", NS, *argv]
    done = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, env=env, timeout=90)
    return Done(done.returncode, done.stdout, done.stderr)


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await check()
        if value:
            return value
        assert asyncio.get_running_loop().time() < deadline, f"{what} not reached in {timeout:.0f}s"
        await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def simulated(client: AsyncClient, prefix: str) -> AsyncIterator[list[str]]:
    """Two simulated Nodes, one per zone, for the block's duration (deleted afterwards)."""
    settings = simulate.SimSettings(count=2, zones=2, cpu="4", memory="8Gi", prefix=prefix, cleanup=True)
    simulator = simulate.NodeSimulator(client, settings, informer_settings=FAST)
    stop = asyncio.Event()
    task = asyncio.create_task(simulator.run(stop))
    try:
        await asyncio.wait_for(simulator.registered.wait(), 10)
        yield settings.names()
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


def workload(name: str, replicas: int, strategy: dict[str, Any] | None = None) -> dict[str, Any]:
    container = {"name": "main", "image": "busybox", "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}
    spec: dict[str, Any] = {
        "replicas": replicas,
        "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [container]}},
    }
    if strategy:
        spec["strategy"] = strategy
    return {"apiVersion": "hypermesh.io/v1", "kind": "Workload", "metadata": {"name": name, "namespace": NS}, "spec": spec}


def is_ready(instance: dict[str, Any]) -> bool:
    return (get_condition(instance, "Ready") or {}).get("status") == "True"


async def live(client: AsyncClient, app: str) -> list[dict[str, Any]]:
    items = (await client.list(INSTANCES, NS, label_selector=f"app={app}"))["items"]
    return [i for i in items if not i["metadata"].get("deletionTimestamp")]


async def all_ready(client: AsyncClient, app: str, count: int) -> list[dict[str, Any]] | None:
    items = await live(client, app)
    status = (await client.get(WORKLOADS, app, NS)).get("status") or {}
    if len(items) == count and all(is_ready(i) for i in items) and status.get("availableReplicas") == count:
        return items
    return None


@contextlib.asynccontextmanager
async def observing(client: AsyncClient, app: str) -> AsyncIterator[list[tuple[int, int]]]:
    """Every state of the app's Instances, one per watch event: (existing, ready)."""
    listing = await client.list(INSTANCES, NS, label_selector=f"app={app}")
    state = {i["metadata"]["name"]: i for i in listing["items"]}
    states: list[tuple[int, int]] = []

    def snapshot() -> None:
        present = [i for i in state.values() if not i["metadata"].get("deletionTimestamp")]
        states.append((len(present), sum(1 for i in present if is_ready(i))))

    async def watch() -> None:
        stream = client.watch(
            INSTANCES, NS, resource_version=listing["metadata"]["resourceVersion"], label_selector=f"app={app}"
        )
        async with contextlib.aclosing(stream):
            async for event in stream:
                obj = event["object"]
                if event["type"] == "DELETED":
                    state.pop(obj["metadata"]["name"], None)
                elif event["type"] in ("ADDED", "MODIFIED"):
                    state[obj["metadata"]["name"]] = obj
                else:
                    continue
                snapshot()

    snapshot()
    task = asyncio.create_task(watch())
    try:
        yield states
    finally:
        # Let the last events arrive before the record closes.
        await asyncio.sleep(0.3)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def node_of(instance: dict[str, Any]) -> str:
    return str((instance.get("spec") or {}).get("nodeName") or "")


# -- tests ------------------------------------------------------------------------------------


async def test_cordon_and_uncordon_flip_unschedulable(server: Server, client: AsyncClient, tmp_path: Path) -> None:
    async with simulated(client, "cord") as nodes:
        first = await nexus(server, tmp_path, "cordon", nodes[0])
        assert first.returncode == 0, first.stderr
        assert first.stdout == f"node/{nodes[0]} cordoned\n"
        assert (await client.get(NODES, nodes[0]))["spec"]["unschedulable"] is True
        again = await nexus(server, tmp_path, "cordon", nodes[0])
        assert again.stdout == f"node/{nodes[0]} already cordoned\n"

        # A cordoned node takes nothing new: all of a fresh Workload lands on the other one.
        await client.create(WORKLOADS, workload("cordoned", 3))
        placed = await eventually(lambda: all_ready(client, "cordoned", 3), what="3 ready Instances")
        assert {node_of(i) for i in placed} == {nodes[1]}

        back = await nexus(server, tmp_path, "uncordon", nodes[0])
        assert back.returncode == 0 and back.stdout == f"node/{nodes[0]} uncordoned\n", back.stderr
        assert not (await client.get(NODES, nodes[0])).get("spec", {}).get("unschedulable")
        dry = await nexus(server, tmp_path, "cordon", nodes[0], "--dry-run")
        assert dry.stdout == f"node/{nodes[0]} cordoned (dry run)\n"
        assert not (await client.get(NODES, nodes[0])).get("spec", {}).get("unschedulable")

        missing = await nexus(server, tmp_path, "cordon")
        assert missing.returncode == errors.USAGE and "needs a NODE" in missing.stderr
        await client.delete(WORKLOADS, "cordoned", NS)


async def test_drain_keeps_the_workload_available(server: Server, client: AsyncClient, tmp_path: Path) -> None:
    replicas, max_unavailable = 4, 1  # the 25% default of 4 replicas
    async with simulated(client, "drn") as nodes:
        await client.create(WORKLOADS, workload("web", replicas))
        placed = await eventually(lambda: all_ready(client, "web", replicas), what="4 ready Instances")
        spread = {node: sum(1 for i in placed if node_of(i) == node) for node in nodes}
        # Zone spreading puts them 2 and 2: two on the drained node, one more than may go at once.
        assert spread == {nodes[0]: 2, nodes[1]: 2}, spread

        async with observing(client, "web") as states:
            done = await nexus(server, tmp_path, "drain", nodes[0], "--timeout", "60s")
            assert done.returncode == 0, done.stdout + done.stderr
            await eventually(lambda: all_ready(client, "web", replicas), what="4 ready Instances again")

        lines = done.stdout.splitlines()
        assert lines[0] == f"node/{nodes[0]} cordoned"
        assert lines[-1] == f"node/{nodes[0]} drained"
        assert sum(1 for line in lines if line.startswith("evicting instance default/web-")) == spread[nodes[0]]
        assert (await client.get(NODES, nodes[0]))["spec"]["unschedulable"] is True
        after = await live(client, "web")
        assert {node_of(i) for i in after} == {nodes[1]}
        assert not {i["metadata"]["name"] for i in after} & {i["metadata"]["name"] for i in placed if node_of(i) == nodes[0]}
        # Never fewer than replicas - maxUnavailable Ready, at any watch event of the drain.
        assert len(states) > spread[nodes[0]] * 2, states
        assert min(ready for _, ready in states) >= replicas - max_unavailable, states

        # Draining an empty node is quick and says so.
        empty = await nexus(server, tmp_path, "drain", nodes[0])
        assert empty.returncode == 0
        assert empty.stdout.splitlines() == [f"node/{nodes[0]} already cordoned", f"node/{nodes[0]} drained"]
        await client.delete(WORKLOADS, "web", NS)


async def test_drain_waits_for_the_budget_and_times_out(server: Server, client: AsyncClient, tmp_path: Path) -> None:
    # maxUnavailable 0: not one Instance may go before its replacement is available, and the
    # replacement cannot be started by a drain, so the drain waits, says why, and gives up.
    strategy = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    async with simulated(client, "tight") as nodes:
        await client.patch(NODES, nodes[1], None, {"spec": {"unschedulable": True}})
        await client.create(WORKLOADS, workload("tight", 2, strategy))
        await eventually(lambda: all_ready(client, "tight", 2), what="2 ready Instances")
        stuck = await nexus(server, tmp_path, "drain", nodes[0], "--timeout", "2s")
        assert stuck.returncode == 1
        assert "timed out after 2s" in stuck.stderr, stuck.stderr
        assert "waiting: instance default/tight-" in stuck.stdout
        assert "workload default/tight has 2 available and keeps at least 2 (replicas 2, maxUnavailable 0)" in stuck.stdout
        assert len(await live(client, "tight")) == 2
        await client.delete(WORKLOADS, "tight", NS)


async def test_an_ownerless_instance_blocks_drain_unless_forced(server: Server, client: AsyncClient, tmp_path: Path) -> None:
    async with simulated(client, "own") as nodes:
        lonely = {
            "apiVersion": "hypermesh.io/v1",
            "kind": "Instance",
            "metadata": {"name": "lonely", "namespace": NS},
            "spec": {"nodeName": nodes[0], "containers": [{"name": "main", "image": "busybox"}]},
        }
        await client.create(INSTANCES, lonely)

        refused = await nexus(server, tmp_path, "drain", nodes[0])
        assert refused.returncode == 1
        assert "default/lonely" in refused.stderr and "--force" in refused.stderr, refused.stderr
        # As with kubectl, the node stays cordoned and the Instance stays.
        assert (await client.get(NODES, nodes[0]))["spec"]["unschedulable"] is True
        await client.get(INSTANCES, "lonely", NS)

        listed = await nexus(server, tmp_path, "drain", nodes[0], "--force", "--dry-run")
        assert listed.returncode == 0, listed.stderr
        assert "evicting instance default/lonely (dry run)" in listed.stdout
        await client.get(INSTANCES, "lonely", NS)

        forced = await nexus(server, tmp_path, "drain", nodes[0], "--force", "--grace-period", "0")
        assert forced.returncode == 0, forced.stderr
        assert "Warning: deleting Instances that declare no controller: default/lonely" in forced.stderr
        assert "instance/lonely evicted" in forced.stdout
        remaining = (await client.list(INSTANCES, None, field_selector=f"spec.nodeName={nodes[0]}"))["items"]
        assert remaining == []
