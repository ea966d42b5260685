"""The workloads controller and the garbage collector end to end.

Most tests run the API server in process (APIServer over a MemoryStore, reached through
`AsyncClient.in_process`, which still goes through authn, authz and admission) with the
controllers of `controllers.build`; the test plays the node agent by patching Instances'
status to Ready=True. One test runs `hypermesh controllers --kubeconfig` against a real server.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import controllers
from controllers.kinds import INSTANCES, WORKLOADS
from hypermesh.api.app import APIServer
from hypermesh.client.aio import AsyncClient
from hypermesh.client.config import load_config
from hypermesh.client.errors import ApiError
from hypermesh.operator import InformerSettings, get_condition
from hypermesh.operator.events import EVENTS
from hypermesh.pki import Identity
from hypermesh.store import MemoryStore
from tests.e2e.conftest import Server

pytestmark = pytest.mark.timeout(60)

ADMIN = Identity("admin", ("system:masters",))
FAST = InformerSettings(watch_timeout=30, stall_timeout=15.0, backoff_base=0.05, backoff_cap=0.5)
HASH = "hypermesh.io/template-hash"
NS = "default"


# -- helpers ----------------------------------------------------------------------------------


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        if await check():
            return
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


def workload(name: str, replicas: int = 3, image: str = "busybox:1", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "hypermesh.io/v1",
        "kind": "Workload",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "replicas": replicas,
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": {"team": "core"}},
                "spec": {"containers": [{"name": "main", "image": image}]},
            },
            **spec,
        },
    }


async def instances(client: AsyncClient, app: str | None = None) -> list[dict[str, Any]]:
    items = (await client.list(INSTANCES, NS, label_selector=f"app={app}" if app else None))["items"]
    return [i for i in items if not i["metadata"].get("deletionTimestamp")]


async def mark_ready(client: AsyncClient, instance: dict[str, Any]) -> None:
    """What a node agent reports once the Instance's containers pass readiness."""
    condition = {
        "type": "Ready",
        "status": "True",
        "reason": "ContainersReady",
        "message": "",
        "lastTransitionTime": "2020-01-01T00:00:00Z",
    }
    with contextlib.suppress(ApiError):
        await client.update_status(
            INSTANCES,
            instance["metadata"]["name"],
            NS,
            {"phase": "Running", "conditions": [condition]},
        )


async def ready_all(client: AsyncClient, app: str) -> None:
    for instance in await instances(client, app):
        if not get_condition(instance, "Ready"):
            await mark_ready(client, instance)


