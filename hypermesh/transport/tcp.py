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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
from collections.abc import Iterator
from typing import Any

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


class IdentityHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, plus the verified client identity in every scope."""

    _identity: Identity | None = None
    _tls: dict[str, Any] | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # With an SSL transport this runs after the handshake, so OpenSSL has already
        # verified the chain against the cluster CA; what is left is reading the names.
        ssl_object: ssl.SSLObject | None = transport.get_extra_info("ssl_object")
        if ssl_object is None:
            return
        der = ssl_object.getpeercert(binary_form=True)
        cert = x509.load_der_x509_certificate(der) if der else None
        self._identity = identity_or_none(cert)
        self._tls = tls_extension(cert, TLS_VERSIONS.get(ssl_object.version() or ""))

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

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        # uvicorn logs every WebSocket's path and query at INFO whatever `access_log` says, and
        # an exec's query is the command line, which can hold secrets: errors only.
        self.logger = _WEBSOCKET_LOG
        super().connection_made(transport)
        self._disconnected = asyncio.Event()
        # The TLS handshake happened before the upgrade request: the certificate is there.
        ssl_object: ssl.SSLObject | None = transport.get_extra_info("ssl_object")
        if ssl_object is None:
            return
        der = ssl_object.getpeercert(binary_form=True)
        cert = x509.load_der_x509_certificate(der) if der else None
        self._identity = identity_or_none(cert)
        self._tls = tls_extension(cert, TLS_VERSIONS.get(ssl_object.version() or ""))

    def connection_lost(self, exc: Exception | None) -> None:
        self._disconnected.set()
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
    certfile: PathLike,
    keyfile: PathLike,
    cafile: PathLike,
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
    """
    context = server_ssl_context(certfile, keyfile, cafile)
    sock = sockets.tcp_listener(host, port, backlog)
    config = uvicorn.Config(
        app,
        http=IdentityHttpToolsProtocol,
        ws=IdentityWSProtocol,
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
