"""`hypermesh.client` against a real server: CRUD, paging, apply, watch, transports, discovery.

Every test uses the admin kubeconfig the server wrote, over real sockets. `$HYPERMESH_HOME`
points into the test's temporary directory, so the client's caches (discovery, transport
memory, session tickets) start empty and never touch the real home directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from hypermesh.client import (
    Api,
    ApiError,
    Client,
    ClientError,
    ClusterConfig,
    Discovery,
    Response,
    UnknownResource,
    load_config,
)
from tests.e2e.conftest import Server, free_port

pytestmark = pytest.mark.e2e

_names = itertools.count()


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The client's state directory for this test only."""
    path = tmp_path / "hmhome"
    monkeypatch.setenv("HYPERMESH_HOME", str(path))
    return path


@pytest.fixture(scope="module")
def config(server: Server) -> ClusterConfig:
    return load_config(str(server.kubeconfig))


@pytest.fixture
def api(config: ClusterConfig) -> Iterator[Api]:
    with Client(config, transport="tcp") as client:
        yield Api(client)


@pytest.fixture
def namespace(api: Api) -> Iterator[str]:
    """A fresh namespace, made with the client itself (faster than running kubectl)."""
    namespaces = api.discovery.resolve("namespaces")
    name = f"client-{next(_names)}-{int(time.time() * 1000) % 100000}"
    api.create(
        namespaces, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}, None
    )
    yield name
    with contextlib.suppress(ClientError):
        api.delete(namespaces, name, None)


def workload(name: str, replicas: int = 1, **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "hypermesh.io/v1",
        "kind": "Workload",
        "metadata": {"name": name, "labels": {"app": name, **labels}},
        "spec": {
            "replicas": replicas,
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "main", "image": "busybox"}]},
            },
        },
    }


