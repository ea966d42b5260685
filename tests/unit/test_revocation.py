"""The revocation list: what a set of CertificateRevocations revokes, and the API server refusing
revoked certificates at once, without a network.

An in-process API server over a memory store; clients are in-process too, each with an identity
that carries a certificate serial as the listeners fill it in. The TLS side (connections closed,
the serving certificate reloaded) is `test_revocation_tls.py`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from hypermesh.api.app import APIServer
from hypermesh.client.aio import AsyncClient
from hypermesh.client.errors import ApiError
from hypermesh.client.kinds import NODES, WORKLOADS
from hypermesh.client.resources import Resource
from hypermesh.pki import Identity
from hypermesh.resources import certificaterevocation as revocations
from hypermesh.store.memory import MemoryStore

REVOCATIONS = Resource(
    group="hypermesh.io", version="v1", kind="CertificateRevocation",
    plural="certificaterevocations", singular="certificaterevocation", namespaced=False,
)  # fmt: skip
ADMIN = Identity("admin", ("system:masters",), serial=0xAD)
ALICE = Identity("alice", ("system:masters",), serial=0xA11CE)
BOB = Identity("bob", ("system:masters",), serial=0xB0B)
NODE = Identity("system:node:n1", ("system:nodes",), serial=0x40DE)


def entry(name: str, serial: str) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"serialNumber": serial}}


# -- what a set of objects revokes ---------------------------------------------------------------


def test_revoked_serials_follow_events_and_report_what_became_revoked() -> None:
    serials = revocations.RevokedSerials()
    assert serials.replace([entry("a", "0a"), entry("b", "0b")]) == {0xA, 0xB}
    assert serials.apply("ADDED", entry("c", "c")) == {0xC}
    # A second object naming a serial already revoked revokes nothing new, and deleting one of
    # the two leaves the serial revoked.
    assert serials.apply("ADDED", entry("c-again", "c")) == frozenset()
    assert serials.apply("DELETED", entry("c", "c")) == frozenset()
    assert 0xC in serials and serials.name_of(0xC) == "c-again"
    assert serials.apply("DELETED", entry("c-again", "c")) == frozenset()
    assert not serials.is_revoked(0xC)
    # A change of serial un-revokes the old one and revokes the new one.
    assert serials.apply("MODIFIED", entry("a", "1a")) == {0x1A}
    assert not serials.is_revoked(0xA) and serials.is_revoked(0x1A)
    assert serials.replace([entry("b", "0b")]) == frozenset()
    assert serials.serials() == {0xB}
    # No certificate, nothing to revoke; an unreadable serial revokes nothing.
    assert not serials.is_revoked(None)
    assert serials.apply("ADDED", entry("junk", "zz")) == frozenset()
    assert len(serials) == 1


def test_a_revocation_object_is_named_by_its_serial() -> None:
    expires = datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    body = revocations.revocation(
        0xABC, reason="keyCompromise", subject="CN=alice", not_after=expires,
        certificate_ref=revocations.CertificateRef(namespace="default", name="web"),
    )  # fmt: skip
    assert body["metadata"]["name"] == "abc" == body["spec"]["serialNumber"]
    assert body["spec"]["reason"] == "keyCompromise"
    assert body["spec"]["notAfter"] == "2030-01-02T03:04:05Z"
    assert body["spec"]["certificateRef"] == {"namespace": "default", "name": "web"}
    assert revocations.serial_of(body) == 0xABC


# -- the API server ---------------------------------------------------------------------------


@pytest.fixture
async def server() -> AsyncIterator[APIServer]:
    app = APIServer(MemoryStore())
    await app.start()
    try:
        yield app
    finally:
        await app.stop()


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> float:
    """Seconds until `check()` holds (fails after `timeout`)."""
    began = asyncio.get_running_loop().time()
    while not await check():
        assert asyncio.get_running_loop().time() - began < timeout, "not within the time allowed"
        await asyncio.sleep(0.01)
    return asyncio.get_running_loop().time() - began


async def refused(client: AsyncClient) -> bool:
    try:
        await client.list(NODES)
    except ApiError as exc:
        assert exc.status == 401, exc
        return True
    return False


async def test_a_revoked_certificate_gets_401_at_its_next_request_and_others_do_not(server: APIServer) -> None:
    admin, alice, bob = (AsyncClient.in_process(server, who) for who in (ADMIN, ALICE, BOB))
    announced: list[frozenset[int]] = []
    server.revocations.on_revoked(announced.append)
    await alice.list(NODES)

    await admin.create(REVOCATIONS, revocations.revocation(ALICE.serial or 0, reason="keyCompromise"))
    took = await eventually(lambda: refused(alice))
    assert took < 1.0
    with pytest.raises(ApiError) as caught:
        await alice.list(NODES)
    assert caught.value.reason == "Unauthorized"
    assert caught.value.message == (
        'Unauthorized: the client certificate of user "alice" (serial a11ce) has been revoked '
        "(certificaterevocation/a11ce); ask an administrator for a new one"
    )
    assert announced == [frozenset({ALICE.serial})]
    # Same user name and groups, another certificate: not refused.
    await bob.list(NODES)
    assert (await AsyncClient.in_process(server, Identity("alice", ("system:masters",), serial=7)).list(NODES))["items"] == []
    # Identities without a certificate (the in-process controllers) are never refused here.
    await AsyncClient.in_process(server, Identity("system:controllers", ("system:masters",))).list(NODES)

    # Deleting the revocation un-revokes.
    await admin.delete(REVOCATIONS, "a11ce")
    await eventually(lambda: _not(refused(alice)))


async def _not(check: Awaitable[bool]) -> bool:
    return not await check


async def test_only_cluster_admins_may_revoke_and_nodes_may_read(server: APIServer) -> None:
    node = AsyncClient.in_process(server, NODE)
    # Even the aggregated `admin` role, bound cluster-wide, does not reach revocations.
    carol = AsyncClient.in_process(server, Identity("carol", (), serial=0xCA401))
    rbac = Resource(
        group="rbac.authorization.k8s.io", version="v1", kind="ClusterRoleBinding",
        plural="clusterrolebindings", singular="clusterrolebinding", namespaced=False,
    )  # fmt: skip
    await AsyncClient.in_process(server, ADMIN).create(rbac, {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "carol-admin"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "admin"},
        "subjects": [{"kind": "User", "name": "carol"}],
    })  # fmt: skip
    assert (await carol.list(WORKLOADS))["items"] == []
    body = revocations.revocation(0xB0B)
    for client in (node, carol):
        with pytest.raises(ApiError) as caught:
            await client.create(REVOCATIONS, body)
        assert caught.value.status == 403
    # The node agent follows the list to refuse revoked certificates on its own endpoint.
    await AsyncClient.in_process(server, ADMIN).create(REVOCATIONS, body)
    listed = await node.list(REVOCATIONS)
    assert [item["metadata"]["name"] for item in listed["items"]] == ["b0b"]
    with pytest.raises(ApiError) as caught:
        await node.delete(REVOCATIONS, "b0b")
    assert caught.value.status == 403


async def test_the_schema_refuses_a_serial_that_is_not_hex(server: APIServer) -> None:
    admin = AsyncClient.in_process(server, ADMIN)
    with pytest.raises(ApiError) as caught:
        await admin.create(REVOCATIONS, {**entry("x", "0xZZ"), "apiVersion": "hypermesh.io/v1", "kind": "CertificateRevocation"})
    assert caught.value.status == 422 and "spec.serialNumber" in caught.value.message


async def test_entries_of_long_expired_certificates_are_swept(server: APIServer) -> None:
    admin = AsyncClient.in_process(server, ADMIN)
    now = datetime.datetime.now(datetime.UTC)
    await admin.create(REVOCATIONS, revocations.revocation(1, not_after=now - datetime.timedelta(hours=2)))
    await admin.create(REVOCATIONS, revocations.revocation(2, not_after=now - datetime.timedelta(minutes=10)))
    await admin.create(REVOCATIONS, revocations.revocation(3))
    assert await server.revocations.sweep(now) == 1
    names = {item["metadata"]["name"] for item in (await admin.list(REVOCATIONS))["items"]}
    assert names == {"2", "3"}
    await eventually(lambda: _sync(not server.revocations.is_revoked(1)))


async def _sync(value: bool) -> bool:
    return value


async def test_the_node_agent_follows_the_revocation_list(server: APIServer, tmp_path: Any) -> None:
    from hypermesh.runtime.agent import Agent, AgentSettings

    agent = Agent(AsyncClient.in_process(server, NODE), AgentSettings(node_name="n1", data_dir=tmp_path))
    admin = AsyncClient.in_process(server, ADMIN)
    await admin.create(REVOCATIONS, revocations.revocation(0x01D))
    follower = asyncio.create_task(agent.revocations.run())
    try:
        await asyncio.wait_for(agent.revocations.synced.wait(), 5)
        assert agent.revoked.is_revoked(0x01D)
        await admin.create(REVOCATIONS, revocations.revocation(ALICE.serial or 0))
        took = await eventually(lambda: _sync(agent.revoked.is_revoked(ALICE.serial)))
        assert took < 5.0
        await admin.delete(REVOCATIONS, "1d")
        await eventually(lambda: _sync(not agent.revoked.is_revoked(0x01D)))
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
