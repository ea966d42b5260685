"""A small asyncio HTTP/3 client (aioquic) for tests and the CLI.

One `H3Client` is one QUIC connection; requests are multiplexed on it as streams, so a CLI
that keeps a client open pays the ~8 ms handshake once. aioquic's own `connect()` can wait
forever (for instance when a server rejects a resumed session), so every wait here has a
timeout, and `connect()` returns only once the server has confirmed the handshake: a server
that rejects our certificate closes the connection instead of confirming, and that shows up
as an `H3ConnectionError` from `connect()` rather than from some later request.

Session resumption: pass `on_session_ticket` to collect the tickets a server issues and
`session_ticket` to offer one on a later connection; `session_resumed` then says whether the
server took it. The HyperMesh listener issues tickets only to clients whose certificate it
verified, and a resumed connection keeps that certificate's identity (see
`hypermesh.transport.h3`): the ticket is as good as the certificate's key, so keep it as
secret. Each ticket resumes once; the resumed connection brings its successor (through
`on_session_ticket` again), so keep the newest.

0-RTT: `connect(early_data=True)` with a ticket that allows early data returns as soon as the
first flight is sent. GET and HEAD requests without a body made before the handshake completes
then travel in that flight (a resumed `GET /version` costs one round trip instead of two);
every other request waits for the server to confirm the handshake, as after a plain
`connect()`. Early requests are repeated, on a new stream, when the server refuses the early
data (an unknown or used ticket: a full handshake) or answers 425 Too Early (RFC 8470), so
callers only ever see the real answer. A handshake that fails or stalls then shows up in the
first request, not in `connect()`, and still within `connect_timeout`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from types import TracebackType
from typing import Any, Self

from aioquic.h3.connection import H3_ALPN, ErrorCode, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.tls import Epoch, Group, SessionTicket

PathLike = str | os.PathLike[str]
Headers = list[tuple[bytes, bytes]]

USER_AGENT = b"hypermesh-h3client"
# Datagrams drained per wake-up before other callbacks (timers, the caller's tasks) get a turn.
_READ_BATCH = 64
_MAX_DATAGRAM = 65536
# Requests that may go as 0-RTT early data: reads whose replay changes nothing (RFC 8470).
EARLY_METHODS = frozenset(("GET", "HEAD"))
TOO_EARLY = 425
# How long `close` waits for an unconfirmed handshake to bring the next session ticket.
_TICKET_GRACE = 0.25
# The key exchange groups we offer. aioquic offers four (P-256, P-384, X25519, X448) and makes
# a key for each in every ClientHello, ~0.6 ms of a new connection; a HyperMesh server (any
# TLS 1.3 stack) takes X25519, and P-256 stays as a fallback.
_KEY_SHARE_GROUPS = (Group.X25519, Group.SECP256R1)


class H3Error(Exception):
    """Base class of every error the HTTP/3 client raises."""


class H3ConnectionError(H3Error):
    """The connection could not be established, or was closed (by the peer or a timeout)."""

    def __init__(self, message: str, *, error_code: int | None = None) -> None:
        super().__init__(message)
        self.error_code = error_code


class H3StreamReset(H3Error):
    """The server abandoned a response midway (RESET_STREAM)."""

    def __init__(self, stream_id: int, error_code: int) -> None:
        super().__init__(f"stream {stream_id} reset by the server (error 0x{error_code:x})")
        self.error_code = error_code


class H3StatusError(H3Error):
    """`stream()` got an error status instead of a stream; the body explains why."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}: {body[:200]!r}")
        self.status = status
        self.body = body


class _EarlyDataRejected(H3Error):
    """The server did not take the 0-RTT data this request went in: send it again."""


class _Exchange:
    """Client-side state of one request stream, filled in by the connection's events."""

    __slots__ = ("chunks", "early", "ended", "error", "headers", "status", "stream_id", "waiter")

    def __init__(self, stream_id: int, early: bool = False) -> None:
        self.stream_id = stream_id
        # Sent as 0-RTT early data (before the handshake completed).
        self.early = early
        self.status: int | None = None
        self.headers: Headers = []
        self.chunks: deque[bytes] = deque()
        self.ended = False
        self.error: H3Error | None = None
        self.waiter: asyncio.Future[None] | None = None

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def fail(self, error: H3Error) -> None:
        if not self.ended and self.error is None:
            self.error = error
            self.wake()

    async def wait(self) -> None:
        self.waiter = asyncio.get_running_loop().create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None


