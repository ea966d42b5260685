"""Both listeners, over real sockets: who the app sees, what is refused, how streams behave.

A tiny ASGI echo app stands in for the API server. It answers with the identity it found in
the scope, streams numbered chunks on request, and records disconnects, so every assertion is
about what the application observed, never about transport internals.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import json
import os
import shutil
import socket
import ssl
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from aioquic.asyncio.server import serve as aioquic_serve
from aioquic.h3.connection import H3_ALPN
from aioquic.quic.configuration import QuicConfiguration
from aioquic.tls import CipherSuite, SessionTicket

from hypermesh.pki import CertificateAuthority, ServerPKI, ensure_server_pki, write_kubeconfig
from hypermesh.pki.identity import Identity
from hypermesh.transport import sessions
from hypermesh.transport.asgi import IDENTITY_SCOPE_KEY
from hypermesh.transport.h3 import SessionTicketStore, serve_h3
from hypermesh.transport.h3client import H3Client, H3ConnectionError, H3Error
from hypermesh.transport.tcp import serve_tcp

pytestmark = pytest.mark.e2e

BAD_CERTIFICATE = 0x100 + 42  # QUIC CRYPTO_ERROR carrying the TLS bad_certificate alert


# The application under the listeners


@dataclass
class EchoApp:
    """Answers with what it saw; remembers every request and every disconnect."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        identity = scope[IDENTITY_SCOPE_KEY]
        early = dict(scope["headers"]).get(b"early-data") == b"1"
        seen = {
            "user": identity.user if identity else None,
            "groups": list(identity.groups) if identity else None,
            "serial": identity.serial if identity else None,
            "method": scope["method"],
            "path": scope["path"],
            "early_data": early,
            "http_version": scope["http_version"],
            "client_port": scope["client"][1],
            "cert_name": scope.get("extensions", {}).get("tls", {}).get("client_cert_name"),
        }
        self.requests.append(seen)
        query = dict(
            part.split("=", 1) for part in scope["query_string"].decode().split("&") if part
        )
        if scope["path"] == "/too-early" and early:
            # What an origin does with a request it will not serve from replayable early data.
            await send({"type": "http.response.start", "status": 425, "headers": []})
            await send({"type": "http.response.body", "body": b""})
        elif scope["path"] == "/stream":
            await self._stream(send, int(query["n"]), float(query.get("delay", "0")))
        elif scope["path"] == "/hang":
            await self._hang(receive, send)
        elif scope["path"] == "/echo":
            body = b""
            while True:
                message = await receive()
                body += message.get("body", b"")
                if not message.get("more_body"):
                    break
            await self._respond(send, body, b"application/octet-stream")
        else:
            await self._respond(send, json.dumps(seen).encode(), b"application/json")

    @staticmethod
    async def _respond(send: Any, body: bytes, content_type: bytes) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", content_type)],
            }
        )
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    async def _stream(send: Any, n: int, delay: float) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for i in range(n):
            await send({"type": "http.response.body", "body": b"chunk-%d\n" % i, "more_body": True})
            await asyncio.sleep(delay)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _hang(self, receive: Any, send: Any) -> None:
        # A watch that never produces a second event: only a disconnect ends it.
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first\n", "more_body": True})
        while (await receive())["type"] != "http.disconnect":
            pass
        self.disconnected.set()


# Key material


@dataclass(frozen=True)
class Credentials:
    cert: Path
    key: Path


@pytest.fixture(scope="module")
def server_pki(tmp_path_factory: pytest.TempPathFactory) -> ServerPKI:
    return ensure_server_pki(tmp_path_factory.mktemp("data"))


def _write_pair(directory: Path, name: str, pair: tuple[bytes, bytes]) -> Credentials:
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    cert.write_bytes(pair[0])
    key.write_bytes(pair[1])
    return Credentials(cert, key)


@pytest.fixture(scope="module")
def admin(server_pki: ServerPKI) -> Credentials:
    return Credentials(server_pki.admin_cert_path, server_pki.admin_key_path)