class CountingClient(Client):
    """A client that records the paths it requested."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.requests: list[tuple[str, str]] = []

    def request(self, method: str, path: str, **kwargs: Any) -> Response:
        self.requests.append((method, path))
        return super().request(method, path, **kwargs)


# CRUD


def test_crud(api: Api, namespace: str) -> None:
    workloads = api.discovery.resolve("workloads")
    dry = api.create(workloads, workload("web"), namespace, dry_run=True)
    assert dry["metadata"]["name"] == "web"
    with pytest.raises(ApiError) as missing:
        api.get(workloads, "web", namespace)
    assert (missing.value.status, missing.value.reason) == (404, "NotFound")
    assert str(missing.value) == 'workloads.hypermesh.io "web" not found'
    assert missing.value.status_body["kind"] == "Status"

    created = api.create(workloads, workload("web"), namespace)
    assert created["metadata"]["namespace"] == namespace
    with pytest.raises(ApiError) as exists:
        api.create(workloads, workload("web"), namespace)
    assert (exists.value.status, exists.value.reason) == (409, "AlreadyExists")

    patched = api.patch(workloads, "web", namespace, {"spec": {"replicas": 3}})
    assert patched["spec"]["replicas"] == 3
    patched = api.patch(
        workloads,
        "web",
        namespace,
        [{"op": "replace", "path": "/spec/replicas", "value": 4}],
        patch_type="json",
    )
    assert patched["spec"]["replicas"] == 4

    current = api.get(workloads, "web", namespace)
    current["metadata"]["labels"]["tier"] = "front"
    replaced = api.replace(workloads, current, namespace)
    assert replaced["metadata"]["labels"]["tier"] == "front"
    with pytest.raises(ApiError) as stale:
        api.replace(workloads, current, namespace)  # the resourceVersion is no longer current
    assert stale.value.status == 409

    listed = api.list(workloads, namespace, label_selector="tier=front")
    assert [o["metadata"]["name"] for o in listed["items"]] == ["web"]
    assert api.list(workloads, namespace, label_selector="tier=back")["items"] == []

    api.delete(workloads, "web", namespace, dry_run=True)
    assert api.get(workloads, "web", namespace)["metadata"]["name"] == "web"
    api.delete(workloads, "web", namespace, propagation="Background")
    with pytest.raises(ApiError) as gone:
        api.get(workloads, "web", namespace)
    assert gone.value.status == 404
    assert api.server_version()["major"] == "1"


def test_list_follows_continue(config: ClusterConfig, namespace: str) -> None:
    with CountingClient(config, transport="tcp") as client:
        api = Api(client)
        secrets = api.discovery.resolve("secrets")
        for i in range(5):
            api.create(
                secrets,
                {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"s{i}"}},
                namespace,
            )
        client.requests.clear()
        listed = api.list(secrets, namespace, limit=2)
        assert [o["metadata"]["name"] for o in listed["items"]] == [f"s{i}" for i in range(5)]
        assert listed["kind"] == "SecretList"
        assert "continue" not in listed["metadata"]
        assert len(client.requests) == 3
        table = api.list(secrets, namespace, limit=2, table=True)
        assert table["kind"] == "Table"
        assert [row["cells"][0] for row in table["rows"]] == [f"s{i}" for i in range(5)]
        assert table["columnDefinitions"][0]["name"] == "Name"


# Server-side apply


def test_apply_created_configured_and_conflict(api: Api, namespace: str) -> None:
    workloads = api.discovery.resolve("wl")
    obj, status = api.apply(workloads, workload("app", 2), namespace)
    assert status == 201 and obj["spec"]["replicas"] == 2
    obj, status = api.apply(workloads, workload("app", 2), namespace)
    assert status == 200
    managers = {entry["manager"] for entry in obj["metadata"]["managedFields"]}
    assert managers == {"nexus"}

    with pytest.raises(ApiError) as conflict:
        api.apply(workloads, workload("app", 5), namespace, field_manager="someone-else")
    assert conflict.value.status == 409 and conflict.value.reason == "Conflict"
    assert '"nexus"' in str(conflict.value) and ".spec.replicas" in str(conflict.value)

    obj, status = api.apply(
        workloads, workload("app", 5), namespace, field_manager="someone-else", force=True
    )
    assert (status, obj["spec"]["replicas"]) == (200, 5)
    dry, _ = api.apply(
        workloads, workload("app", 7), namespace, field_manager="someone-else", dry_run=True
    )
    assert dry["spec"]["replicas"] == 7
    assert api.get(workloads, "app", namespace)["spec"]["replicas"] == 5

    # Strict field validation: an unknown field is refused, not silently dropped.
    bad = workload("app", 5)
    bad["spec"]["replicaz"] = 1
    with pytest.raises(ApiError) as strict:
        api.apply(workloads, bad, namespace, field_manager="someone-else")
    assert "replicaz" in str(strict.value)


# Watch


@pytest.mark.parametrize("transport", ["tcp", "h3"])
def test_watch_yields_events_in_order(
    config: ClusterConfig, namespace: str, transport: str
) -> None:
    with Client(config, transport=transport) as client:
        api = Api(client)
        workloads = api.discovery.resolve("workloads")
        start = api.list(workloads, namespace)["metadata"]["resourceVersion"]
        events = api.watch(workloads, namespace, resource_version=start, timeout_seconds=15)
        api.create(workloads, workload("w"), namespace)
        api.patch(workloads, "w", namespace, {"spec": {"replicas": 2}})
        api.delete(workloads, "w", namespace)
        seen: list[tuple[str, str]] = []
        for event in events:
            if event["type"] == "BOOKMARK":
                continue
            seen.append((event["type"], event["object"]["metadata"]["name"]))
            if event["type"] == "DELETED":
                break
        assert seen == [("ADDED", "w"), ("MODIFIED", "w"), ("DELETED", "w")]
        events.close()
        # The client stays usable after a stream closes.
        assert api.list(workloads, namespace)["items"] == []

        # Without a resourceVersion the watch starts with what exists, as ADDED.
        api.create(workloads, workload("x"), namespace)
        with api.watch(workloads, namespace, timeout_seconds=15) as stream:
            first = next(stream)
        assert (first["type"], first["object"]["metadata"]["name"]) == ("ADDED", "x")


def test_watch_error_status_raises(api: Api) -> None:
    workloads = api.discovery.resolve("workloads")
    with pytest.raises(ApiError) as info:
        api.watch(workloads, None, resource_version="not-a-number")
    assert info.value.status == 400


# Transports


@pytest.mark.parametrize("transport", ["h3", "tcp"])
def test_explicit_transport(config: ClusterConfig, transport: str) -> None:
    with Client(config, transport=transport) as client:
        assert client.transport_used == ""
        assert Api(client).server_version()["gitVersion"]
        assert client.transport_used == transport


def test_auto_prefers_h3(config: ClusterConfig, home: Path) -> None:
    with Client(config) as client:
        Api(client).server_version()
        assert client.transport_used == "h3"
    assert not (home / "cache" / "transport.json").exists()


def _h3_resumed(client: Client) -> bool:
    assert client.transport_used == "h3"
    return client.resumed


def test_h3_resumes_the_session_in_the_next_client(
    config: ClusterConfig, server: Server, home: Path, tmp_path: Path
) -> None:
    with Client(config, transport="h3") as client:
        assert client.request("GET", "/api/v1/namespaces").status == 200
        assert not _h3_resumed(client)
    tickets = list((home / "quic-tickets").iterdir())
    assert len(tickets) == 1
    assert tickets[0].stat().st_mode & 0o777 == 0o600

    # The next client (as the next command would) resumes, still as the admin.
    with Client(config, transport="h3") as client:
        assert client.request("GET", "/api/v1/namespaces").status == 200
        assert _h3_resumed(client)

    # ... and so does a fresh process.
    code = (
        "from hypermesh.client import Client, load_config\n"
        f"with Client(load_config({str(server.kubeconfig)!r}), transport='h3') as client:\n"
        "    status = client.request('GET', '/api/v1/namespaces').status\n"
        "    print(status, client.resumed)\n"
    )
    env = {**os.environ, "HYPERMESH_HOME": str(home)}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=30
    )
    assert result.stdout.split() == ["200", "True"], result.stderr

    # Another user of the same server is never offered the admin's ticket: it stays anonymous.
    doc = yaml.safe_load(server.kubeconfig.read_text())
    doc["users"][0]["user"] = {}
    path = tmp_path / "anonymous.kubeconfig"
    path.write_text(yaml.safe_dump(doc))
    with Client(load_config(str(path)), transport="h3") as client:
        with pytest.raises(ApiError) as info:
            client.request("GET", "/api/v1/namespaces")
        assert not _h3_resumed(client)
    assert info.value.status == 401


def test_h3_stale_ticket_falls_back_to_a_full_handshake(config: ClusterConfig, home: Path) -> None:
    # A ticket the server does not know (it restarted, or the file is from elsewhere) costs
    # only a full handshake, which brings a fresh ticket.
    with Client(config, transport="h3") as client:
        client.request("GET", "/api")
    (path,) = (home / "quic-tickets").iterdir()
    record = orjson.loads(path.read_bytes())
    record["ticket"]["ticket"] = "AAAA" + record["ticket"]["ticket"][4:]
    path.write_bytes(orjson.dumps(record))
    with Client(config, transport="h3") as client:
        assert client.request("GET", "/api").status == 200
        assert not _h3_resumed(client)
    with Client(config, transport="h3") as client:
        assert client.request("GET", "/api").status == 200
        assert _h3_resumed(client)


class TcpForwarder:
    """Forwards TCP connections to another port; nothing listens on UDP (QUIC goes unanswered)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: asyncio.base_events.Server | None = None

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Cancelled when the forwarder stops: end quietly, that is the normal way out.
        with contextlib.suppress(asyncio.CancelledError, OSError):
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    def __enter__(self) -> TcpForwarder:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(5)
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            assert self.server is not None
            self.server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def test_auto_falls_back_to_tcp_and_remembers(
    server: Server, config: ClusterConfig, home: Path
) -> None:
    with TcpForwarder(server.port) as forwarder:
        proxied = dataclasses.replace(config, server=f"https://127.0.0.1:{forwarder.port}")
        started = time.monotonic()
        with Client(proxied) as client:
            assert Api(client).server_version()["major"] == "1"
            elapsed = time.monotonic() - started
            assert client.transport_used == "tcp"
        assert elapsed < 1.5, f"fallback took {elapsed:.2f}s"
        memory = orjson.loads((home / "cache" / "transport.json").read_bytes())
        assert "h3_failed_at" in memory[proxied.server]

        # The next command goes straight to TCP, without waiting for QUIC again.
        started = time.monotonic()
        with Client(proxied) as client:
            Api(client).server_version()
            assert client.transport_used == "tcp"
        assert time.monotonic() - started < 0.5

        # ... and in a fresh process (a `nexus` command) without even importing aioquic.
        code = (
            "import dataclasses, sys\n"
            "from hypermesh.client import Api, Client, load_config\n"
            f"config = dataclasses.replace(load_config({str(server.kubeconfig)!r}), server={proxied.server!r})\n"
            "with Client(config) as client:\n"
            "    Api(client).server_version()\n"
            "print(client.transport_used, 'aioquic' in sys.modules)\n"
        )
        env = {**os.environ, "HYPERMESH_HOME": str(home)}
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=30
        )
        assert result.stdout.split() == ["tcp", "False"], result.stderr

        # An explicit h3 fails with a message naming the server and the way out.
        with (
            Client(proxied, transport="h3", timeout=1.0) as client,
            pytest.raises(ClientError) as info,
        ):
            client.request("GET", "/version")
        assert proxied.server in str(info.value) and "--transport=tcp" in str(info.value)