class _H3ClientProtocol:
    """One QUIC connection on a UDP socket of its own; routes HTTP/3 events to exchanges.

    aioquic's `QuicConnectionProtocol` rides on an asyncio datagram transport, which reads one
    datagram per loop iteration and recomputes what to send after every one of them: most of
    the client's CPU time while a large list arrives. Reading the socket directly lets one
    wake-up drain a whole burst of datagrams and answer it with a single `transmit()`.
    """

    def __init__(
        self, quic: QuicConnection, sock: socket.socket, loop: asyncio.AbstractEventLoop
    ) -> None:
        self._quic = quic
        self._sock = sock
        self._loop = loop
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._transmit_handle: asyncio.Handle | None = None
        self._pings: dict[int, asyncio.Future[None]] = {}
        self.h3 = H3Connection(quic)
        self.exchanges: dict[int, _Exchange] = {}
        self.closed_error: H3ConnectionError | None = None
        self.confirmed: asyncio.Future[None] = loop.create_future()
        # Set when our side of the handshake completes (the server's Finished checked out).
        self.handshake_complete = False
        self.early_data_accepted: bool | None = None
        loop.add_reader(sock.fileno(), self._read_ready)

    @property
    def zero_rtt(self) -> bool:
        """Whether what we send now goes as 0-RTT early data (a ticket allowed it, and the
        handshake has not completed yet)."""
        return self._quic._cryptos[Epoch.ZERO_RTT].send.is_valid()

    def connect(self, address: tuple[Any, ...], *, defer: bool = False) -> None:
        """Start the handshake; `confirmed` resolves once the server has accepted us.

        With `defer`, the first flight leaves at the loop's next turn rather than now, so a
        request made right after (0-RTT) shares its datagram: the server then reads the
        ClientHello and the request in one go, and answers both in its first flight.
        """
        self._quic.connect(address, now=self._loop.time())
        if defer:
            self._transmit_handle = self._loop.call_soon(self.transmit)
        else:
            self.transmit()

    async def ping(self) -> None:
        """Ping the server and wait for its acknowledgement."""
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._pings[id(waiter)] = waiter
        self._quic.send_ping(id(waiter))
        self.transmit()
        await asyncio.shield(waiter)

    def transmit(self) -> None:
        """Send what aioquic has queued and re-arm its timer."""
        if self._transmit_handle is not None:
            self._transmit_handle.cancel()
            self._transmit_handle = None
        for data, address in self._quic.datagrams_to_send(now=self._loop.time()):
            # A full socket buffer or an unreachable network is packet loss to QUIC, which
            # recovers (or times out) on its own, as it would behind an asyncio transport.
            with contextlib.suppress(OSError):
                self._sock.sendto(data, address)
        timer_at = self._quic.get_timer()
        if self._timer is not None and self._timer_at != timer_at:
            self._timer.cancel()
            self._timer = None
        if self._timer is None and timer_at is not None:
            self._timer = self._loop.call_at(timer_at, self._handle_timer)
        self._timer_at = timer_at

    def _handle_timer(self) -> None:
        now = max(self._timer_at or 0.0, self._loop.time())
        self._timer = self._timer_at = None
        self._quic.handle_timer(now=now)
        self._process_events()
        self.transmit()

    def _read_ready(self) -> None:
        for _ in range(_READ_BATCH):
            try:
                data, address = self._sock.recvfrom(_MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                # An ICMP error surfacing on the socket; QUIC's own timers judge the connection.
                break
            self._quic.receive_datagram(data, address, now=self._loop.time())
        self._process_events()
        # The server confirms the handshake (HANDSHAKE_DONE) only after it has accepted our
        # certificate; aioquic raises no event for it, so look after every read.
        if not self.confirmed.done() and self._quic._handshake_confirmed:
            self.confirmed.set_result(None)
        # Answer (acknowledgements, our Finished) at the loop's next turn rather than now: the
        # tasks that what arrived woke up (a caller waiting for its response) run first, which
        # takes encrypting and sending our answer (~0.5 ms) off a 0-RTT request's latency.
        if self._transmit_handle is None:
            self._transmit_handle = self._loop.call_soon(self.transmit)

    def _process_events(self) -> None:
        event = self._quic.next_event()
        while event is not None:
            self._quic_event_received(event)
            event = self._quic.next_event()

    def _quic_event_received(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.ConnectionTerminated):
            reason = event.reason_phrase or "no reason given"
            error = H3ConnectionError(
                f"connection closed (error 0x{event.error_code:x}): {reason}",
                error_code=event.error_code,
            )
            self._terminated(error)
            return
        if isinstance(event, events.PingAcknowledged):
            waiter = self._pings.pop(event.uid, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            return
        if isinstance(event, events.HandshakeCompleted):
            self.handshake_complete = True
            self.early_data_accepted = event.early_data_accepted
            if not event.early_data_accepted:
                # The server dropped our 0-RTT packets unread; their requests go again.
                for exchange in list(self.exchanges.values()):
                    if exchange.early and exchange.status is None:
                        exchange.fail(_EarlyDataRejected("the server refused 0-RTT data"))
            return
        for h3_event in self.h3.handle_event(event):
            if isinstance(h3_event, HeadersReceived | DataReceived):
                self._http_event_received(h3_event)
        if isinstance(event, events.StreamReset):
            reset = self.exchanges.pop(event.stream_id, None)
            if reset is not None:
                reset.fail(H3StreamReset(event.stream_id, event.error_code))

    def _terminated(self, error: H3ConnectionError) -> None:
        if self.closed_error is not None:
            return
        self.closed_error = error
        for exchange in self.exchanges.values():
            exchange.fail(error)
        self.exchanges.clear()
        for waiter in self._pings.values():
            if not waiter.done():
                waiter.set_exception(ConnectionError(str(error)))
        self._pings.clear()
        if not self.confirmed.done():
            self.confirmed.set_exception(error)
            # Nobody may be waiting any more; do not let asyncio log it as never retrieved.
            self.confirmed.exception()

    def shutdown(self, error: H3ConnectionError | None = None) -> None:
        """Send CONNECTION_CLOSE now, fail what is still open (with `error`) and close the
        socket."""
        self._terminated(error or H3ConnectionError("connection closed by the client"))
        self._quic.close()
        self.transmit()
        # aioquic would wake up later only to end the closing period we skip.
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()

    def _http_event_received(self, event: HeadersReceived | DataReceived) -> None:
        exchange = self.exchanges.get(event.stream_id)
        if exchange is None:
            return
        if isinstance(event, HeadersReceived):
            # Only the first HEADERS frame is the response head; later ones are trailers.
            if exchange.status is None:
                for name, value in event.headers:
                    if name == b":status":
                        exchange.status = int(value)
                    else:
                        exchange.headers.append((name, value))
        elif event.data:
            exchange.chunks.append(event.data)
        if event.stream_ended:
            exchange.ended = True
            del self.exchanges[event.stream_id]
        exchange.wake()


class H3Response:
    """A response whose headers have arrived; iterate it for body chunks as they come."""

    def __init__(self, client: H3Client, exchange: _Exchange) -> None:
        self._client = client
        self._exchange = exchange
        assert exchange.status is not None
        self.status: int = exchange.status
        self.headers: Headers = exchange.headers

    def header(self, name: bytes) -> bytes | None:
        """The first value of header `name` (lowercase), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def __aiter__(self) -> H3Response:
        return self

    async def __anext__(self) -> bytes:
        exchange = self._exchange
        while True:
            if exchange.chunks:
                return exchange.chunks.popleft()
            if exchange.error is not None:
                raise exchange.error
            if exchange.ended:
                raise StopAsyncIteration
            await exchange.wait()

    async def read(self) -> bytes:
        """The rest of the body, once the server has ended the stream."""
        return b"".join([chunk async for chunk in self])

    async def aclose(self) -> None:
        """Abandon the response; the server sees the stream reset (http.disconnect)."""
        if not self._exchange.ended and self._exchange.error is None:
            self._client._cancel(self._exchange)


class H3Client:
    """One HTTP/3 connection to a HyperMesh API server, optionally with a client certificate."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        cafile: PathLike,
        certfile: PathLike | None = None,
        keyfile: PathLike | None = None,
        server_name: str | None = None,
        connect_timeout: float = 5.0,
        idle_timeout: float = 60.0,
        keepalive_interval: float | None = 15.0,
        session_ticket: SessionTicket | None = None,
        on_session_ticket: Callable[[SessionTicket], None] | None = None,
    ) -> None:
        self._host = host
        self._port = port
        self._cafile = cafile
        self._certfile = certfile
        self._keyfile = keyfile
        self._server_name = server_name or host
        name = self._server_name
        self._authority = (f"[{name}]" if ":" in name else name).encode("ascii") + b":%d" % port
        self._connect_timeout = connect_timeout
        self._idle_timeout = idle_timeout
        self._keepalive_interval = keepalive_interval
        self._session_ticket = session_ticket
        self._on_session_ticket = on_session_ticket
        self._protocol: _H3ClientProtocol | None = None
        self._keepalive: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None

    # Connection lifecycle

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _configuration(self) -> QuicConfiguration:
        configuration = QuicConfiguration(
            is_client=True,
            alpn_protocols=H3_ALPN,
            server_name=self._server_name,
            idle_timeout=self._idle_timeout,
            # Large windows let a big list response stream without waiting on credit.
            max_data=32 << 20,
            max_stream_data=8 << 20,
        )
        # Read now: the server's certificate is checked later, maybe after `connect()` has
        # returned (0-RTT), and callers may delete the file as soon as it has (they do when
        # it held a kubeconfig's embedded CA).
        with open(self._cafile, "rb") as cafile:
            configuration.load_verify_locations(cadata=cafile.read())
        if self._certfile is not None:
            configuration.load_cert_chain(
                os.fspath(self._certfile),
                os.fspath(self._keyfile) if self._keyfile is not None else None,
            )
        if self._session_ticket is not None:
            configuration.session_ticket = self._session_ticket
        return configuration

    async def connect(self, *, early_data: bool = False) -> None:
        """Open the connection; raise H3ConnectionError if it fails or takes too long.

        With `early_data` and a session ticket that allows 0-RTT, return as soon as the first
        flight is sent: safe requests then go as early data, and a failed handshake shows up
        in the requests (within `connect_timeout` all the same).
        """
        if self._protocol is not None:
            raise RuntimeError("H3Client is already connected")
        loop = asyncio.get_running_loop()
        family, address = await _resolve(loop, self._host, self._port)
        quic = QuicConnection(
            configuration=self._configuration(),
            session_ticket_handler=self._on_session_ticket,
        )
        _offer_fewer_key_shares(quic)
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.bind(("::", 0, 0, 0) if family == socket.AF_INET6 else ("0.0.0.0", 0))
            sock.setblocking(False)
            protocol = _H3ClientProtocol(quic, sock, loop)
        except BaseException:
            sock.close()
            raise
        self._protocol = protocol
        try:
            protocol.connect(address, defer=early_data)
            if early_data and protocol.zero_rtt:
                self._watchdog = loop.create_task(self._await_confirmation(protocol))
            else:
                async with asyncio.timeout(self._connect_timeout):
                    await protocol.confirmed
        except BaseException as exc:
            error = protocol.closed_error
            await self._teardown()
            if isinstance(exc, TimeoutError):
                raise self._timed_out() from exc
            if isinstance(exc, ConnectionError | H3Error):
                raise error or H3ConnectionError(f"HTTP/3 connect failed: {exc!r}") from exc
            raise
        if self._keepalive_interval:
            self._keepalive = loop.create_task(self._keep_alive(self._keepalive_interval))

    def _timed_out(self) -> H3ConnectionError:
        return H3ConnectionError(f"HTTP/3 connect to {self._host}:{self._port} timed out")

    async def _await_confirmation(self, protocol: _H3ClientProtocol) -> None:
        # An early connect returned before the handshake; hold it to the same deadline.
        try:
            async with asyncio.timeout(self._connect_timeout):
                await asyncio.shield(protocol.confirmed)
        except TimeoutError:
            if protocol is self._protocol:
                protocol.shutdown(self._timed_out())
        except (ConnectionError, H3Error):
            pass  # closed: the requests have the error

    async def _keep_alive(self, interval: float) -> None:
        # QUIC closes a connection silent for idle_timeout; a quiet watch must survive that.
        protocol = self._protocol
        while protocol is not None and protocol.closed_error is None:
            await asyncio.sleep(interval)
            with contextlib.suppress(ConnectionError, TimeoutError):
                async with asyncio.timeout(interval):
                    await protocol.ping()

    async def close(self) -> None:
        """Close the connection (idempotent); open streams fail with H3ConnectionError.

        A connection that resumed with 0-RTT and was answered before its handshake completed
        would otherwise close before the server's successor ticket arrives (it comes with the
        handshake's confirmation, one round trip later), and the next connection could not
        resume: wait for that, briefly, when someone collects tickets.
        """
        protocol = self._protocol
        if (
            protocol is not None
            and self._on_session_ticket is not None
            and protocol.closed_error is None
            and not protocol.confirmed.done()
        ):
            with contextlib.suppress(TimeoutError, ConnectionError, H3Error):
                async with asyncio.timeout(min(self._connect_timeout, _TICKET_GRACE)):
                    await asyncio.shield(protocol.confirmed)
        await self._teardown()

    async def _teardown(self) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        protocol, self._protocol = self._protocol, None
        if protocol is None:
            return
        # Send CONNECTION_CLOSE and drop the socket at once. RFC 9000 lets the closing side
        # linger (3 PTOs) only to repeat the close should the peer keep sending; waiting that
        # out delayed every CLI process by ~0.1 s, and a peer that missed the close merely
        # times the connection out. `sendto` has handed the close to the kernel by then.
        protocol.shutdown()

    @property
    def confirmed(self) -> bool:
        """True once the server has confirmed the handshake (it accepted us)."""
        if self._protocol is None:
            return False
        confirmed = self._protocol.confirmed
        return confirmed.done() and not confirmed.cancelled() and confirmed.exception() is None

    @property
    def session_resumed(self) -> bool:
        """True if this connection resumed a TLS session from a ticket."""
        return self._connected().session_resumed

    def _connected(self) -> Any:
        if self._protocol is None:
            raise H3ConnectionError("H3Client is not connected")
        if self._protocol.closed_error is not None:
            raise self._protocol.closed_error
        return self._protocol._quic.tls

    # Requests

    @property
    def early_data_accepted(self) -> bool | None:
        """Whether the server took our 0-RTT data (False when we sent none); None until the
        handshake completes."""
        self._connected()
        assert self._protocol is not None
        return self._protocol.early_data_accepted

    async def open(
        self,
        method: str,
        path: str,
        *,
        headers: Sequence[tuple[bytes, bytes]] = (),
        body: bytes = b"",
    ) -> H3Response:
        """Send a request and wait for the response headers (not the body)."""
        self._connected()
        protocol = self._protocol
        assert protocol is not None
        if not protocol.confirmed.done():
            # Only an early connect gets here before confirmation (see `connect`).
            if method not in EARLY_METHODS or body or not protocol.zero_rtt:
                await self._confirmation(protocol)
        exchange = await self._exchange(protocol, method, path, headers, body)
        if exchange.early and (
            isinstance(exchange.error, _EarlyDataRejected) or exchange.status == TOO_EARLY
        ):
            # The server would not serve this from early data: ask again once it knows us.
            self._cancel(exchange)
            await self._confirmation(protocol)
            exchange = await self._exchange(protocol, method, path, headers, body)
        if exchange.error is not None:
            raise exchange.error
        return H3Response(self, exchange)

    async def _confirmation(self, protocol: _H3ClientProtocol) -> None:
        try:
            await asyncio.shield(protocol.confirmed)
        except ConnectionError as exc:
            raise protocol.closed_error or H3ConnectionError(str(exc)) from exc

    async def _exchange(
        self,
        protocol: _H3ClientProtocol,
        method: str,
        path: str,
        headers: Sequence[tuple[bytes, bytes]],
        body: bytes,
    ) -> _Exchange:
        """Send one request; return once its response headers came, or its early data was
        refused (`exchange.error`), for `open` to judge."""
        if protocol.closed_error is not None:
            raise protocol.closed_error
        stream_id = protocol._quic.get_next_available_stream_id()
        exchange = _Exchange(stream_id, early=protocol.zero_rtt)
        protocol.exchanges[stream_id] = exchange
        request_headers: Headers = [
            (b":method", method.encode("ascii")),
            (b":scheme", b"https"),
            (b":authority", self._authority),
            (b":path", path.encode("ascii")),
            (b"user-agent", USER_AGENT),
        ]
        if body:
            request_headers.append((b"content-length", str(len(body)).encode("ascii")))
        request_headers.extend((name.lower(), value) for name, value in headers)
        protocol.h3.send_headers(stream_id, request_headers, end_stream=not body)
        if body:
            protocol.h3.send_data(stream_id, body, end_stream=True)
        protocol.transmit()
        try:
            while exchange.status is None:
                if isinstance(exchange.error, _EarlyDataRejected):
                    return exchange
                if exchange.error is not None:
                    raise exchange.error
                if exchange.ended:
                    raise H3Error(f"stream {stream_id} ended without response headers")
                await exchange.wait()
        except BaseException:
            self._cancel(exchange)
            raise
        return exchange

    async def request(
        self,
        method: str,
        path: str,
        *,
        headers: Sequence[tuple[bytes, bytes]] = (),
        body: bytes = b"",
        timeout: float | None = 30.0,
    ) -> tuple[int, Headers, bytes]:
        """Send a request and return `(status, headers, body)` once the response is complete."""
        async with asyncio.timeout(timeout):
            response = await self.open(method, path, headers=headers, body=body)
            try:
                data = await response.read()
            except BaseException:
                await response.aclose()
                raise
        return response.status, response.headers, data

    async def stream(
        self,
        method: str,
        path: str,
        *,
        headers: Sequence[tuple[bytes, bytes]] = (),
        body: bytes = b"",
    ) -> AsyncIterator[bytes]:
        """Yield body chunks as they arrive (for watches); raise H3StatusError on >= 400.

        Leaving early resets the stream; wrap the call in `contextlib.aclosing` so that
        happens at once rather than when the generator is garbage-collected.
        """
        response = await self.open(method, path, headers=headers, body=body)
        try:
            if response.status >= 400:
                raise H3StatusError(response.status, await response.read())
            async for chunk in response:
                yield chunk
        finally:
            await response.aclose()

    def _cancel(self, exchange: _Exchange) -> None:
        protocol = self._protocol
        exchange.fail(H3Error(f"stream {exchange.stream_id} cancelled by the client"))
        if protocol is None or protocol.closed_error is not None:
            return
        protocol.exchanges.pop(exchange.stream_id, None)
        with contextlib.suppress(ValueError, AssertionError):
            protocol._quic.reset_stream(exchange.stream_id, ErrorCode.H3_REQUEST_CANCELLED)
            protocol._quic.stop_stream(exchange.stream_id, ErrorCode.H3_REQUEST_CANCELLED)
        protocol.transmit()


def _offer_fewer_key_shares(quic: QuicConnection) -> None:
    # aioquic builds its TLS context on connect and has no option for the groups it offers.
    initialize = quic._initialize

    def initialize_hooked(peer_cid: bytes) -> None:
        initialize(peer_cid)
        quic.tls._supported_groups = list(_KEY_SHARE_GROUPS)

    quic._initialize = initialize_hooked  # type: ignore[method-assign]


async def _resolve(
    loop: asyncio.AbstractEventLoop, host: str, port: int
) -> tuple[socket.AddressFamily, tuple[Any, ...]]:
    """The socket family and address of `host`; an IP literal needs no resolver thread."""
    try:
        socket.inet_pton(socket.AF_INET, host)
        return socket.AF_INET, (host, port)
    except OSError:
        pass
    try:
        socket.inet_pton(socket.AF_INET6, host)
        return socket.AF_INET6, (host, port, 0, 0)
    except OSError:
        pass
    # A name (or a scoped IPv6 address): the resolver may block, so asyncio runs it in a thread.
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    family, _, _, _, address = infos[0]
    return family, address
