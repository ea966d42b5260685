"""0-RTT on the HTTP/3 listener: which requests run from early data, as whom, and how often.

The listener and the echo app are those of `test_transport.py`: every assertion is about what
the application saw (method, path, identity, whether the request came as early data), over
real sockets. The rules under test (see `hypermesh.transport.h3`):

- a ticket's holder may send GET and HEAD requests without a body in its first flight; they
  run before the handshake completes, as the ticket's identity, marked `early-data: 1`;
- anything else that arrives as early data gets 425 Too Early without reaching the app, and
  the client sends it again after the handshake;
- a ticket resumes once, so a replayed first flight (early data included) runs nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest
from aioquic.tls import SessionTicket

from hypermesh.pki import ServerPKI, ensure_server_pki
from hypermesh.transport.h3client import H3Client
from tests.e2e.test_transport import Credentials, Listeners, _ticket_for, _write_pair, running

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server_pki(tmp_path_factory: pytest.TempPathFactory) -> ServerPKI:
    return ensure_server_pki(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def admin(server_pki: ServerPKI) -> Credentials:
    return Credentials(server_pki.admin_cert_path, server_pki.admin_key_path)


@pytest.fixture
async def listeners(server_pki: ServerPKI) -> AsyncIterator[Listeners]:
    async with running(server_pki) as result:
        yield result


async def _early_client(
    listeners: Listeners, creds: Credentials | None, ticket: SessionTicket, **kwargs: Any
) -> H3Client:
    """A client connected with `ticket`, its first flight not yet answered (0-RTT)."""
    client = listeners.h3(creds, session_ticket=ticket, **kwargs)
    await client.connect(early_data=True)
    return client


def _seen(listeners: Listeners, path: str) -> list[dict[str, Any]]:
    return [r for r in listeners.app.requests if r["path"] == path]


async def test_h3_get_runs_from_early_data_as_the_ticket_identity(
    listeners: Listeners, admin: Credentials
) -> None:
    (ticket,) = await _ticket_for(listeners, admin)
    for round_trip in range(3):
        successors: list[SessionTicket] = []
        client = await _early_client(listeners, admin, ticket, on_session_ticket=successors.append)
        try:
            status, _, _ = await client.request("GET", f"/early/{round_trip}", timeout=3)
            assert status == 200
            assert client.session_resumed
            assert client.early_data_accepted is True
        finally:
            await client.close()
        (seen,) = _seen(listeners, f"/early/{round_trip}")
        assert seen["early_data"] is True
        assert (seen["user"], seen["groups"]) == ("admin", ["system:masters"])
        assert seen["cert_name"] == "CN=admin,O=system:masters"
        # Closing waited for the successor, so the next connection is 0-RTT again.
        (ticket,) = successors


async def test_h3_head_and_watch_may_start_early(listeners: Listeners, admin: Credentials) -> None:
    (ticket,) = await _ticket_for(listeners, admin)
    successors: list[SessionTicket] = []
    client = await _early_client(listeners, admin, ticket, on_session_ticket=successors.append)
    try:
        status, _, _ = await client.request("HEAD", "/head", timeout=3)
        assert status == 200
    finally:
        await client.close()
    client = await _early_client(listeners, admin, successors[-1])
    try:
        stream = client.stream("GET", "/stream?n=3")
        chunks = [chunk async for chunk in stream]
    finally:
        await client.close()
    assert b"".join(chunks) == b"chunk-0\nchunk-1\nchunk-2\n"
    assert [(r["method"], r["early_data"]) for r in _seen(listeners, "/head")] == [("HEAD", True)]
    assert [r["early_data"] for r in _seen(listeners, "/stream")] == [True]


async def test_h3_writes_never_go_early(listeners: Listeners, admin: Credentials) -> None:
    (ticket,) = await _ticket_for(listeners, admin)
    client = await _early_client(listeners, admin, ticket)
    try:
        # The client holds a write until the handshake is done, then sends it once.
        status, _, body = await client.request("POST", "/echo", body=b"written once", timeout=3)
        assert (status, body) == (200, b"written once")
        assert client.early_data_accepted is True
    finally:
        await client.close()
    assert [(r["method"], r["early_data"]) for r in _seen(listeners, "/echo")] == [("POST", False)]


@pytest.mark.parametrize(
    ("method", "body"),
    [("POST", b"x"), ("PUT", b"x"), ("DELETE", b""), ("PATCH", b"{}"), ("GET", b"a body")],
)
async def test_h3_unsafe_early_requests_get_425_and_never_reach_the_app(
    listeners: Listeners, admin: Credentials, method: str, body: bytes
) -> None:
    (ticket,) = await _ticket_for(listeners, admin)
    client = await _early_client(listeners, admin, ticket)
    try:
        # A client that sends such a request as early data anyway (ours never does).
        protocol = client._protocol
        assert protocol is not None and protocol.zero_rtt
        exchange = await client._exchange(protocol, method, "/unsafe", (), body)
        assert exchange.early
        assert exchange.status == 425
        # Nothing ran; after the handshake the same request is served.
        await client._confirmation(protocol)
        assert _seen(listeners, "/unsafe") == []
        status, _, _ = await client.request(method, "/unsafe", body=body, timeout=3)
        assert status == 200
    finally:
        await client.close()
    assert [(r["method"], r["early_data"]) for r in _seen(listeners, "/unsafe")] == [
        (method, False)
    ]


async def test_h3_client_retries_after_the_handshake_when_the_app_says_too_early(
    listeners: Listeners, admin: Credentials
) -> None:
    # An origin may refuse a particular read from early data itself (RFC 8470 section 5.2).
    (ticket,) = await _ticket_for(listeners, admin)
    client = await _early_client(listeners, admin, ticket)
    try:
        status, _, _ = await client.request("GET", "/too-early", timeout=3)
    finally:
        await client.close()
    assert status == 200
    assert [r["early_data"] for r in _seen(listeners, "/too-early")] == [True, False]


async def test_h3_used_ticket_gets_no_early_data(listeners: Listeners, admin: Credentials) -> None:
    (ticket,) = await _ticket_for(listeners, admin)
    client = await _early_client(listeners, admin, ticket)
    try:
        assert (await client.request("GET", "/first", timeout=3))[0] == 200
    finally:
        await client.close()
    # The same ticket again (a second process that read the same ticket file, or a thief):
    # not found any more, so a full handshake; the early GET is dropped unread and sent again.
    client = await _early_client(listeners, admin, ticket)
    try:
        assert (await client.request("GET", "/second", timeout=3))[0] == 200
        assert not client.session_resumed
        assert client.early_data_accepted is False
    finally:
        await client.close()
    # Without the certificate, the used ticket buys nothing: the client is anonymous.
    client = await _early_client(listeners, None, ticket)
    try:
        assert (await client.request("GET", "/third", timeout=3))[0] == 200
    finally:
        await client.close()
    assert [(r["user"], r["early_data"]) for r in _seen(listeners, "/first")] == [("admin", True)]
    assert [(r["user"], r["early_data"]) for r in _seen(listeners, "/second")] == [("admin", False)]
    assert [(r["user"], r["early_data"]) for r in _seen(listeners, "/third")] == [(None, False)]


class _Recorder(asyncio.DatagramProtocol):
    """A UDP relay between one client and the listener that keeps what the client sent."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.sent: list[bytes] = []
        self.client: tuple[str, int] | None = None
        self.transport: asyncio.DatagramTransport | None = None
        self.relay: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.client = addr
        self.sent.append(data)
        assert self.relay is not None
        self.relay.sendto(data)