def test_server_down_is_not_remembered_and_says_so(config: ClusterConfig, home: Path) -> None:
    down = dataclasses.replace(config, server=f"https://127.0.0.1:{free_port()}")
    with Client(down, transport="tcp") as client, pytest.raises(ClientError) as info:
        client.request("GET", "/version")
    assert not isinstance(info.value, ApiError)
    assert down.server in str(info.value) and "connection refused" in str(info.value)
    with Client(down) as client, pytest.raises(ClientError):
        client.request("GET", "/version")
    assert not (home / "cache" / "transport.json").exists()


@pytest.mark.parametrize("transport", ["tcp", "h3"])
def test_no_client_certificate_is_401(server: Server, tmp_path: Path, transport: str) -> None:
    doc = yaml.safe_load(server.kubeconfig.read_text())
    doc["users"][0]["user"] = {}
    path = tmp_path / "anonymous.kubeconfig"
    path.write_text(yaml.safe_dump(doc))
    with Client(load_config(str(path)), transport=transport) as client:
        with pytest.raises(ApiError) as info:
            client.request("GET", "/api")
    assert (info.value.status, info.value.reason) == (401, "Unauthorized")


# Discovery


def test_resolve_every_name_form(api: Api) -> None:
    discovery = api.discovery
    for name in [
        "workloads",
        "workload",
        "wl",
        "Workload",
        "WORKLOADS",
        "workloads.hypermesh.io",
        "wl.hypermesh.io",
        "workloads.v1.hypermesh.io",
    ]:
        resource = discovery.resolve(name)
        assert (resource.group, resource.plural, resource.kind) == (
            "hypermesh.io",
            "workloads",
            "Workload",
        ), name
    assert discovery.resolve("wl").namespaced and "status" in discovery.resolve("wl").subresources
    namespaces = discovery.resolve("ns")
    assert (namespaces.group, namespaces.plural, namespaces.namespaced) == ("", "namespaces", False)
    assert discovery.resolve("leases").group == "coordination.k8s.io"
    with pytest.raises(UnknownResource) as info:
        discovery.resolve("wrkloads")
    assert info.value.name == "wrkloads"
    assert info.value.suggestions[0] == "workloads"
    assert (
        str(info.value)
        == 'the server doesn\'t have a resource type "wrkloads"; did you mean "workloads"?'
    )
    with pytest.raises(UnknownResource):
        discovery.resolve("workloads.example.com")


