"""The HTTP/1.1-over-TLS listener: uvicorn (httptools + uvloop) with client certificates.

uvicorn is the fastest ASGI server measured on these machines (~23k req/s over TLS), but it
does not tell the application who the client is: the ASGI TLS extension is still an open pull
request upstream. This module subclasses uvicorn's httptools protocol to read the peer
certificate once per connection, when the TLS handshake has completed, and stamp the
resulting `Identity` into every request scope on that connection (keep-alive included).

The TLS context uses CERT_OPTIONAL with the cluster CA as the only trust anchor: a client
without a certificate still connects (the app sees identity None and answers 401, as
Kubernetes does for anonymous requests), a certificate from any other CA fails the handshake
inside OpenSSL, and a certificate that passes is the one we read.

uvicorn is driven as a library: signal handling, logging configuration and lifespan stay with
the daemon that calls `serve_tcp`, because the same app is served by the HTTP/3 listener too.

WebSocket upgrades (interactive exec) are handed by the HTTP protocol to uvicorn's wsproto
protocol on the same TLS transport; `IdentityWSProtocol` reads the certificate from that
transport, so a WebSocket scope carries the same identity as a request would.

Two things may change while the listener serves, both through its `ServingTLS`:

- the serving certificate (`reload`): it is loaded into the live SSLContext, which affects
  handshakes from then on only (OpenSSL copies the certificate into each connection when the
  connection is made), so connections already open, and the watches on them, carry on with the
  certificate they were opened with. The new pair is first loaded into a scratch context: a
  broken pair raises and the live context is untouched (loading it there directly could leave
  it with a certificate and no matching key, failing every handshake);
- the revocation of client certificates (`close_revoked`): the listener keeps its open
  connections by the serial of their client certificate (`ConnectionsBySerial`) and aborts
  those of a revoked serial, which ends their watches, log streams and exec sessions. New
  requests of a revoked certificate are refused by the app (401), not here, so its holder
  reads why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
from collections.abc import Iterable, Iterator
from typing import Any, cast

import uvicorn
from cryptography import x509
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.wsproto_impl import WSProtocol
from wsproto.events import Request as WebSocketRequest

from hypermesh.pki.identity import Identity
from hypermesh.transport import sockets
from hypermesh.transport.asgi import (
    DISCONNECTED_SCOPE_KEY,
    IDENTITY_SCOPE_KEY,
    TLS_VERSIONS,
    ASGIApp,
    identity_or_none,
    tls_extension,
)

PathLike = str | os.PathLike[str]
_WEBSOCKET_LOG = logging.getLogger("hypermesh.transport.websocket")
_WEBSOCKET_LOG.setLevel(logging.WARNING)


def server_ssl_context(certfile: PathLike, keyfile: PathLike, cafile: PathLike) -> ssl.SSLContext:
    """TLS >= 1.2 server context that asks for (but does not require) a cluster client cert."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile, keyfile)
    context.load_verify_locations(cafile)
    context.verify_mode = ssl.CERT_OPTIONAL
    context.set_alpn_protocols(["http/1.1"])
    return context


class ConnectionsBySerial:
    """The open connections of a listener, by the serial number of their client certificate."""

    def __init__(self) -> None:
        self._by_serial: dict[int, set[asyncio.BaseTransport]] = {}

    def __len__(self) -> int:
        return sum(len(held) for held in self._by_serial.values())

    def add(self, identity: Identity | None, transport: asyncio.BaseTransport) -> None:
        if identity is not None and identity.serial is not None:
            self._by_serial.setdefault(identity.serial, set()).add(transport)

    def discard(self, identity: Identity | None, transport: asyncio.BaseTransport) -> None:
        if identity is None or identity.serial is None:
            return
        held = self._by_serial.get(identity.serial)
        if held is not None:
            held.discard(transport)
            if not held:
                del self._by_serial[identity.serial]

    def close(self, serials: Iterable[int]) -> int:
        """Abort every connection of these serials; how many there were."""
        closed = 0
        for serial in serials:
            for transport in self._by_serial.pop(serial, set()):
                # Abort, not close: a watch would otherwise keep the connection half-open
                # while its answer drains, and the certificate is no longer to be served.
                cast(asyncio.Transport, transport).abort()
                closed += 1
        return closed