class _Back(asyncio.DatagramProtocol):
    def __init__(self, recorder: _Recorder) -> None:
        self.recorder = recorder

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        recorder = self.recorder
        if recorder.transport is not None and recorder.client is not None:
            recorder.transport.sendto(data, recorder.client)


@contextlib.asynccontextmanager
async def _recording_relay(listeners: Listeners) -> AsyncIterator[tuple[_Recorder, int]]:
    loop = asyncio.get_running_loop()
    recorder = _Recorder((listeners.host, listeners.port))
    front, _ = await loop.create_datagram_endpoint(lambda: recorder, local_addr=(listeners.host, 0))
    back, _ = await loop.create_datagram_endpoint(
        lambda: _Back(recorder), remote_addr=(listeners.host, listeners.port)
    )
    recorder.relay = back
    try:
        yield recorder, front.get_extra_info("sockname")[1]
    finally:
        front.close()
        back.close()


async def test_h3_replayed_first_flight_runs_nothing(
    listeners: Listeners, admin: Credentials
) -> None:
    (ticket,) = await _ticket_for(listeners, admin)
    async with _recording_relay(listeners) as (recorder, port):
        client = H3Client(
            listeners.host,
            port,
            cafile=listeners.pki.ca_cert_path,
            certfile=admin.cert,
            keyfile=admin.key,
            server_name=listeners.host,
            session_ticket=ticket,
            connect_timeout=3.0,
        )
        await client.connect(early_data=True)
        try:
            assert (await client.request("GET", "/replayed", timeout=3))[0] == 200
            assert client.early_data_accepted is True
        finally:
            await client.close()
        # Let the relay pass the client's CONNECTION_CLOSE on.
        await asyncio.sleep(0.1)
        # The first flight: the ClientHello with the ticket, and the GET in 0-RTT packets
        # (long headers, unlike the 1-RTT packets that follow).
        first_flight = [data for data in recorder.sent if data[0] & 0x80]
    assert first_flight
    # Once the server has forgotten the connection (a closed one drains for 3 PTOs), the
    # replay starts a new one: an attacker replays it, from elsewhere, twice.
    await asyncio.sleep(1.0)
    for _ in range(2):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as attacker:
            attacker.bind((listeners.host, 0))
            for data in first_flight:
                attacker.sendto(data, (listeners.host, listeners.port))
            await asyncio.sleep(0.3)
    assert [r["early_data"] for r in _seen(listeners, "/replayed")] == [True]


async def test_h3_resumed_identity_is_the_tickets_whatever_certificate_comes_along(
    server_pki: ServerPKI, listeners: Listeners, admin: Credentials, tmp_path: Path
) -> None:
    alice = _write_pair(tmp_path, "alice", server_pki.ca.issue("alice", client=True))
    (ticket,) = await _ticket_for(listeners, alice)
    # A resumed handshake carries no certificate: the admin's key in the client changes
    # nothing, the ticket stands for alice (clients offer a ticket only with the certificate
    # that earned it, see hypermesh.client.tickets).
    client = await _early_client(listeners, admin, ticket)
    try:
        assert (await client.request("GET", "/bound", timeout=3))[0] == 200
    finally:
        await client.close()
    assert [(r["user"], r["early_data"]) for r in _seen(listeners, "/bound")] == [("alice", True)]