@pytest.fixture(scope="module")
def impostor(tmp_path_factory: pytest.TempPathFactory) -> Credentials:
    """An admin certificate from a CA with the same name as ours, but another key."""
    other = CertificateAuthority.generate(common_name="hypermesh-ca")
    pair = other.issue("admin", organizations=["system:masters"], client=True)
    return _write_pair(tmp_path_factory.mktemp("impostor"), "admin", pair)


@pytest.fixture(scope="module")
def server_only(server_pki: ServerPKI, tmp_path_factory: pytest.TempPathFactory) -> Credentials:
    """Signed by our CA, but only for serving: it must not authenticate a client."""
    pair = server_pki.ca.issue("admin", organizations=["system:masters"], server=True)
    return _write_pair(tmp_path_factory.mktemp("serveronly"), "admin", pair)


# Listeners


def _free_port(host: str) -> int:
    """A port free for both TCP and UDP (the two listeners share the number)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(50):
        with socket.socket(family, socket.SOCK_STREAM) as tcp:
            tcp.bind((host, 0))
            port = tcp.getsockname()[1]
            with socket.socket(family, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((host, port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port")


@dataclass
class Listeners:
    host: str
    port: int
    app: EchoApp
    pki: ServerPKI
    shutdown: asyncio.Event
    tasks: list[asyncio.Task[None]]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}"

    def h3(self, creds: Credentials | None = None, **kwargs: Any) -> H3Client:
        return H3Client(
            self.host,
            self.port,
            cafile=self.pki.ca_cert_path,
            certfile=creds.cert if creds else None,
            keyfile=creds.key if creds else None,
            connect_timeout=3.0,
            **kwargs,
        )

    def tls_context(self, creds: Credentials | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.pki.ca_cert_path))
        if creds is not None:
            context.load_cert_chain(creds.cert, creds.key)
        return context


@contextlib.asynccontextmanager
async def running(
    server_pki: ServerPKI, host: str = "127.0.0.1", tickets: SessionTicketStore | None = None
) -> AsyncIterator[Listeners]:
    port = _free_port(host)
    app = EchoApp()
    shutdown = asyncio.Event()
    tcp_ready, h3_ready = asyncio.Event(), asyncio.Event()
    files = {
        "certfile": server_pki.server_cert_path,
        "keyfile": server_pki.server_key_path,
        "cafile": server_pki.ca_cert_path,
    }
    tasks = [
        asyncio.create_task(
            serve_tcp(
                app,
                host=host,
                port=port,
                ready=tcp_ready,
                shutdown=shutdown,
                graceful_timeout=1.0,
                **files,
            )
        ),
        asyncio.create_task(
            serve_h3(
                app,
                host=host,
                port=port,
                ready=h3_ready,
                shutdown=shutdown,
                graceful_timeout=1.0,
                tickets=tickets,
                **files,
            )
        ),
    ]
    try:
        async with asyncio.timeout(5):
            await tcp_ready.wait()
            await h3_ready.wait()
        yield Listeners(host, port, app, server_pki, shutdown, tasks)
    finally:
        shutdown.set()
        async with asyncio.timeout(10):
            await asyncio.gather(*tasks)


@pytest.fixture
async def listeners(server_pki: ServerPKI) -> AsyncIterator[Listeners]:
    async with running(server_pki) as result:
        yield result


# HTTP/1.1 over TLS


async def test_tcp_admin_identity_on_every_keepalive_request(
    listeners: Listeners, admin: Credentials
) -> None:
    async with httpx.AsyncClient(verify=listeners.tls_context(admin)) as client:
        answers = [(await client.get(f"{listeners.url}/whoami/{i}")).json() for i in range(4)]
    assert [a["user"] for a in answers] == ["admin"] * 4
    assert all(a["groups"] == ["system:masters"] for a in answers)
    assert all(a["http_version"] == "1.1" for a in answers)
    assert all(a["cert_name"] == "CN=admin,O=system:masters" for a in answers)
    # One client port for all four: they really shared one keep-alive connection.
    assert len({a["client_port"] for a in answers}) == 1


async def test_tcp_without_client_certificate_is_anonymous(listeners: Listeners) -> None:
    async with httpx.AsyncClient(verify=listeners.tls_context()) as client:
        response = await client.get(f"{listeners.url}/whoami")
    assert response.status_code == 200
    assert response.json()["user"] is None
    assert listeners.app.requests[-1]["user"] is None


def _raw_tls_request(context: ssl.SSLContext, host: str, port: int) -> bytes:
    with (
        socket.create_connection((host, port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        tls.sendall(b"GET /whoami HTTP/1.1\r\nhost: x\r\n\r\n")
        return tls.recv(65536)


@pytest.mark.parametrize("which", ["impostor", "server_only"])
async def test_tcp_refuses_certificates_that_are_not_cluster_clients(
    listeners: Listeners, which: str, request: pytest.FixtureRequest
) -> None:
    creds: Credentials = request.getfixturevalue(which)
    context = listeners.tls_context(creds)
    # In TLS 1.3 the client finishes its handshake before the server has judged its
    # certificate, so the refusal shows on the first read: the server's TLS layer drops the
    # connection (asyncio does not flush the alert), and not a byte of response comes back.
    try:
        answer = await asyncio.to_thread(_raw_tls_request, context, listeners.host, listeners.port)
    except (ssl.SSLError, ConnectionError):
        answer = b""
    assert answer == b""
    async with httpx.AsyncClient(verify=context) as client:
        with pytest.raises(httpx.TransportError):
            await client.get(f"{listeners.url}/whoami")
    assert listeners.app.requests == []


async def test_tcp_identity_over_tls_1_2(listeners: Listeners, admin: Credentials) -> None:
    context = listeners.tls_context(admin)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    async with httpx.AsyncClient(verify=context) as client:
        answer = (await client.get(f"{listeners.url}/whoami")).json()
    assert answer["user"] == "admin"


def _whoami_twice_resuming(context: ssl.SSLContext, host: str, port: int) -> list[Any]:
    """Two HTTPS requests on two connections, the second resuming the first's TLS session."""
    results: list[Any] = []
    session = None
    for _ in range(2):
        with (
            socket.create_connection((host, port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname=host, session=session) as tls,
        ):
            tls.sendall(b"GET /whoami HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            response = b""
            while chunk := tls.recv(65536):
                response += chunk
            _, _, body = response.partition(b"\r\n\r\n")
            # The body is chunk-encoded; the JSON object sits between the size lines.
            payload = body[body.index(b"{") : body.rindex(b"}") + 1]
            results.append((tls.session_reused, json.loads(payload)["user"]))
            session = tls.session
    return results


async def test_tcp_resumed_tls_session_keeps_identity(
    listeners: Listeners, admin: Credentials
) -> None:
    results = await asyncio.to_thread(
        _whoami_twice_resuming, listeners.tls_context(admin), listeners.host, listeners.port
    )
    # OpenSSL keeps the verified client certificate in the session, so a resumed connection
    # carries the same identity without presenting the certificate again.
    assert results == [(False, "admin"), (True, "admin")]


async def test_kubectl_authenticates_as_admin(listeners: Listeners, tmp_path: Path) -> None:
    kubectl = shutil.which("kubectl", path=os.path.dirname(sys.executable)) or shutil.which(
        "kubectl"
    )
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    kubeconfig = tmp_path / "kubeconfig"
    write_kubeconfig(
        kubeconfig,
        server_url=listeners.url,
        ca_pem=listeners.pki.ca_pem,
        cert_pem=listeners.pki.admin_cert_pem,
        key_pem=listeners.pki.admin_key_pem,
    )
    process = await asyncio.create_subprocess_exec(
        kubectl,
        "--kubeconfig",
        str(kubeconfig),
        "get",
        "--raw",
        "/whoami",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(20):
        stdout, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()
    assert json.loads(stdout)["user"] == "admin"


async def test_tcp_and_h3_on_ipv6_loopback(server_pki: ServerPKI, admin: Credentials) -> None:
    async with running(server_pki, host="::1") as listeners:
        async with httpx.AsyncClient(verify=listeners.tls_context(admin)) as client:
            assert (await client.get(f"{listeners.url}/v6")).json()["user"] == "admin"
        async with listeners.h3(admin) as h3:
            _, _, body = await h3.request("GET", "/v6")
        assert json.loads(body)["user"] == "admin"


# HTTP/3


async def test_h3_admin_identity_on_every_request(listeners: Listeners, admin: Credentials) -> None:
    async with listeners.h3(admin) as client:
        sequential = [await client.request("GET", f"/whoami/{i}") for i in range(3)]
        concurrent = await asyncio.gather(*(client.request("GET", "/c") for _ in range(10)))
    for status, headers, body in sequential + list(concurrent):
        assert status == 200
        assert (b"content-type", b"application/json") in headers
        answer = json.loads(body)
        assert answer["user"] == "admin"
        assert answer["groups"] == ["system:masters"]
        assert answer["http_version"] == "3"
        assert answer["cert_name"] == "CN=admin,O=system:masters"
    assert len({r["client_port"] for r in listeners.app.requests}) == 1


async def test_h3_without_client_certificate_is_anonymous(listeners: Listeners) -> None:
    async with listeners.h3() as client:
        status, _, body = await client.request("GET", "/whoami")
    assert status == 200
    assert json.loads(body)["user"] is None


@pytest.mark.parametrize("which", ["impostor", "server_only"])
async def test_h3_closes_connections_with_foreign_certificates(
    listeners: Listeners, which: str, request: pytest.FixtureRequest
) -> None:
    creds: Credentials = request.getfixturevalue(which)
    with pytest.raises(H3ConnectionError) as caught:
        async with listeners.h3(creds) as client:
            await client.request("GET", "/whoami", timeout=3)
    assert caught.value.error_code == BAD_CERTIFICATE
    assert listeners.app.requests == []
    # The listener is unharmed: the next, legitimate client is served.
    async with listeners.h3() as client:
        assert (await client.request("GET", "/after"))[0] == 200


async def test_h3_connect_to_nothing_times_out() -> None:
    port = _free_port("127.0.0.1")
    client = H3Client("127.0.0.1", port, cafile=os.devnull, connect_timeout=0.5)
    started = time.monotonic()
    with pytest.raises(H3ConnectionError):
        await client.connect()
    assert time.monotonic() - started < 2


async def test_h3_request_body_reaches_the_app(listeners: Listeners, admin: Credentials) -> None:
    big = os.urandom(3 << 20)  # beyond the flow-control windows: needs credit updates
    async with listeners.h3(admin) as client:
        small = await client.request("POST", "/echo", body=b"hello")
        large = await client.request("POST", "/echo", body=big)
    assert small[2] == b"hello"
    assert large[2] == big


async def test_h3_streams_chunk_by_chunk(listeners: Listeners, admin: Credentials) -> None:
    arrivals: list[tuple[float, bytes]] = []
    async with (
        listeners.h3(admin) as client,
        contextlib.aclosing(client.stream("GET", "/stream?n=5&delay=0.1")) as chunks,
    ):
        async for chunk in chunks:
            arrivals.append((time.monotonic(), chunk))
    ended = time.monotonic()
    assert b"".join(c for _, c in arrivals) == b"".join(b"chunk-%d\n" % i for i in range(5))
    # The first chunk arrived as soon as the app sent it, not with the rest at the end
    # (the app spends 0.5 s between its first chunk and the end of the stream).
    assert arrivals[0][1].startswith(b"chunk-0\n")
    assert ended - arrivals[0][0] >= 0.3


async def test_h3_client_leaving_a_stream_disconnects_the_app(
    listeners: Listeners, admin: Credentials
) -> None:
    async with listeners.h3(admin) as client:
        async with contextlib.aclosing(client.stream("GET", "/hang")) as chunks:
            assert await anext(chunks) == b"first\n"
        async with asyncio.timeout(3):
            await listeners.app.disconnected.wait()
        # The connection itself stays usable.
        assert (await client.request("GET", "/whoami"))[0] == 200


async def test_h3_lost_connection_disconnects_the_app(
    listeners: Listeners, admin: Credentials
) -> None:
    client = listeners.h3(admin)
    await client.connect()
    chunks = client.stream("GET", "/hang")
    assert await anext(chunks) == b"first\n"
    await client.close()
    async with asyncio.timeout(3):
        await listeners.app.disconnected.wait()
    with contextlib.suppress(Exception):
        await chunks.aclose()


async def test_shutdown_ends_open_streams(server_pki: ServerPKI, admin: Credentials) -> None:
    async with (
        running(server_pki) as listeners,
        listeners.h3(admin) as client,
        httpx.AsyncClient(verify=listeners.tls_context(admin)) as http,
    ):
        h3_stream = client.stream("GET", "/hang")
        assert await anext(h3_stream) == b"first\n"
        async with http.stream("GET", f"{listeners.url}/hang") as response:
            tcp_stream = response.aiter_raw()
            assert await anext(tcp_stream) == b"first\n"
            started = time.monotonic()
            listeners.shutdown.set()
            async with asyncio.timeout(8):
                await asyncio.gather(*listeners.tasks)
            # graceful_timeout is 1 s: the listeners waited for the watches, then ended them.
            assert time.monotonic() - started < 5
            # Both watches end as broken streams, never as a clean (complete) response.
            with pytest.raises(httpx.TransportError):
                async for _ in tcp_stream:
                    pass
        with pytest.raises(H3Error):
            async for _ in h3_stream:
                pass


# HTTP/3 session resumption: tickets for verified certificates only, bound to their identity.


async def _ticket_for(listeners: Listeners, creds: Credentials | None) -> list[SessionTicket]:
    """Connect once with `creds` and return the tickets the listener issued to it."""
    tickets: list[SessionTicket] = []
    async with listeners.h3(creds, on_session_ticket=tickets.append) as client:
        # The ticket follows the client's Finished; one round trip later it has surely come.
        _, _, body = await client.request("GET", "/whoami")
        assert not client.session_resumed
    assert (json.loads(body)["user"] is None) == (creds is None)
    return tickets


async def _whoami(client: H3Client) -> dict[str, Any]:
    status, _, body = await client.request("GET", "/whoami")
    assert status == 200
    answer: dict[str, Any] = json.loads(body)
    return answer


async def test_h3_verified_client_resumes_with_its_identity(
    listeners: Listeners, admin: Credentials
) -> None:
    tickets = await _ticket_for(listeners, admin)
    assert len(tickets) == 1
    ticket = tickets[0]
    # One hour at most; it allows 0-RTT (for reads, see tests/e2e/test_quic_early_data.py).
    assert ticket.not_valid_after - ticket.not_valid_before <= datetime.timedelta(hours=1)
    assert ticket.max_early_data_size == 0xFFFFFFFF
    for _ in range(2):
        successors: list[SessionTicket] = []
        async with listeners.h3(
            admin, session_ticket=ticket, on_session_ticket=successors.append
        ) as client:
            assert client.session_resumed
            answer = await _whoami(client)
        assert answer["user"] == "admin"
        assert answer["groups"] == ["system:masters"]
        assert answer["cert_name"] == "CN=admin,O=system:masters"
        # Each ticket resumes once and brings its successor, which does not extend the
        # session: it ends when the first ticket would have, an hour after the certificate
        # was last checked.
        (successor,) = successors
        assert successor.ticket != ticket.ticket
        assert abs(successor.not_valid_after - ticket.not_valid_after) <= datetime.timedelta(
            seconds=2
        )
        ticket = successor


async def test_h3_resumption_needs_no_certificate_but_keeps_the_ticket_identity(
    listeners: Listeners, admin: Credentials
) -> None:
    # The ticket's secret is the credential: a resumed client need not even load the key.
    (ticket,) = await _ticket_for(listeners, admin)
    async with listeners.h3(None, session_ticket=ticket) as client:
        assert client.session_resumed
        assert (await _whoami(client))["user"] == "admin"


async def test_h3_anonymous_and_rejected_clients_get_no_ticket(
    listeners: Listeners, impostor: Credentials
) -> None:
    assert await _ticket_for(listeners, None) == []
    tickets: list[SessionTicket] = []
    with pytest.raises(H3ConnectionError) as caught:
        async with listeners.h3(impostor, on_session_ticket=tickets.append) as client:
            await client.request("GET", "/whoami", timeout=3)
    assert caught.value.error_code == BAD_CERTIFICATE
    assert tickets == []


async def test_h3_ticket_of_another_listener_means_a_full_handshake(
    server_pki: ServerPKI, admin: Credentials
) -> None:
    # Same CA, same serving certificate, another process's memory (or a restarted server).
    async with running(server_pki) as first:
        (ticket,) = await _ticket_for(first, admin)
    async with running(server_pki) as second:
        fresh: list[SessionTicket] = []
        async with second.h3(admin, session_ticket=ticket, on_session_ticket=fresh.append) as c:
            assert not c.session_resumed
            assert (await _whoami(c))["user"] == "admin"
        assert len(fresh) == 1
        # Without a certificate the foreign ticket buys nothing: the client is anonymous.
        async with second.h3(None, session_ticket=ticket) as client:
            assert not client.session_resumed
            assert (await _whoami(client))["user"] is None


async def test_h3_forged_tickets_are_not_resumed(listeners: Listeners, admin: Credentials) -> None:
    (ticket,) = await _ticket_for(listeners, admin)
    garbage = dataclasses.replace(ticket, ticket=os.urandom(32))
    async with listeners.h3(admin, session_ticket=garbage) as client:
        assert not client.session_resumed
        assert (await _whoami(client))["user"] == "admin"
    async with listeners.h3(None, session_ticket=garbage) as client:
        assert not client.session_resumed
        assert (await _whoami(client))["user"] is None
    # A real ticket's name with a made-up secret fails the PSK binder check: refused outright.
    stolen_name = dataclasses.replace(ticket, resumption_secret=os.urandom(32))
    with pytest.raises(H3ConnectionError):
        async with listeners.h3(None, session_ticket=stolen_name) as client:
            await client.request("GET", "/whoami", timeout=3)
    # The genuine ticket still resumes.
    async with listeners.h3(admin, session_ticket=ticket) as client:
        assert client.session_resumed


async def test_h3_early_data_is_refused_when_tickets_do_not_allow_it(
    server_pki: ServerPKI, admin: Credentials
) -> None:
    store = SessionTicketStore(early_data=False)
    async with running(server_pki, tickets=store) as listeners:
        (ticket,) = await _ticket_for(listeners, admin)
        assert ticket.max_early_data_size is None
        # A client that sends 0-RTT data although the ticket did not allow it: the server
        # drops it unread, and the request, sent again after the handshake, runs once.
        greedy = dataclasses.replace(ticket, max_early_data_size=0xFFFFFFFF)
        served = len(listeners.app.requests)
        client = listeners.h3(admin, session_ticket=greedy)
        try:
            await client.connect(early_data=True)
            status, _, _ = await client.request("GET", "/early", timeout=3)
            assert status == 200
            assert client.session_resumed
            assert client.early_data_accepted is False
        finally:
            await client.close()
    early = [r for r in listeners.app.requests[served:] if r["path"] == "/early"]
    assert [r["early_data"] for r in early] == [False]


async def test_h3_tickets_expire_and_can_be_revoked(
    server_pki: ServerPKI, admin: Credentials, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SessionTicketStore()
    async with running(server_pki, tickets=store) as listeners:
        (ticket,) = await _ticket_for(listeners, admin)
        assert len(store) == 1
        assert store.forget(Identity("admin", ("system:masters",))) == 1
        async with listeners.h3(admin, session_ticket=ticket) as client:
            assert not client.session_resumed
            assert (await _whoami(client))["user"] == "admin"

        (ticket,) = await _ticket_for(listeners, admin)
        assert store.forget("someone-else") == 0
        real_now = sessions.time_now
        monkeypatch.setattr(sessions, "time_now", lambda: real_now() + 3601)
        async with listeners.h3(admin, session_ticket=ticket) as client:
            assert not client.session_resumed
        monkeypatch.setattr(sessions, "time_now", real_now)


async def test_h3_ticket_never_outlives_the_certificate(
    server_pki: ServerPKI, tmp_path: Path
) -> None:
    short = _write_pair(tmp_path, "alice", server_pki.ca.issue("alice", client=True, days=1))
    # Not the admin's: the server's own admin certificate lives a day and rotates.
    bob = _write_pair(tmp_path, "bob", server_pki.ca.issue("bob", client=True, days=30))
    async with running(server_pki, tickets=SessionTicketStore(lifetime=7 * 86400)) as listeners:
        (ticket,) = await _ticket_for(listeners, short)
        (longer,) = await _ticket_for(listeners, bob)
    assert ticket.not_valid_after - ticket.not_valid_before <= datetime.timedelta(days=1)
    assert longer.not_valid_after - longer.not_valid_before > datetime.timedelta(days=6)


def test_ticket_store_is_bounded_per_certificate_and_in_all(
    server_pki: ServerPKI, admin: Credentials, tmp_path: Path
) -> None:
    from cryptography import x509

    def certificate(creds: Credentials) -> x509.Certificate:
        return x509.load_pem_x509_certificate(creds.cert.read_bytes())

    alice = _write_pair(tmp_path, "alice", server_pki.ca.issue("alice", client=True))
    store = SessionTicketStore(max_tickets=3, max_per_certificate=2)
    future = sessions.time_now() + 60
    names = [os.urandom(32) for _ in range(5)]

    def add(name: bytes, creds: Credentials, user: str) -> None:
        now = datetime.datetime.now(datetime.UTC)
        ticket = SessionTicket(
            age_add=0,
            cipher_suite=CipherSuite.AES_128_GCM_SHA256,
            not_valid_after=now + datetime.timedelta(minutes=1),
            not_valid_before=now,
            resumption_secret=b"s" * 32,
            server_name="x",
            ticket=name,
        )
        store.add(ticket, Identity(user), certificate(creds), future)

    for name in names[:3]:
        add(name, admin, "admin")
    # One certificate keeps only its newest tickets.
    assert [store.lookup(n) is not None for n in names[:3]] == [False, True, True]
    add(names[3], alice, "alice")
    add(names[4], alice, "alice")
    # Three in all: the oldest (admin's) went first.
    assert len(store) == 3
    assert [store.lookup(n) is not None for n in names] == [False, False, True, True, True]
    assert store.forget("alice") == 2
    assert len(store) == 1


async def test_h3_offered_ticket_is_ignored_and_identity_still_checked(
    listeners: Listeners, admin: Credentials, impostor: Credentials
) -> None:
    # Get a genuine ticket for this server name from a ticket-issuing QUIC server that
    # shares our serving certificate, then offer it to the HyperMesh listener.
    issued: dict[bytes, SessionTicket] = {}
    configuration = QuicConfiguration(is_client=False, alpn_protocols=H3_ALPN)
    configuration.load_cert_chain(listeners.pki.server_cert_path, listeners.pki.server_key_path)
    port = _free_port(listeners.host)
    ticket_server = await aioquic_serve(
        listeners.host,
        port,
        configuration=configuration,
        session_ticket_fetcher=issued.get,
        session_ticket_handler=lambda t: issued.__setitem__(t.ticket, t),
    )
    tickets: list[SessionTicket] = []
    try:
        client = H3Client(
            listeners.host,
            port,
            cafile=listeners.pki.ca_cert_path,
            on_session_ticket=tickets.append,
        )
        async with client:
            async with asyncio.timeout(3):
                while not tickets:
                    await asyncio.sleep(0.01)
        # The ticket is genuine: the server that issued it resumes with it.
        async with H3Client(
            listeners.host, port, cafile=listeners.pki.ca_cert_path, session_ticket=tickets[0]
        ) as client:
            assert client.session_resumed
    finally:
        ticket_server.close()
    ticket = tickets[0]

    async with listeners.h3(admin, session_ticket=ticket) as client:
        _, _, body = await client.request("GET", "/whoami")
        assert not client.session_resumed
    assert json.loads(body)["user"] == "admin"
    # Anonymous with a ticket stays anonymous; an impostor with a ticket is still refused.
    async with listeners.h3(None, session_ticket=ticket) as client:
        assert json.loads((await client.request("GET", "/whoami"))[2])["user"] is None
    with pytest.raises(H3ConnectionError):
        async with listeners.h3(impostor, session_ticket=ticket) as client:
            await client.request("GET", "/whoami", timeout=3)