def _read_peer(transport: asyncio.BaseTransport) -> tuple[Identity | None, dict[str, Any] | None]:
    """The verified identity and the ASGI TLS extension of a TLS connection."""
    ssl_object: ssl.SSLObject | None = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None, None
    der = ssl_object.getpeercert(binary_form=True)
    cert = x509.load_der_x509_certificate(der) if der else None
    return identity_or_none(cert), tls_extension(cert, TLS_VERSIONS.get(ssl_object.version() or ""))


class IdentityHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, plus the verified client identity in every scope."""

    _identity: Identity | None = None
    _tls: dict[str, Any] | None = None
    # Set on the subclass a listener makes (`bound_protocols`): where its connections are kept.
    tracked_by: ConnectionsBySerial | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # With an SSL transport this runs after the handshake, so OpenSSL has already
        # verified the chain against the cluster CA; what is left is reading the names.
        self._identity, self._tls = _read_peer(transport)
        if self.tracked_by is not None:
            self.tracked_by.add(self._identity, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.tracked_by is not None:
            self.tracked_by.discard(self._identity, self.transport)
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        scope: Any = self.scope
        scope[IDENTITY_SCOPE_KEY] = self._identity
        if self._tls is not None:
            scope["extensions"] = {"tls": self._tls}


class IdentityWSProtocol(WSProtocol):
    """uvicorn's wsproto protocol, plus the verified client identity and a disconnect event in
    the scope."""

    _identity: Identity | None = None
    _tls: dict[str, Any] | None = None
    tracked_by: ConnectionsBySerial | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        # uvicorn logs every WebSocket's path and query at INFO whatever `access_log` says, and
        # an exec's query is the command line, which can hold secrets: errors only.
        self.logger = _WEBSOCKET_LOG
        super().connection_made(transport)
        self._disconnected = asyncio.Event()
        # The TLS handshake happened before the upgrade request: the certificate is there.
        self._identity, self._tls = _read_peer(transport)
        if self.tracked_by is not None:
            self.tracked_by.add(self._identity, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disconnected.set()
        if self.tracked_by is not None:
            self.tracked_by.discard(self._identity, self.transport)
        super().connection_lost(exc)

    def handle_connect(self, event: WebSocketRequest) -> None:
        super().handle_connect(event)
        # The application task this created has not run yet (a task starts at the loop's next
        # turn), so it sees the scope complete.
        scope: Any = self.scope
        scope[IDENTITY_SCOPE_KEY] = self._identity
        scope[DISCONNECTED_SCOPE_KEY] = self._disconnected
        if self._tls is not None:
            scope["extensions"] = {**scope.get("extensions", {}), "tls": self._tls}


def bound_protocols(
    connections: ConnectionsBySerial,
) -> tuple[type[IdentityHttpToolsProtocol], type[IdentityWSProtocol]]:
    """The HTTP and WebSocket protocols of one listener, keeping its connections by serial."""
    http = type("IdentityHttpToolsProtocol", (IdentityHttpToolsProtocol,), {"tracked_by": connections})
    ws = type("IdentityWSProtocol", (IdentityWSProtocol,), {"tracked_by": connections})
    return http, ws


class ServingTLS:
    """The TLS side of a TCP listener that may change while it serves: the serving certificate
    new handshakes present, and the connections open, by client certificate serial."""

    def __init__(self, certfile: PathLike, keyfile: PathLike, cafile: PathLike) -> None:
        self.context = server_ssl_context(certfile, keyfile, cafile)
        self.connections = ConnectionsBySerial()

    def reload(self, certfile: PathLike, keyfile: PathLike) -> None:
        """Present this certificate in every handshake from now on; open connections keep
        theirs. Raises ssl.SSLError or OSError (and changes nothing) for a broken pair."""
        scratch = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        scratch.load_cert_chain(certfile, keyfile)
        self.context.load_cert_chain(certfile, keyfile)

    def close_revoked(self, serials: Iterable[int]) -> int:
        """Abort the open connections of these client certificate serials; how many."""
        return self.connections.close(serials)


class _LibraryServer(uvicorn.Server):
    """uvicorn.Server that leaves signals to its caller and reports when it listens."""

    def __init__(self, config: uvicorn.Config, ready: asyncio.Event | None) -> None:
        super().__init__(config)
        self._ready = ready

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The daemon owns SIGINT/SIGTERM and stops us through the shutdown event.
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and self._ready is not None:
            self._ready.set()


async def serve_tcp(
    app: ASGIApp,
    *,
    host: str,
    port: int,
    certfile: PathLike | None = None,
    keyfile: PathLike | None = None,
    cafile: PathLike | None = None,
    tls: ServingTLS | None = None,
    ready: asyncio.Event | None = None,
    shutdown: asyncio.Event | None = None,
    graceful_timeout: float = 5.0,
    keep_alive_timeout: float = 60.0,
    backlog: int = 2048,
) -> None:
    """Serve `app` over HTTPS/1.1 on `host:port` until `shutdown` is set (or cancellation).

    On shutdown the listener closes, idle connections close at once, and requests still
    running (watch streams) get `graceful_timeout` seconds before they are cancelled and
    their connections dropped.

    Give `tls` to change the serving certificate or close revoked clients' connections while
    serving; otherwise `certfile`, `keyfile` and `cafile` make one.
    """
    if tls is None:
        if certfile is None or keyfile is None or cafile is None:
            raise TypeError("serve_tcp() needs tls=, or certfile=, keyfile= and cafile=")
        tls = ServingTLS(certfile, keyfile, cafile)
    context = tls.context
    http_protocol, ws_protocol = bound_protocols(tls.connections)
    sock = sockets.tcp_listener(host, port, backlog)
    config = uvicorn.Config(
        app,
        http=http_protocol,
        ws=ws_protocol,
        # Pings keep idle sessions' connections alive, but with no deadline for the pong: a peer
        # reads (and answers) only as fast as its own reader, and a slow reader is no dead one.
        # A vanished peer still ends the session, when TCP gives up on the unanswered pings.
        ws_ping_timeout=None,
        lifespan="off",
        interface="asgi3",
        ssl_context_factory=lambda _config, _default: context,
        # No access log: it costs a measurable share of the request rate and would write
        # request paths (which can carry secrets' names) to the log.
        access_log=False,
        log_config=None,
        server_header=False,
        date_header=True,
        proxy_headers=False,
        timeout_keep_alive=keep_alive_timeout,  # type: ignore[arg-type]
        timeout_graceful_shutdown=graceful_timeout,  # type: ignore[arg-type]
        backlog=backlog,
    )
    server = _LibraryServer(config, ready)

    async def stop_on_shutdown() -> None:
        assert shutdown is not None
        await shutdown.wait()
        server.should_exit = True

    watcher = asyncio.create_task(stop_on_shutdown()) if shutdown is not None else None
    try:
        await server.serve(sockets=[sock])
    finally:
        if watcher is not None:
            watcher.cancel()
        # After a normal shutdown this finds nothing left; after a cancellation uvicorn's own
        # shutdown never ran, so the listener and every connection are closed here.
        for listener in getattr(server, "servers", []):
            listener.close()
        for connection in list(server.server_state.connections):
            transport = getattr(connection, "transport", None)
            if transport is not None:
                transport.abort()
        for task in list(server.server_state.tasks):
            task.cancel()
        sock.close()
