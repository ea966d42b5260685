"""The controller framework end to end: reconcile, finalizers, requeue, events, informer
recovery (410 relist, stalled streams) and leader election.

Most tests run the API server in process (APIServer over a MemoryStore, reached through
`AsyncClient.in_process`, which still goes through authn, authz and admission); one runs a real
`hypermesh server` process over mutual TLS, through `AsyncClient.from_config`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from hypermesh.api.app import APIServer
from hypermesh.client.aio import AsyncClient, Headers, StreamingResponse, Transport
from hypermesh.client.config import load_config
from hypermesh.client.errors import ApiError
from hypermesh.client.resources import Resource
from hypermesh.operator import (
    Context,
    Informer,
    InformerSettings,
    LeaderSettings,
    Operator,
    Result,
    Settings,
    get_condition,
)
from hypermesh.operator.events import EVENTS
from hypermesh.pki import Identity
from hypermesh.store import MemoryStore
from tests.e2e.conftest import Server

pytestmark = pytest.mark.timeout(60)

WIDGETS = Resource(
    group="test.hypermesh.io",
    version="v1",
    kind="Widget",
    plural="widgets",
    singular="widget",
    namespaced=True,
    subresources=("status",),
)
CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.test.hypermesh.io"},
    "spec": {
        "group": "test.hypermesh.io",
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                            "status": {
                                "type": "object",
                                "x-kubernetes-preserve-unknown-fields": True,
                            },
                        },
                    }
                },
            }
        ],
    },
}
CRDS = Resource(
    group="apiextensions.k8s.io",
    version="v1",
    kind="CustomResourceDefinition",
    plural="customresourcedefinitions",
    singular="customresourcedefinition",
    namespaced=False,
)
FAST = InformerSettings(watch_timeout=30, stall_timeout=15.0, backoff_base=0.05, backoff_cap=0.5)
ADMIN = Identity("admin", ("system:masters",))


# -- helpers ----------------------------------------------------------------------------------


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        if await check():
            return
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def install_crd(client: AsyncClient) -> None:
    with contextlib.suppress(ApiError):
        await client.create(CRDS, CRD)

    async def served() -> bool:
        try:
            await client.list(WIDGETS, "default")
        except ApiError:
            return False
        return True

    await eventually(served)


def widget(name: str, size: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "test.hypermesh.io/v1",
        "kind": "Widget",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"size": size},
    }


@contextlib.asynccontextmanager
async def running(*operators: Operator) -> AsyncIterator[asyncio.Event]:
    stop = asyncio.Event()
    tasks = [asyncio.create_task(op.run(stop)) for op in operators]
    try:
        yield stop
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


@pytest.fixture
async def app() -> AsyncIterator[APIServer]:
    server = APIServer(MemoryStore())
    await server.start()
    await install_crd(AsyncClient.in_process(server, ADMIN))
    try:
        yield server
    finally:
        await server.stop()


class _TappedResponse:
    """Forwards an inner response's chunks until frozen; then hangs, like a dead connection."""

    def __init__(self, inner: StreamingResponse) -> None:
        self.inner = inner
        self.status = inner.status
        self.headers = inner.headers
        self.frozen = False

    async def chunks(self) -> AsyncIterator[bytes]:
        async for chunk in self.inner.chunks():
            if self.frozen:
                await asyncio.Event().wait()
            yield chunk

    async def aclose(self) -> None:
        await self.inner.aclose()


