"""The TLS listeners and revocation and rotation, over real TLS on 127.0.0.1.

- The API server's TCP listener (`serve_tcp` with a `ServingTLS`): `close_revoked` aborts the
  open connections of a revoked client certificate, a stream on them included, and no others;
  `reload` makes new handshakes present a new serving certificate while a connection opened
  before keeps working, and a broken pair is refused without touching the live context.
- The node agent's endpoint: a revoked client certificate gets 401 even when it names an
  administrator, and its open connections are closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
from cryptography import x509

from hypermesh.pki import ServerPKI, ensure_server_pki
from hypermesh.runtime import endpoint
from hypermesh.runtime.supervisor import NodeServices
from hypermesh.transport.asgi import IDENTITY_SCOPE_KEY
from hypermesh.transport.tcp import ServingTLS, serve_tcp


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Pair:
    cert: Path
    key: Path

    @property
    def serial(self) -> int:
        return x509.load_pem_x509_certificate(self.cert.read_bytes()).serial_number


def write_pair(directory: Path, name: str, issued: tuple[bytes, bytes]) -> Pair:
    pair = Pair(directory / f"{name}.crt", directory / f"{name}.key")
    pair.cert.write_bytes(issued[0])
    pair.key.write_bytes(issued[1])
    return pair


class WhoAmI:
    """Answers every request with the caller's serial; `/stream` sends a line a tick forever."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        identity = scope.get(IDENTITY_SCOPE_KEY)
        serial = identity.serial if identity is not None else None
        if scope["path"] == "/stream":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
            while True:
                await send({"type": "http.response.body", "body": b"tick\n", "more_body": True})
                await asyncio.sleep(0.05)
        body = json.dumps({"serial": serial}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


@dataclass
class Listener:
    pki: ServerPKI
    tls: ServingTLS
    port: int


@pytest.fixture
async def listener(tmp_path: Path) -> AsyncIterator[Listener]:
    pki = ensure_server_pki(tmp_path / "data")
    tls = ServingTLS(pki.server_cert_path, pki.server_key_path, pki.ca_cert_path)
    port = free_port()
    ready, shutdown = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(serve_tcp(WhoAmI(), host="127.0.0.1", port=port, tls=tls, ready=ready, shutdown=shutdown, graceful_timeout=0.2))
    await asyncio.wait_for(ready.wait(), 10)
    try:
        yield Listener(pki, tls, port)
    finally:
        shutdown.set()
        await asyncio.wait_for(task, 10)


class Connection:
    """One keep-alive HTTPS/1.1 connection that remembers the server certificate it saw."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        self.server_serial = x509.load_der_x509_certificate(der).serial_number

    @classmethod
    async def open(cls, port: int, ca: Path, client: Pair | None) -> Connection:
        context = ssl.create_default_context(cafile=str(ca))
        if client is not None:
            context.load_cert_chain(client.cert, client.key)
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="127.0.0.1")
        return cls(reader, writer)

    async def get(self, path: str) -> tuple[int, bytes]:
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await self.writer.drain()
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 5)
        status = int(head.split(b" ", 2)[1])
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
        return status, await self.reader.readexactly(length)

    async def serial_seen(self) -> int | None:
        status, body = await self.get("/")
        assert status == 200
        return cast(int | None, json.loads(body)["serial"])

    async def ended(self, timeout: float = 5.0) -> bool:
        """Whether the server ends the connection within `timeout` (reading what comes)."""
        try:
            while await asyncio.wait_for(self.reader.read(65536), timeout):
                pass
        except (ConnectionError, ssl.SSLError):
            pass
        return True

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


# -- the API server's TCP listener --------------------------------------------------------------


async def test_close_revoked_ends_the_connections_of_that_certificate_only(listener: Listener, tmp_path: Path) -> None:
    ca = listener.pki.ca_cert_path
    alice = write_pair(tmp_path, "alice", listener.pki.ca.issue("alice", client=True))
    bob = write_pair(tmp_path, "bob", listener.pki.ca.issue("bob", client=True))
    idle = await Connection.open(listener.port, ca, alice)
    assert await idle.serial_seen() == alice.serial
    streaming = await Connection.open(listener.port, ca, alice)
    streaming.writer.write(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b"tick" in await streaming.reader.readuntil(b"tick\n")
    other = await Connection.open(listener.port, ca, bob)
    anonymous = await Connection.open(listener.port, ca, None)
    assert len(listener.tls.connections) == 3

    assert listener.tls.close_revoked([alice.serial, 12345]) == 2
    assert await idle.ended() and await streaming.ended()
    assert await other.serial_seen() == bob.serial
    assert await anonymous.serial_seen() is None
    for connection in (idle, streaming, other, anonymous):
        connection.close()


async def test_reload_changes_the_certificate_of_new_handshakes_only(listener: Listener, tmp_path: Path) -> None:
    ca, pki = listener.pki.ca_cert_path, listener.pki
    before = await Connection.open(listener.port, ca, None)
    first = pki.server_cert.serial_number
    assert before.server_serial == first

    renewed = write_pair(tmp_path, "server", pki.ca.issue("hypermesh-apiserver", ip_addresses=["127.0.0.1"], server=True))
    listener.tls.reload(renewed.cert, renewed.key)
    after = await Connection.open(listener.port, ca, None)
    assert after.server_serial == renewed.serial != first
    # The connection opened before carries on, on the certificate it was opened with.
    assert await before.serial_seen() is None
    assert before.server_serial == first

    # A certificate with the wrong key is refused, and the listener keeps the good pair.
    with pytest.raises(ssl.SSLError):
        listener.tls.reload(renewed.cert, pki.server_key_path)
    again = await Connection.open(listener.port, ca, None)
    assert again.server_serial == renewed.serial
    for connection in (before, after, again):
        connection.close()


# -- the node agent's endpoint ------------------------------------------------------------------


async def test_the_agent_endpoint_refuses_a_revoked_administrator(tmp_path: Path) -> None:
    pki = ensure_server_pki(tmp_path / "data")
    services = NodeServices(
        client=cast(Any, None), node_name="n1", data_dir=tmp_path / "agent", images=cast(Any, None),
        runtime=cast(Any, None), network=cast(Any, None), host_ip="127.0.0.1",
    )  # fmt: skip
    revoked: set[int] = set()
    agent = await endpoint.start(
        services, lambda name, ns: None, client_ca_pem=pki.ca_pem, host="127.0.0.1", revoked=lambda s: s in revoked
    )
    ops = write_pair(tmp_path, "ops", pki.ca.issue("ops", organizations=["system:masters"], client=True))
    try:
        # The endpoint checks the client certificate against its own CA only; the client skips
        # checking the agent's self-signed certificate here (the API server pins its hash).
        async def connect() -> Connection:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
            context.load_cert_chain(ops.cert, ops.key)
            reader, writer = await asyncio.open_connection("127.0.0.1", agent.port, ssl=context)
            return Connection(reader, writer)

        before = await connect()
        status, _ = await before.get("/logs/default/web/main")
        assert status == 404  # allowed in; there is just no such Instance here

        revoked.add(ops.serial)
        assert agent.close_revoked([ops.serial]) == 1
        assert await before.ended()
        refused = await connect()
        status, body = await refused.get("/logs/default/web/main")
        answer = json.loads(body)
        assert (status, answer["reason"]) == (401, "Unauthorized")
        assert answer["message"] == f'the client certificate of user "ops" (serial {ops.serial:x}) has been revoked'
        before.close()
        refused.close()
    finally:
        await agent.close()


# -- the server's own certificates --------------------------------------------------------------


def test_the_server_certificates_renew_at_two_thirds_and_follow_the_lifetime_asked_for(tmp_path: Path) -> None:
    import datetime
    import time

    from hypermesh.pki.bootstrap import Lifetimes

    # A data dir from before daily rotation (year-long certificates) is renewed at once.
    first = ensure_server_pki(tmp_path)
    short = Lifetimes(serving=datetime.timedelta(seconds=6), admin=datetime.timedelta(seconds=9))
    second = ensure_server_pki(tmp_path, lifetimes=short)
    assert second.server_cert.serial_number != first.server_cert.serial_number
    assert second.admin_cert.serial_number != first.admin_cert.serial_number
    leaf = second.server_cert
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    # Back-dated by a tenth of the lifetime (not five minutes, or it would be due at once);
    # X.509 times are whole seconds.
    assert datetime.timedelta(seconds=6) <= lifetime <= datetime.timedelta(seconds=8)
    assert second.renewal_time() == (leaf.not_valid_before_utc + lifetime * 2 / 3).replace(microsecond=0)
    assert second.renewal_time() > datetime.datetime.now(datetime.UTC)
    assert second.ca_pem == first.ca_pem

    # Before the renewal time nothing changes; after it, only what is due is renewed.
    assert ensure_server_pki(tmp_path, lifetimes=short).server_cert_pem == second.server_cert_pem
    time.sleep(max(0.0, (second.renewal_time() - datetime.datetime.now(datetime.UTC)).total_seconds()) + 0.1)
    third = ensure_server_pki(tmp_path, lifetimes=short)
    assert third.server_cert.serial_number != second.server_cert.serial_number
    assert third.admin_cert_pem == second.admin_cert_pem
    with pytest.raises(ValueError, match="shorter than"):
        Lifetimes(serving=datetime.timedelta(seconds=1))
