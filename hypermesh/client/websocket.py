"""WebSocket client connections (RFC 6455) for interactive exec, over wsproto.

Two users, two I/O styles, one protocol engine:

- `WebSocket` is for `nexus exec -it`: a blocking TLS handshake, then a non-blocking socket the
  CLI's own `select` loop drives (terminal input, resize signals and the socket in one thread, so
  no two threads ever touch one TLS connection);
- `AsyncWebSocket` is for the API server, which relays a user's session to the node agent over
  asyncio streams.

wsproto is sans-IO: it turns events into bytes and bytes into events, and these classes only move
the bytes. Both answer pings themselves (the servers here are uvicorn, which drops a peer that
does not answer within 20 s) and reassemble fragmented messages, up to `MAX_MESSAGE` bytes:
every message of the remote command protocol starts with its channel byte, so a fragment cannot
be passed on alone. Nothing here knows about channels (see `remotecommand`).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from hypermesh.client.config import ClusterConfig
from hypermesh.client.errors import ApiError, ClientError

# uvicorn's own limit for a received message (`ws_max_size`).
MAX_MESSAGE = 16 * 1024 * 1024
# One TLS record's worth: a write that does not fit is retried with the same bytes.
_WRITE_CHUNK = 16 * 1024
_READ_CHUNK = 64 * 1024
NORMAL_CLOSURE = 1000
GOING_AWAY = 1001
INTERNAL_ERROR = 1011


class Rejected(Exception):
    """The server answered the upgrade with an HTTP status instead of switching protocols."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"the WebSocket upgrade was refused with HTTP {status}")
        self.status = status
        self.body = body


@dataclass(frozen=True)
class Closed:
    """The peer closed the WebSocket (code 1005 when it gave none)."""

    code: int
    reason: str