class Tap:
    """A transport wrapper that can freeze open watches and rewrite the next watch's version."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.watches: list[_TappedResponse] = []
        self.next_watch_version: str | None = None

    async def open(self, method: str, target: str, headers: Headers, body: bytes) -> StreamingResponse:
        is_watch = "watch=true" in target
        if is_watch and self.next_watch_version is not None:
            path, _, query = target.partition("?")
            params = [p for p in query.split("&") if not p.startswith("resourceVersion=")]
            params.append(f"resourceVersion={self.next_watch_version}")
            target = path + "?" + "&".join(params)
            self.next_watch_version = None
        response = _TappedResponse(await self.inner.open(method, target, headers, body))
        if is_watch:
            self.watches.append(response)
        return response

    def freeze(self) -> None:
        for response in self.watches:
            response.frozen = True

    async def aclose(self) -> None:
        await self.inner.aclose()


# -- in process -------------------------------------------------------------------------------


async def test_reconcile_reports_progress_and_finalizer_cleanup_in_process(app: APIServer) -> None:
    client = AsyncClient.in_process(app, ADMIN)
    op = Operator(client, name="widgets", settings=Settings(informers=FAST))
    cleaned: list[str] = []

    @op.reconcile(WIDGETS)
    async def reconcile(obj: dict[str, Any], ctx: Context) -> Result | None:
        size = obj["spec"].get("size", 0)
        await ctx.report(obj, conditions=[("Ready", "True", "Sized", f"size {size}")])
        return Result.done()

    @op.on_delete(WIDGETS)
    async def cleanup(obj: dict[str, Any], ctx: Context) -> Result | None:
        cleaned.append(obj["metadata"]["name"])
        return None

    async with running(op):
        await client.create(WIDGETS, widget("w1"), "default")

        async def converged(generation: int, size: int) -> bool:
            obj = await client.get(WIDGETS, "w1", "default")
            ready = get_condition(obj, "Ready")
            return (
                obj.get("status", {}).get("observedGeneration") == generation
                and ready is not None
                and ready["message"] == f"size {size}"
            )

        await eventually(lambda: converged(1, 1))
        obj = await client.get(WIDGETS, "w1", "default")
        assert obj["metadata"]["finalizers"] == ["hypermesh.io/widgets"]
        first_transition = get_condition(obj, "Ready")["lastTransitionTime"]  # type: ignore[index]

        await client.patch(WIDGETS, "w1", "default", {"spec": {"size": 2}})
        await eventually(lambda: converged(2, 2))
        obj = await client.get(WIDGETS, "w1", "default")
        # Still True: the transition time stays.
        assert get_condition(obj, "Ready")["lastTransitionTime"] == first_transition  # type: ignore[index]

        await client.delete(WIDGETS, "w1", "default")

        async def gone() -> bool:
            try:
                await client.get(WIDGETS, "w1", "default")
            except ApiError as exc:
                return exc.status == 404
            return False

        await eventually(gone)
    assert cleaned == ["w1"]


async def test_requeue_after_runs_again_without_changes(app: APIServer) -> None:
    client = AsyncClient.in_process(app, ADMIN)
    op = Operator(client, name="poller", settings=Settings(informers=FAST))
    runs: list[float] = []
    ticks: list[str] = []

    @op.reconcile(WIDGETS)
    async def reconcile(obj: dict[str, Any], ctx: Context) -> Result | None:
        runs.append(asyncio.get_running_loop().time())
        return Result.requeue_after(0.2) if len(runs) < 4 else Result.done()

    @op.timer(WIDGETS, interval=0.1)
    async def tick(obj: dict[str, Any], ctx: Context) -> Result | None:
        ticks.append(obj["metadata"]["name"])
        return None

    async with running(op):
        await client.create(WIDGETS, widget("p1"), "default")

        async def four() -> bool:
            return len(runs) >= 4

        await eventually(four)
        await asyncio.sleep(0.4)

    assert len(runs) == 4
    assert all(b - a >= 0.18 for a, b in zip(runs, runs[1:], strict=False))
    assert ticks.count("p1") >= 4


async def test_informer_relists_after_410(app: APIServer) -> None:
    tap = Tap(AsyncClient.in_process(app, ADMIN).transport)
    client = AsyncClient(tap)
    writer = AsyncClient.in_process(app, ADMIN)
    await writer.create(WIDGETS, widget("before"), "default")
    # The first watch resumes from a version the store no longer has.
    tap.next_watch_version = "1"
    await app.store.compact(app.store.revision)
    informer = Informer(client, WIDGETS, settings=FAST)
    task = asyncio.create_task(informer.run())
    try:
        await writer.create(WIDGETS, widget("after"), "default")

        async def relisted() -> bool:
            return informer.stats.expired >= 1 and informer.get("after", "default") is not None

        await eventually(relisted)
        assert informer.stats.lists >= 2
        assert informer.get("before", "default") is not None
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_stalled_watch_is_restarted(app: APIServer) -> None:
    tap = Tap(AsyncClient.in_process(app, ADMIN).transport)
    client = AsyncClient(tap)
    writer = AsyncClient.in_process(app, ADMIN)
    settings = InformerSettings(watch_timeout=30, stall_timeout=1.0, backoff_base=0.05)
    informer = Informer(client, WIDGETS, settings=settings)
    task = asyncio.create_task(informer.run())
    try:
        await asyncio.wait_for(informer.synced.wait(), 5)
        await writer.create(WIDGETS, widget("seen"), "default")

        async def seen() -> bool:
            return informer.get("seen", "default") is not None

        await eventually(seen)
        tap.freeze()
        await writer.create(WIDGETS, widget("missed"), "default")
        started = asyncio.get_running_loop().time()

        async def recovered() -> bool:
            return informer.get("missed", "default") is not None

        # Without stall detection the frozen stream would hide this object forever.
        await eventually(recovered, timeout=5.0)
        assert informer.stats.stalls >= 1
        assert asyncio.get_running_loop().time() - started < 3.0
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_leader_election_one_acts_and_the_other_takes_over(app: APIServer) -> None:
    client = AsyncClient.in_process(app, ADMIN)
    acted: dict[str, set[str]] = {"a": set(), "b": set()}

    def make(ident: str) -> Operator:
        leader = LeaderSettings(
            lease_name="widgets-test",
            identity=ident,
            lease_duration=3.0,
            renew_interval=0.5,
            # A crash, not a clean stop: the successor must wait for the Lease to expire.
            release_on_stop=False,
        )
        op = Operator(client, name=f"op-{ident}", settings=Settings(informers=FAST, leader=leader))

        @op.reconcile(WIDGETS)
        async def reconcile(obj: dict[str, Any], ctx: Context) -> Result | None:
            acted[ident].add(obj["metadata"]["name"])
            return None

        return op

    op_a, op_b = make("a"), make("b")
    stop_a, stop_b = asyncio.Event(), asyncio.Event()
    task_a = asyncio.create_task(op_a.run(stop_a))
    await asyncio.sleep(0.5)  # a campaigns first
    task_b = asyncio.create_task(op_b.run(stop_b))
    try:
        await client.create(WIDGETS, widget("l1"), "default")

        async def a_acted() -> bool:
            return "l1" in acted["a"]

        await eventually(a_acted)
        await asyncio.sleep(1.0)
        assert acted["b"] == set()
        assert op_a.leading and not op_b.leading

        # The leader dies without releasing the Lease.
        task_a.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task_a
        died = asyncio.get_running_loop().time()
        await client.create(WIDGETS, widget("l2"), "default")

        async def b_acted() -> bool:
            return "l2" in acted["b"]

        await eventually(b_acted, timeout=8.0)
        took = asyncio.get_running_loop().time() - died
        assert took < 3.0 + 1.5, f"takeover took {took:.1f}s"
        lease = await client.get(
            Resource("coordination.k8s.io", "v1", "Lease", "leases", "lease", True),
            "widgets-test",
            "hypermesh-system",
        )
        assert lease["spec"]["holderIdentity"] == "b"
        assert lease["spec"]["leaseTransitions"] >= 1
    finally:
        stop_b.set()
        for task in (task_a, task_b):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


# -- a real server over mutual TLS ------------------------------------------------------------


async def test_operator_over_tls_records_events(server: Server) -> None:
    client = AsyncClient.from_config(load_config(str(server.kubeconfig)))
    try:
        await install_crd(client)
        op = Operator(client, name="widgets-tls", settings=Settings(informers=FAST))

        @op.reconcile(WIDGETS)
        async def reconcile(obj: dict[str, Any], ctx: Context) -> Result | None:
            await ctx.event(obj, "Sized", f"size is {obj['spec']['size']}")
            await ctx.report(obj, conditions=[("Ready", "True", "Sized", "")])
            return None

        async with running(op):
            await client.create(WIDGETS, widget("t1", 3), "default")

            async def recorded() -> bool:
                events = await client.list(
                    EVENTS, "default", field_selector="involvedObject.name=t1"
                )
                return any(e.get("reason") == "Sized" for e in events["items"])

            await eventually(recorded)
            obj = await client.get(WIDGETS, "t1", "default")
            assert obj["status"]["observedGeneration"] == 1

            # The same event again is folded into a count, not a second Event.
            await client.patch(WIDGETS, "t1", "default", {"metadata": {"labels": {"x": "y"}}})

            async def counted() -> bool:
                events = await client.list(
                    EVENTS, "default", field_selector="involvedObject.name=t1"
                )
                sized = [e for e in events["items"] if e.get("reason") == "Sized"]
                return len(sized) == 1 and sized[0]["count"] >= 2

            await eventually(counted)
            events = await client.list(EVENTS, "default", field_selector="involvedObject.name=t1")
            event = events["items"][0]
            assert event["involvedObject"]["kind"] == "Widget"
            assert event["source"]["component"] == "widgets-tls"
            assert event["reportingComponent"] == "widgets-tls"
            assert event["type"] == "Normal"
    finally:
        await client.aclose()
