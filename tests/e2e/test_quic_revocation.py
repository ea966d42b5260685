"""Who gets in over QUIC: missing, foreign and revoked certificates, and the serial per request.

The listener and the echo app are those of `test_transport.py`. The revocation list is a plain
set behind the `revoked(serial)` check the listener is given (the API server will feed it from
its own list), or the ticket store's `revoke(serials)`. A revoked certificate must be refused at
a full handshake, its tickets must not resume (not even as 0-RTT), and a connection it opened
before must be closed at its next request.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509

from hypermesh.pki import CertificateAuthority, ServerPKI, ensure_server_pki
from hypermesh.transport.h3 import CERTIFICATE_REVOKED, SessionTicketStore, serve_h3
from hypermesh.transport.h3client import H3Client, H3ConnectionError
from tests.e2e.test_transport import (
    BAD_CERTIFICATE,
    Credentials,
    EchoApp,
    Listeners,
    _free_port,
    _ticket_for,
    _write_pair,
    running,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server_pki(tmp_path_factory: pytest.TempPathFactory) -> ServerPKI:
    return ensure_server_pki(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def admin(server_pki: ServerPKI) -> Credentials:
    return Credentials(server_pki.admin_cert_path, server_pki.admin_key_path)


@pytest.fixture
def alice(server_pki: ServerPKI, tmp_path: Path) -> Credentials:
    return _write_pair(tmp_path, "alice", server_pki.ca.issue("alice", client=True))


def serial_of(creds: Credentials) -> int:
    return x509.load_pem_x509_certificate(creds.cert.read_bytes()).serial_number


@pytest.fixture
def revoked() -> set[int]:
    """The revocation list, as the listener sees it: a set of certificate serials."""
    return set()


@pytest.fixture
def store(revoked: set[int]) -> SessionTicketStore:
    return SessionTicketStore(revoked=revoked.__contains__)


@pytest.fixture
async def listeners(server_pki: ServerPKI, store: SessionTicketStore) -> AsyncIterator[Listeners]:
    async with running(server_pki, tickets=store) as result:
        yield result


async def _whoami(listeners: Listeners, creds: Credentials | None, **kwargs: Any) -> Any:
    async with listeners.h3(creds, **kwargs) as client:
        status, _, body = await client.request("GET", "/whoami", timeout=3)
    assert status == 200
    return json.loads(body)


# Missing and foreign certificates: the same answer on both listeners


async def test_missing_certificate_is_anonymous_on_both_listeners(listeners: Listeners) -> None:
    async with httpx.AsyncClient(verify=listeners.tls_context()) as http:
        over_tcp = (await http.get(f"{listeners.url}/whoami")).json()
    over_quic = await _whoami(listeners, None)
    assert over_tcp["user"] is over_quic["user"] is None


async def test_foreign_certificate_is_refused_on_both_listeners(
    listeners: Listeners, tmp_path: Path
) -> None:
    other = CertificateAuthority.generate(common_name="hypermesh-ca")
    foreign = _write_pair(tmp_path, "admin", other.issue("admin", client=True))
    async with httpx.AsyncClient(verify=listeners.tls_context(foreign)) as http:
        with pytest.raises(httpx.TransportError):
            await http.get(f"{listeners.url}/whoami")
    with pytest.raises(H3ConnectionError) as caught:
        await _whoami(listeners, foreign)
    assert caught.value.error_code == BAD_CERTIFICATE
    assert listeners.app.requests == []


# The serial reaches the app, whichever way the client got in


async def test_identity_carries_the_certificate_serial(
    listeners: Listeners, admin: Credentials
) -> None:
    serial = serial_of(admin)
    async with httpx.AsyncClient(verify=listeners.tls_context(admin)) as http:
        assert (await http.get(f"{listeners.url}/whoami")).json()["serial"] == serial
    (ticket,) = await _ticket_for(listeners, admin)
    assert listeners.app.requests[-1]["serial"] == serial
    client = listeners.h3(None, session_ticket=ticket)
    await client.connect(early_data=True)
    try:
        status, _, _ = await client.request("GET", "/early", timeout=3)
        assert status == 200 and client.early_data_accepted
    finally:
        await client.close()
    early = listeners.app.requests[-1]
    assert (early["path"], early["early_data"], early["serial"]) == ("/early", True, serial)


# Revoked certificates


async def test_revoked_certificate_is_refused_at_the_handshake(
    listeners: Listeners, admin: Credentials, alice: Credentials, revoked: set[int]
) -> None:
    revoked.add(serial_of(alice))
    with pytest.raises(H3ConnectionError) as caught:
        await _whoami(listeners, alice)
    assert caught.value.error_code == CERTIFICATE_REVOKED
    assert listeners.app.requests == []
    # Everyone else is unaffected.
    assert (await _whoami(listeners, admin))["user"] == "admin"


async def test_ticket_of_a_revoked_certificate_does_not_resume(
    listeners: Listeners, alice: Credentials, revoked: set[int]
) -> None:
    (first,) = await _ticket_for(listeners, alice)
    (second,) = await _ticket_for(listeners, alice)
    revoked.add(serial_of(alice))
    # Without the certificate the ticket is worth nothing: no resumption, so no early data
    # ran as alice; the GET, sent again after the handshake, is anonymous.
    client = listeners.h3(None, session_ticket=first)
    await client.connect(early_data=True)
    try:
        status, _, _ = await client.request("GET", "/early", timeout=3)
        assert status == 200
        assert not client.session_resumed
        assert client.early_data_accepted is False
    finally:
        await client.close()
    early = [(r["user"], r["early_data"]) for r in listeners.app.requests if r["path"] == "/early"]
    assert early == [(None, False)]
    # With it: no resumption either, so a full handshake, and the certificate is refused.
    with pytest.raises(H3ConnectionError) as caught:
        await _whoami(listeners, alice, session_ticket=second)
    assert caught.value.error_code == CERTIFICATE_REVOKED


async def test_store_revoke_drops_tickets_and_refuses_the_certificate(
    listeners: Listeners, store: SessionTicketStore, admin: Credentials, alice: Credentials
) -> None:
    (ticket,) = await _ticket_for(listeners, alice)
    await _ticket_for(listeners, admin)
    assert len(store) == 2
    assert store.revoke([serial_of(alice)]) == 1
    assert len(store) == 1
    assert store.is_revoked(serial_of(alice)) and not store.is_revoked(serial_of(admin))
    with pytest.raises(H3ConnectionError) as caught:
        await _whoami(listeners, alice, session_ticket=ticket)
    assert caught.value.error_code == CERTIFICATE_REVOKED
    assert (await _whoami(listeners, admin))["user"] == "admin"


async def test_open_connection_is_closed_when_its_certificate_is_revoked(
    listeners: Listeners, alice: Credentials, revoked: set[int]
) -> None:
    async with listeners.h3(alice) as client:
        assert (await client.request("GET", "/before", timeout=3))[0] == 200
        revoked.add(serial_of(alice))
        with pytest.raises(H3ConnectionError) as caught:
            await client.request("GET", "/after", timeout=3)
    assert caught.value.error_code == CERTIFICATE_REVOKED
    assert [r["path"] for r in listeners.app.requests] == ["/before"]


async def test_revoke_closes_open_connections_and_ends_their_watches(
    listeners: Listeners, store: SessionTicketStore, admin: Credentials, alice: Credentials
) -> None:
    async with listeners.h3(alice) as client, listeners.h3(admin) as bystander:
        watch = client.stream("GET", "/hang")
        assert await anext(watch) == b"first\n"
        # The API server's revocation list calls this as soon as it learns of the serial.
        store.revoke([serial_of(alice)])
        async with asyncio.timeout(3):
            await listeners.app.disconnected.wait()
        with pytest.raises(H3ConnectionError) as caught:
            async with asyncio.timeout(3):
                async for _ in watch:
                    pass
        assert caught.value.error_code == CERTIFICATE_REVOKED
        # Other clients' connections stay up.
        assert (await bystander.request("GET", "/still-here", timeout=3))[0] == 200


async def test_serve_h3_revoked_argument_is_the_check(
    server_pki: ServerPKI, alice: Credentials
) -> None:
    # `serve_h3(revoked=...)` is how the API server hands its list over.
    port = _free_port("127.0.0.1")
    ready, shutdown = asyncio.Event(), asyncio.Event()
    serial = serial_of(alice)
    task = asyncio.create_task(
        serve_h3(
            EchoApp(),
            host="127.0.0.1",
            port=port,
            certfile=server_pki.server_cert_path,
            keyfile=server_pki.server_key_path,
            cafile=server_pki.ca_cert_path,
            ready=ready,
            shutdown=shutdown,
            graceful_timeout=0.5,
            revoked=lambda candidate: candidate == serial,
        )
    )
    try:
        await asyncio.wait_for(ready.wait(), 5)
        client = H3Client(
            "127.0.0.1",
            port,
            cafile=server_pki.ca_cert_path,
            certfile=alice.cert,
            keyfile=alice.key,
            connect_timeout=3,
        )
        with pytest.raises(H3ConnectionError) as caught:
            await client.connect()
        assert caught.value.error_code == CERTIFICATE_REVOKED
    finally:
        shutdown.set()
        await asyncio.wait_for(task, 10)