@contextlib.asynccontextmanager
async def fake_agent(client: AsyncClient, app: str, delay: float = 0.1) -> AsyncIterator[None]:
    """Marks every new Instance ready `delay` seconds after it is first seen."""

    async def loop() -> None:
        seen: dict[str, float] = {}
        clock = asyncio.get_running_loop().time
        while True:
            for instance in await instances(client, app):
                name = instance["metadata"]["name"]
                first = seen.setdefault(name, clock())
                if not get_condition(instance, "Ready") and clock() - first >= delay:
                    await mark_ready(client, instance)
            await asyncio.sleep(0.03)

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def observing(client: AsyncClient, app: str) -> AsyncIterator[list[tuple[int, int, set[str]]]]:
    """Every state of the app's Instances, one per watch event: (existing, ready, hashes)."""
    listing = await client.list(INSTANCES, NS, label_selector=f"app={app}")
    state = {i["metadata"]["name"]: i for i in listing["items"]}
    states: list[tuple[int, int, set[str]]] = []

    def snapshot() -> None:
        live = [i for i in state.values() if not i["metadata"].get("deletionTimestamp")]
        ready = sum(1 for i in live if (get_condition(i, "Ready") or {}).get("status") == "True")
        states.append((len(live), ready, {i["metadata"]["labels"][HASH] for i in live}))

    async def watch() -> None:
        stream = client.watch(
            INSTANCES,
            NS,
            resource_version=listing["metadata"]["resourceVersion"],
            label_selector=f"app={app}",
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
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def status_of(client: AsyncClient, name: str) -> dict[str, Any]:
    return (await client.get(WORKLOADS, name, NS)).get("status") or {}


@pytest.fixture
async def app() -> AsyncIterator[APIServer]:
    server = APIServer(MemoryStore())
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def client(app: APIServer) -> AsyncIterator[AsyncClient]:
    """An admin client, with the controllers running in process beside it."""
    settings = controllers.ControllerSettings(leader_election=False, informers=FAST)
    controller_client = AsyncClient.in_process(app, Identity("system:controllers", ("system:masters",)))
    stop = asyncio.Event()
    task = asyncio.create_task(controllers.run_all(controller_client, stop, settings=settings))
    try:
        yield AsyncClient.in_process(app, ADMIN)
    finally:
        stop.set()
        try:
            await asyncio.wait_for(task, 5)
        except TimeoutError:
            task.cancel()


# -- workloads ----------------------------------------------------------------------------------


async def test_instances_are_named_labelled_owned_and_scaled(client: AsyncClient) -> None:
    created = await client.create(WORKLOADS, workload("web", 3))
    uid = created["metadata"]["uid"]

    async def count(n: int) -> bool:
        return len(await instances(client, "web")) == n

    await eventually(lambda: count(3))
    first = await instances(client, "web")
    hashes = {i["metadata"]["labels"][HASH] for i in first}
    assert len(hashes) == 1
    (template_hash,) = hashes
    for instance in first:
        meta = instance["metadata"]
        assert re.fullmatch(rf"web-{template_hash}-[a-z0-9]{{5}}", meta["name"]), meta["name"]
        assert meta["labels"] == {"app": "web", HASH: template_hash}
        assert meta["annotations"]["team"] == "core"
        assert meta["annotations"]["hypermesh.io/revision"] == "1"
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "hypermesh.io/v1",
                "kind": "Workload",
                "name": "web",
                "uid": uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        assert instance["spec"]["containers"][0]["image"] == "busybox:1"

    # Status follows readiness, with both conditions.
    await ready_all(client, "web")

    async def converged() -> bool:
        status = await status_of(client, "web")
        return status.get("availableReplicas") == 3 and status.get("readyReplicas") == 3

    await eventually(converged)
    wl = await client.get(WORKLOADS, "web", NS)
    status = wl["status"]
    assert status["replicas"] == 3 and status["updatedReplicas"] == 3
    assert status["observedGeneration"] == wl["metadata"]["generation"]
    assert (get_condition(wl, "Available") or {})["status"] == "True"
    progressing = get_condition(wl, "Progressing") or {}
    assert (progressing["status"], progressing["reason"]) == ("True", "NewReplicaSetAvailable")
    assert wl["metadata"]["annotations"]["hypermesh.io/revision"] == "1"

    # Scale up 3 -> 5 (a second later, so creation times order the Instances).
    await asyncio.sleep(1.1)
    await client.patch(WORKLOADS, "web", NS, {"spec": {"replicas": 5}})
    await eventually(lambda: count(5))
    await ready_all(client, "web")
    newest = {i["metadata"]["name"] for i in await instances(client, "web")} - {
        i["metadata"]["name"] for i in first
    }
    assert len(newest) == 2

    # Scale down 5 -> 2: the newest go first.
    await eventually(lambda: status_available(client, "web", 5))
    await client.patch(WORKLOADS, "web", NS, {"spec": {"replicas": 2}})
    await eventually(lambda: count(2))
    left = {i["metadata"]["name"] for i in await instances(client, "web")}
    assert not left & newest
    assert left <= {i["metadata"]["name"] for i in first}

    # Events tell what was done.
    events = (await client.list(EVENTS, NS))["items"]
    messages = {e["message"] for e in events if e["involvedObject"].get("name") == "web"}
    assert any(m.startswith("Created instance web-") for m in messages)
    assert any(m.startswith("Deleted instance web-") for m in messages)


async def status_available(client: AsyncClient, name: str, n: int) -> bool:
    return (await status_of(client, name)).get("availableReplicas") == n


async def test_rolling_update_keeps_availability_within_surge(client: AsyncClient) -> None:
    replicas, surge, unavailable = 4, 1, 1  # the 25% defaults of 4 replicas
    await client.create(WORKLOADS, workload("roll", replicas))
    async with fake_agent(client, "roll"):
        await eventually(lambda: status_available(client, "roll", replicas))
        before = {i["metadata"]["labels"][HASH] for i in await instances(client, "roll")}
        async with observing(client, "roll") as states:
            await client.patch(
                WORKLOADS,
                "roll",
                NS,
                {"spec": {"template": {"spec": {"containers": [{"name": "main", "image": "busybox:2"}]}}}},
            )

            async def rolled() -> bool:
                live = await instances(client, "roll")
                status = await status_of(client, "roll")
                return (
                    len(live) == replicas
                    and all(i["spec"]["containers"][0]["image"] == "busybox:2" for i in live)
                    and status.get("updatedReplicas") == replicas
                    and status.get("availableReplicas") == replicas
                )

            await eventually(rolled, timeout=20)
    assert len(states) > 10
    assert min(ready for _, ready, _ in states) >= replicas - unavailable, states
    assert max(existing for existing, _, _ in states) <= replicas + surge, states
    # Both templates ran side by side at some point: it was a rolling update.
    assert any(len(hashes) == 2 for _, _, hashes in states)

    wl = await client.get(WORKLOADS, "roll", NS)
    annotations = wl["metadata"]["annotations"]
    assert annotations["hypermesh.io/revision"] == "2"
    history = json.loads(annotations["hypermesh.io/revision-history"])
    assert [e["revision"] for e in history] == [1, 2]
    assert history[0]["templateHash"] in before
    assert history[0]["template"]["spec"]["containers"][0]["image"] == "busybox:1"
    # Progressing turns NewReplicaSetAvailable in a status write of its own, once the last old
    # Instance is gone (graceful deletion lets it finish first): wait for it, do not race it.
    async def complete() -> bool:
        current = await client.get(WORKLOADS, "roll", NS)
        return (get_condition(current, "Progressing") or {}).get("reason") == "NewReplicaSetAvailable"

    await eventually(complete, timeout=20)

    # Undo: the old template comes back as revision 3.
    await client.patch(WORKLOADS, "roll", NS, {"spec": {"template": history[0]["template"]}})

    async def undone() -> bool:
        annotations = (await client.get(WORKLOADS, "roll", NS))["metadata"]["annotations"]
        return annotations["hypermesh.io/revision"] == "3"

    await eventually(undone)
    history = json.loads(
        (await client.get(WORKLOADS, "roll", NS))["metadata"]["annotations"][
            "hypermesh.io/revision-history"
        ]
    )
    assert [e["revision"] for e in history] == [2, 3]


async def test_recreate_replaces_all_at_once(client: AsyncClient) -> None:
    await client.create(WORKLOADS, workload("rec", 3, strategy={"type": "Recreate"}))
    async with fake_agent(client, "rec"):
        await eventually(lambda: status_available(client, "rec", 3))
        async with observing(client, "rec") as states:
            body = workload("rec", 3, image="busybox:2")["spec"]["template"]
            await client.patch(WORKLOADS, "rec", NS, {"spec": {"template": body}})

            async def replaced() -> bool:
                live = await instances(client, "rec")
                return len(live) == 3 and all(
                    i["spec"]["containers"][0]["image"] == "busybox:2" for i in live
                ) and await status_available(client, "rec", 3)

            await eventually(replaced, timeout=20)
    # Never old and new together, and at some point none at all.
    assert all(len(hashes) <= 1 for _, _, hashes in states), states
    assert any(existing == 0 for existing, _, _ in states)
    assert max(existing for existing, _, _ in states) <= 3


async def test_paused_workload_is_not_rolled(client: AsyncClient) -> None:
    await client.create(WORKLOADS, workload("pause", 2))
    async with fake_agent(client, "pause"):
        await eventually(lambda: status_available(client, "pause", 2))
        body = copy.deepcopy(workload("pause", 2, image="busybox:2")["spec"]["template"])
        await client.patch(WORKLOADS, "pause", NS, {"spec": {"paused": True, "template": body}})

        async def reported() -> bool:
            wl = await client.get(WORKLOADS, "pause", NS)
            return (get_condition(wl, "Progressing") or {}).get("reason") == "WorkloadPaused"

        await eventually(reported)
        await asyncio.sleep(0.3)
        live = await instances(client, "pause")
        assert [i["spec"]["containers"][0]["image"] for i in live] == ["busybox:1"] * 2
        await client.patch(WORKLOADS, "pause", NS, {"spec": {"paused": False}})

        async def resumed() -> bool:
            live = await instances(client, "pause")
            return len(live) == 2 and all(
                i["spec"]["containers"][0]["image"] == "busybox:2" for i in live
            )

        await eventually(resumed, timeout=15)


async def test_paused_workload_still_scales_with_the_running_template(client: AsyncClient) -> None:
    await client.create(WORKLOADS, workload("pscale", 2))
    async with fake_agent(client, "pscale"):
        await eventually(lambda: status_available(client, "pscale", 2))
        body = copy.deepcopy(workload("pscale", 2, image="busybox:2")["spec"]["template"])
        await client.patch(WORKLOADS, "pscale", NS, {"spec": {"paused": True, "template": body}})
        await client.patch(WORKLOADS, "pscale", NS, {"spec": {"replicas": 4}})

        async def scaled_up() -> bool:
            live = await instances(client, "pscale")
            return len(live) == 4
        await eventually(scaled_up)
        live = await instances(client, "pscale")
        # New replicas copy what runs (busybox:1), not the paused template.
        assert [i["spec"]["containers"][0]["image"] for i in live] == ["busybox:1"] * 4
        assert len({i["metadata"]["labels"][HASH] for i in live}) == 1

        await client.patch(WORKLOADS, "pscale", NS, {"spec": {"replicas": 1}})

        async def scaled_down() -> bool:
            return len(await instances(client, "pscale")) == 1
        await eventually(scaled_down)


async def test_created_paused_starts_nothing(client: AsyncClient) -> None:
    await client.create(WORKLOADS, workload("cpaused", 2, paused=True))

    async def reported() -> bool:
        wl = await client.get(WORKLOADS, "cpaused", NS)
        return (get_condition(wl, "Progressing") or {}).get("reason") == "WorkloadPaused"
    await eventually(reported)
    assert await instances(client, "cpaused") == []
    await client.patch(WORKLOADS, "cpaused", NS, {"spec": {"paused": False}})

    async def started() -> bool:
        return len(await instances(client, "cpaused")) == 2
    await eventually(started)


async def test_a_stuck_rollout_exceeds_its_progress_deadline(client: AsyncClient) -> None:
    # Nothing marks these Instances ready, so the rollout cannot finish.
    await client.create(WORKLOADS, workload("stuck", 2, progressDeadlineSeconds=2))

    async def progressing() -> dict[str, Any]:
        return get_condition(await client.get(WORKLOADS, "stuck", NS), "Progressing") or {}

    async def moving() -> bool:
        return (await progressing()).get("reason") == "ReplicaSetUpdated"
    await eventually(moving)
    first = await progressing()
    assert first["status"] == "True" and first["lastUpdateTime"]

    async def exceeded() -> bool:
        return (await progressing()).get("reason") == "ProgressDeadlineExceeded"
    await eventually(exceeded, timeout=15)
    stuck = await progressing()
    assert stuck["status"] == "False" and "timed out progressing" in stuck["message"]

    # Progress again (the replicas become ready) clears it.
    await ready_all(client, "stuck")

    async def complete() -> bool:
        return (await progressing()).get("reason") == "NewReplicaSetAvailable"
    await eventually(complete)


# -- garbage collection -------------------------------------------------------------------------


async def test_deleting_a_workload_deletes_its_instances(client: AsyncClient) -> None:
    await client.create(WORKLOADS, workload("bg", 3))

    async def count(n: int) -> bool:
        return len(await instances(client, "bg")) == n

    await eventually(lambda: count(3))
    await client.delete(WORKLOADS, "bg", NS)
    await eventually(lambda: count(0))

    # A dependent whose owner never existed goes too; one with a live owner stays.
    await client.create(WORKLOADS, workload("keeper", 0))
    keeper = await client.get(WORKLOADS, "keeper", NS)

    def dependent(name: str, owner_uid: str, owner: str) -> dict[str, Any]:
        return {
            "apiVersion": "hypermesh.io/v1",
            "kind": "Instance",
            "metadata": {
                "name": name,
                "namespace": NS,
                "labels": {"app": "loose"},
                "ownerReferences": [
                    {"apiVersion": "hypermesh.io/v1", "kind": "Workload", "name": owner, "uid": owner_uid}
                ],
            },
            "spec": {"containers": [{"name": "main", "image": "busybox"}]},
        }

    await client.create(INSTANCES, dependent("dangling", "0000-gone", "nobody"))
    await client.create(INSTANCES, dependent("kept", keeper["metadata"]["uid"], "keeper"))

    async def only_kept() -> bool:
        return [i["metadata"]["name"] for i in await instances(client, "loose")] == ["kept"]

    await eventually(only_kept)
    await asyncio.sleep(0.3)
    assert await only_kept()


async def test_orphan_deletion_keeps_instances_without_owner(client: AsyncClient) -> None:
    await client.create(WORKLOADS, workload("orph", 2))

    async def count(n: int) -> bool:
        return len(await instances(client, "orph")) == n

    await eventually(lambda: count(2))
    # The API server turns propagationPolicy=Orphan into the `orphan` finalizer.
    await client.delete(WORKLOADS, "orph", NS, propagation="Orphan")

    async def owner_gone() -> bool:
        try:
            await client.get(WORKLOADS, "orph", NS)
        except ApiError as exc:
            return exc.status == 404
        return False

    await eventually(owner_gone)
    await asyncio.sleep(0.3)
    left = await instances(client, "orph")
    assert len(left) == 2
    assert all(not i["metadata"].get("ownerReferences") for i in left)

    # Applied again, the Workload adopts the orphans instead of starting a second set.
    created = await client.create(WORKLOADS, workload("orph", 2))

    async def adopted() -> bool:
        live = await instances(client, "orph")
        return len(live) == 2 and all(
            [r["uid"] for r in i["metadata"].get("ownerReferences") or []] == [created["metadata"]["uid"]] for i in live
        )

    await eventually(adopted)
    assert {i["metadata"]["name"] for i in await instances(client, "orph")} == {i["metadata"]["name"] for i in left}


async def test_an_instance_relabelled_out_of_the_selector_is_released(client: AsyncClient) -> None:
    await client.create(WORKLOADS, workload("rel", 2))

    async def count(n: int) -> bool:
        return len(await instances(client, "rel")) == n

    await eventually(lambda: count(2))
    first = (await instances(client, "rel"))[0]
    name = first["metadata"]["name"]
    await client.patch(INSTANCES, name, NS, {"metadata": {"labels": {"app": "debugging"}}})

    async def released() -> bool:
        instance = await client.get(INSTANCES, name, NS)
        return not instance["metadata"].get("ownerReferences")

    await eventually(released)
    # The Workload makes up the replica it lost; the released Instance lives on.
    await eventually(lambda: count(2))
    assert (await client.get(INSTANCES, name, NS))["metadata"]["labels"]["app"] == "debugging"


async def test_foreground_deletion_removes_dependents_before_owner(client: AsyncClient) -> None:
    await client.create(WORKLOADS, workload("fg", 2))

    async def count(n: int) -> bool:
        return len(await instances(client, "fg")) == n

    await eventually(lambda: count(2))
    deleting = await client.delete(WORKLOADS, "fg", NS, propagation="Foreground")
    assert "foregroundDeletion" in deleting["metadata"]["finalizers"]

    async def owner_gone() -> bool:
        try:
            await client.get(WORKLOADS, "fg", NS)
        except ApiError as exc:
            return exc.status == 404
        return False

    await eventually(owner_gone)
    assert await count(0)


# -- a real server ------------------------------------------------------------------------------


async def test_controllers_command_against_a_real_server(server: Server) -> None:
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "hypermesh"), "controllers", "--kubeconfig", str(server.kubeconfig)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    client = AsyncClient.from_config(load_config(str(server.kubeconfig)))
    try:
        assert proc.stdout is not None
        line = await asyncio.to_thread(proc.stdout.readline)
        assert line.strip() == "ready", proc.stderr.read() if proc.stderr else ""
        await client.create(WORKLOADS, workload("remote", 2))

        async def two() -> bool:
            return len(await instances(client, "remote")) == 2

        await eventually(two, timeout=20)
        await client.delete(WORKLOADS, "remote", NS)

        async def none() -> bool:
            return not await instances(client, "remote")

        await eventually(none, timeout=20)
    finally:
        await client.aclose()
        proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.to_thread(proc.wait, 15)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = None
    assert code == 0, proc.stderr.read() if proc.stderr else ""