def test_discovery_cache_hit_makes_no_request(config: ClusterConfig, home: Path) -> None:
    with CountingClient(config, transport="tcp") as client:
        first = Discovery(client).resources()
        assert ("GET", "/apis") in client.requests
        cache = home / "cache" / "discovery" / f"127.0.0.1_{config.server.rsplit(':', 1)[1]}.json"
        assert cache.exists()
        client.requests.clear()
        again = Discovery(client)
        assert again.resources() == first
        assert again.resolve("wl").plural == "workloads"
        assert client.requests == []
        # An expired cache is fetched again.
        assert Discovery(client, ttl=0.0).resources() == first
        assert len(client.requests) == 2


CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "gadgets.clienttest.io"},
    "spec": {
        "group": "clienttest.io",
        "scope": "Namespaced",
        "names": {
            "plural": "gadgets",
            "singular": "gadget",
            "kind": "Gadget",
            "shortNames": ["gdg"],
        },
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "x-kubernetes-preserve-unknown-fields": True,
                    }
                },
            }
        ],
    },
}


def test_new_crd_is_found_past_a_stale_cache(config: ClusterConfig) -> None:
    with CountingClient(config, transport="tcp") as client:
        api = Api(client)
        api.discovery.resources()  # cached before the CRD exists
        crds = api.discovery.resolve("customresourcedefinitions")
        api.create(crds, CRD, None)
        try:
            deadline = time.monotonic() + 10
            fresh = Discovery(client)  # a later command, reading the now-stale cache
            while True:
                try:
                    gadgets = fresh.resolve("gdg")
                    break
                except UnknownResource:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
                    fresh = Discovery(client)
            assert (gadgets.group, gadgets.kind) == ("clienttest.io", "Gadget")
        finally:
            api.delete(crds, "gadgets.clienttest.io", None)