class _Engine:
    """wsproto plus message reassembly and automatic pongs, shared by both connection kinds."""

    def __init__(self) -> None:
        self.conn = WSConnection(ConnectionType.CLIENT)
        self.subprotocol: str | None = None
        self._partial = bytearray()
        self._status = 0
        self._body = bytearray()

    def request(self, *, host: str, target: str, subprotocols: Sequence[str], headers: Sequence[tuple[str, str]]) -> bytes:
        return self.conn.send(
            Request(
                host=host,
                target=target,
                subprotocols=list(subprotocols),
                extra_headers=[(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers],
            )
        )

    def handshake_events(self, data: bytes | None) -> bool:
        """Feed handshake bytes (None: the peer hung up); True once accepted, Rejected if refused."""
        if data is None:
            raise ConnectionResetError("the server hung up during the WebSocket handshake")
        self.conn.receive_data(data)
        for event in self.conn.events():
            if isinstance(event, AcceptConnection):
                self.subprotocol = event.subprotocol
                return True
            if isinstance(event, RejectConnection):
                self._status = event.status_code
                if not event.has_body:
                    raise Rejected(self._status, b"")
            elif isinstance(event, RejectData):
                self._body += event.data
                if event.body_finished:
                    raise Rejected(self._status, bytes(self._body))
        return False

    def message(self, data: bytes) -> bytes:
        return self.conn.send(BytesMessage(data=data))

    def close(self, code: int, reason: str) -> bytes:
        if self.conn.state is not ConnectionState.OPEN:
            return b""
        return self.conn.send(CloseConnection(code=code, reason=reason))

    def events(self, data: bytes | None = b"") -> Iterator[bytes | Closed | Ping]:
        """Feed received bytes (None: the peer hung up; b"": nothing new, only what wsproto
        already holds, such as frames that came with the handshake's answer); yields whole
        messages, `Closed`, and Pings to answer."""
        if data is None and self.conn.state is ConnectionState.OPEN:
            # wsproto would report a close with code 1006; for the relay a connection that
            # broke and one that was closed are different endings.
            raise ConnectionResetError("the server hung up without closing the WebSocket")
        try:
            if data != b"":
                self.conn.receive_data(data)
        except (RemoteProtocolError, LocalProtocolError) as exc:
            raise ConnectionError(f"the WebSocket cannot go on: {exc}") from None
        for event in self.conn.events():
            if isinstance(event, BytesMessage | TextMessage):
                chunk = event.data.encode() if isinstance(event.data, str) else event.data
                if len(self._partial) + len(chunk) > MAX_MESSAGE:
                    raise ConnectionError(f"the server sent a message larger than {MAX_MESSAGE} bytes")
                self._partial += chunk
                if event.message_finished:
                    whole, self._partial = bytes(self._partial), bytearray()
                    yield whole
            elif isinstance(event, Ping):
                yield event
            elif isinstance(event, CloseConnection):
                yield Closed(event.code, event.reason or "")

    def answer(self, event: Ping) -> bytes:
        return self.conn.send(event.response())

    def answer_close(self) -> bytes:
        """The close frame answering the peer's (once it is owed)."""
        if self.conn.state is ConnectionState.REMOTE_CLOSING:
            return self.conn.send(CloseConnection(code=NORMAL_CLOSURE))
        return b""


# -- blocking handshake, then the caller's select loop (the CLI) ----------------------------


class WebSocket:
    """A client WebSocket whose socket is non-blocking after the handshake.

    The owner polls `fileno()` for reading (and for writing while `wants_write`), calls
    `read()` when readable and `flush()` when writable; `send()` only queues.
    """

    def __init__(self, sock: ssl.SSLSocket, engine: _Engine) -> None:
        self.sock = sock
        self.subprotocol = engine.subprotocol
        self._engine = engine
        self._outbox = bytearray()
        # Frames that came in the same read as the handshake's answer.
        self._backlog = self._collect(b"")
        sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    @property
    def wants_write(self) -> bool:
        """Bytes are queued for the socket."""
        return bool(self._outbox)

    @property
    def queued(self) -> int:
        """How many bytes wait for the socket (callers stop reading input past a limit)."""
        return len(self._outbox)

    @property
    def buffered(self) -> bool:
        """Bytes already read (by TLS or with the handshake) that `select` cannot see: call
        `read()` now."""
        return bool(self._backlog) or self.sock.pending() > 0

    def send(self, data: bytes) -> None:
        """Queue one binary message."""
        self._outbox += self._engine.message(data)

    def close(self, code: int = NORMAL_CLOSURE, reason: str = "") -> None:
        """Queue the close frame (if the connection is still open)."""
        self._outbox += self._engine.close(code, reason)

    def flush(self) -> None:
        """Write what the socket takes now."""
        while self._outbox:
            try:
                written = self.sock.send(self._outbox[:_WRITE_CHUNK])
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                return
            del self._outbox[:written]

    def read(self) -> list[bytes | Closed]:
        """Whole messages (and a `Closed` when the server closed) from what can be read now."""
        if self._backlog:
            received, self._backlog = self._backlog, []
            return received
        try:
            data: bytes | None = self.sock.recv(_READ_CHUNK) or None
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            return []
        except OSError as exc:
            raise ConnectionError(f"the connection to the server broke: {exc}") from None
        return self._collect(data)

    def _collect(self, data: bytes | None) -> list[bytes | Closed]:
        received: list[bytes | Closed] = []
        for item in self._engine.events(data):
            if isinstance(item, Ping):
                self._outbox += self._engine.answer(item)
            else:
                received.append(item)
        self._outbox += self._engine.answer_close()
        return received

    def shutdown(self) -> None:
        """Drop the connection."""
        with contextlib.suppress(OSError):
            self.sock.close()


def connect(
    config: ClusterConfig,
    path: str,
    query: Sequence[tuple[str, str]],
    *,
    subprotocols: Sequence[str],
    timeout: float,
    user_agent: str = "nexus/0.1",
) -> WebSocket:
    """Open a WebSocket to the API server of `config` (always over TCP: HTTP/3 has no upgrade).

    Raises ApiError with the server's Status when it refuses the upgrade, ClientError when it
    cannot be reached.
    """
    from urllib.parse import urlencode

    from hypermesh.client.tcp import TcpTransport, build_ssl_context
    from hypermesh.client.transports import Endpoint

    endpoint = Endpoint.from_config(config)
    translator = TcpTransport(endpoint, config, timeout=timeout)
    target = endpoint.prefix + path + ("?" + urlencode(list(query)) if query else "")
    context = build_ssl_context(config)
    engine = _Engine()
    try:
        raw = socket.create_connection((endpoint.host, endpoint.port), timeout=timeout)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock = context.wrap_socket(raw, server_hostname=endpoint.server_name)
    except OSError as exc:
        raise translator.translate(exc) from None
    try:
        name = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host
        host = name if endpoint.port == 443 else f"{name}:{endpoint.port}"
        sock.sendall(engine.request(host=host, target=target, subprotocols=subprotocols, headers=[("user-agent", user_agent)]))
        while not engine.handshake_events(sock.recv(_READ_CHUNK) or None):
            pass
    except Rejected as exc:
        sock.close()
        raise ApiError.from_response(exc.status, exc.body, url=config.server + target) from None
    except (OSError, RemoteProtocolError, LocalProtocolError) as exc:
        sock.close()
        if isinstance(exc, OSError):
            raise translator.translate(exc) from None
        raise ClientError(f"{config.server} answered the WebSocket upgrade wrongly: {exc}") from None
    return WebSocket(sock, engine)


# -- asyncio (the API server's relay to agents) -------------------------------------------


class AsyncWebSocket:
    """A client WebSocket over asyncio streams; `send` waits while the peer is slow to read."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._engine = _Engine()
        self._received: list[bytes | Closed] = []
        self.subprotocol: str | None = None

    async def handshake(
        self, *, host: str, target: str, subprotocols: Sequence[str], headers: Sequence[tuple[str, str]] = ()
    ) -> str | None:
        """Upgrade; returns the subprotocol the server chose. Raises Rejected with the server's
        answer when it refuses, ConnectionError when it hangs up."""
        self._writer.write(self._engine.request(host=host, target=target, subprotocols=subprotocols, headers=headers))
        await self._writer.drain()
        while not self._engine.handshake_events(await self._reader.read(_READ_CHUNK) or None):
            pass
        self.subprotocol = self._engine.subprotocol
        return self.subprotocol

    async def send(self, data: bytes) -> None:
        """Send one binary message, waiting until the socket has room for more."""
        self._writer.write(self._engine.message(data))
        await self._writer.drain()

    async def receive(self) -> bytes | None:
        """The next whole message; None once the server has closed the WebSocket. Raises
        ConnectionError when the connection breaks without a close."""
        # First what wsproto already holds (frames that came with the handshake's answer).
        data: bytes | None = b""
        while True:
            for item in self._engine.events(data):
                if isinstance(item, Ping):
                    self._writer.write(self._engine.answer(item))
                else:
                    self._received.append(item)
            if answer := self._engine.answer_close():
                self._writer.write(answer)
            if self._received:
                break
            data = await self._reader.read(_READ_CHUNK) or None
        item = self._received.pop(0)
        return item if isinstance(item, bytes) else None

    async def close(self, code: int = NORMAL_CLOSURE, reason: str = "") -> None:
        """Say goodbye (if still open) and close the connection."""
        with contextlib.suppress(OSError, LocalProtocolError, ConnectionError):
            if frame := self._engine.close(code, reason):
                self._writer.write(frame)
                await asyncio.wait_for(self._writer.drain(), 2.0)
        self.abort()

    def abort(self) -> None:
        """Drop the connection at once."""
        self._writer.close()
