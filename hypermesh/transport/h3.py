"""The HTTP/3 listener: the same ASGI app over QUIC (aioquic), with client certificates.

aioquic has no server-side mutual TLS: no public way to ask for a client certificate, and
when asked (through an internal flag) it checks only that the client holds the certificate's
key, never who signed it. Its session resumption does not mix with client certificates either:
a resumed TLS 1.3 session carries no certificate, yet with the flag set aioquic still waits for
one and fails the handshake (TLS unexpected_message, error 266). This listener therefore hooks
each connection's TLS context right after aioquic creates it:

1. it sets the internal flag (`tls.Context._request_client_certificate`), so a full handshake
   sends a CertificateRequest;
2. it verifies the client chain itself, with the cluster CA as the only trust anchor
   (`hypermesh.pki.verify`, the same checks OpenSSL makes for the TCP listener, plus the
   revocation check), as soon as the client's Finished message proves the handshake genuine; a
   connection whose certificate fails is closed with a TLS bad_certificate error (a revoked
   one with certificate_revoked) before any request on it reaches the app, and a client that
   sent no certificate is served with identity None (the app answers 401);
3. only then, and only when that verification passed, it sends a session ticket itself (in
   place of aioquic's, which would go to every client, anonymous or not, valid for a day).
   The ticket is 32 random bytes that mean nothing outside this process: the verified
   `Identity` (and certificate) it stands for stays in a bounded in-memory `SessionTicketStore`
   for the ticket's lifetime, one hour, or less when the certificate expires sooner;
4. when a client offers a ticket, the store is the `get_session_ticket_cb`: an unknown, expired,
   used, revoked, forged or foreign ticket (another server process, a restarted one) is simply
   not found, and the handshake is a full one, certificate request included. A known ticket
   whose PSK binder checks out resumes: aioquic already leaves the CertificateRequest out of a
   PSK handshake, and the hook then stops it from waiting for a certificate (state
   SERVER_EXPECT_FINISHED instead of SERVER_EXPECT_CERTIFICATE). The connection gets the
   ticket's Identity. Tickets are single-use: resuming consumes the ticket, and the resumed
   connection is issued a successor for the same identity that expires when the consumed one
   would have, so a session still lives at most one hour past its last full handshake.

0-RTT (early data). Tickets allow it, for reads only. A client resuming with a ticket may send
requests in its first flight, before the handshake completes; the listener accepts that early
data only on a resumption with a valid ticket of ours, and serves from it only GET and HEAD
requests without a body (RFC 8470's "safe" requests), as the ticket's identity, with an
`early-data: 1` header added so the app knows. Any other request that arrives before the
handshake completes is answered 425 Too Early without reaching the app; clients retry it once
the handshake is done (`hypermesh.transport.h3client` does). Early data can be replayed by
anyone who captured it; what makes that harmless here:
- only reads run early, and a read's answer is encrypted for the original client alone;
- the ticket is consumed by the first handshake that uses it (after its PSK binder checked
  out), so a replayed first flight finds no ticket, becomes a full handshake that the attacker
  cannot finish, and its early data is never decrypted: each ticket's early data runs at most
  once in this process; tickets die with the process, so there is no other process to replay
  them to;
- what remains is what RFC 8446 section 8 leaves to every server: a replay that races the
  original and wins instead of it, which still runs the request once.
A watch is a GET too, and may start early: replaying one would only cost the server a stream
whose events the attacker cannot read.

Revocation: `revoked(serial) -> bool` (given to `serve_h3` or to the `SessionTicketStore`) is
consulted at every full handshake (a revoked certificate is refused), at every resumption (a
revoked certificate's ticket is dropped, and its holder must present the certificate, which is
then refused) and at every request (a connection whose certificate was revoked since it was
verified is closed). `SessionTicketStore.revoke(serials)` adds serials to the store's own set,
drops their tickets and closes the connections they hold at once (a watch ends then, not at
its connection's next request); `SessionTicketStore.forget` drops the tickets of one identity
or user. Tickets live in memory only, so a restart forgets them all.

Requests map to ASGI the usual way: response body chunks become DATA frames as the app sends
them (watches stream for minutes), the stream ends on `more_body=False`, and a client reset,
STOP_SENDING or a lost connection reaches the app as `http.disconnect`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import urllib.parse
from collections import deque
from pathlib import Path
from typing import Any

from aioquic import tls as quic_tls
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import QuicServer
from aioquic.buffer import Buffer
from aioquic.h3.connection import H3_ALPN, ErrorCode, H3Connection
from aioquic.h3.events import DataReceived, H3Event, HeadersReceived
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import NetworkAddress, QuicConnection
from aioquic.quic.packet import QuicErrorCode
from aioquic.tls import AlertDescription
from cryptography import x509

from hypermesh.pki.identity import Identity
from hypermesh.pki.verify import (
    CertificateRejected,
    CertificateRevoked,
    ClientCertificateVerifier,
    RevocationCheck,
)
from hypermesh.transport import sockets
from hypermesh.transport.asgi import (
    IDENTITY_SCOPE_KEY,
    TLS_VERSIONS,
    ASGIApp,
    Message,
    tls_extension,
)
from hypermesh.transport.sessions import (
    MAX_EARLY_DATA,
    SessionTicketStore,
    TicketRecord,
    time_now,
)

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]

# A streaming response pauses while more than this many bytes wait for the client's
# acknowledgement, so a client that stops reading cannot make the server buffer a watch forever.
_SEND_HIGH_WATER = 1 << 20
# A request body buffered beyond this (the app is not reading it) resets the stream.
_RECEIVE_HIGH_WATER = 16 << 20

# Headers that describe an HTTP/1.1 connection and are malformed in HTTP/3 (RFC 9114 4.2).
_CONNECTION_HEADERS = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade")
)
_DISCONNECT: Message = {"type": "http.disconnect"}

# Requests that may run from 0-RTT data: safe methods (RFC 9110 9.2.1) whose replay reads only.
EARLY_METHODS = frozenset((b"GET", b"HEAD"))


def _alert_code(alert: AlertDescription) -> int:
    # TLS alerts travel as QUIC CRYPTO_ERROR 0x100 + alert (RFC 9001 section 4.8).
    return int(QuicErrorCode.CRYPTO_ERROR) + int(alert)


BAD_CERTIFICATE = _alert_code(AlertDescription.bad_certificate)
CERTIFICATE_REVOKED = _alert_code(AlertDescription.certificate_revoked)


class _RequestCycle:
    """One request stream: the app's receive/send, fed by the connection's events."""

    __slots__ = (
        "body",
        "body_delivered",
        "body_size",
        "disconnected",
        "more_body",
        "protocol",
        "response_complete",
        "response_started",
        "scope",
        "stream_id",
        "waiter",
    )

    def __init__(self, protocol: _H3ServerProtocol, stream_id: int, scope: dict[str, Any]):
        self.protocol = protocol
        self.stream_id = stream_id
        self.scope = scope
        self.body: deque[bytes] = deque()
        self.body_size = 0
        self.more_body = True
        self.body_delivered = False
        self.disconnected = False
        self.response_started = False
        self.response_complete = False
        self.waiter: asyncio.Future[None] | None = None

    # Events from the connection

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def feed(self, data: bytes, ended: bool) -> None:
        if self.response_complete or self.disconnected:
            # The app has answered (401 to an anonymous upload, say): drop what follows.
            return
        if data:
            self.body.append(data)
            self.body_size += len(data)
            if self.body_size > _RECEIVE_HIGH_WATER:
                self.protocol.abort_stream(self.stream_id, ErrorCode.H3_EXCESSIVE_LOAD)
                self.disconnect()
                return
        if ended:
            self.more_body = False
        self.wake()

    def disconnect(self) -> None:
        self.disconnected = True
        self.wake()

    # ASGI interface

    async def receive(self) -> Message:
        while True:
            if self.disconnected or self.response_complete:
                return _DISCONNECT
            if self.body or (not self.more_body and not self.body_delivered):
                data = b"".join(self.body) if len(self.body) != 1 else self.body[0]
                self.body.clear()
                self.body_size = 0
                if not self.more_body:
                    self.body_delivered = True
                return {"type": "http.request", "body": data, "more_body": self.more_body}
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if self.disconnected:
            return
        if kind == "http.response.start":
            if self.response_started:
                raise RuntimeError("ASGI app sent 'http.response.start' twice")
            self.response_started = True
            headers = [(b":status", str(message["status"]).encode("ascii"))]
            for name, value in message.get("headers", ()):
                name = bytes(name).lower()
                if name not in _CONNECTION_HEADERS:
                    headers.append((name, bytes(value)))
            self.protocol.send_headers(self.stream_id, headers)
        elif kind == "http.response.body":
            if not self.response_started:
                raise RuntimeError("ASGI app sent a body before 'http.response.start'")
            if self.response_complete:
                return
            more_body = message.get("more_body", False)
            self.protocol.send_data(self.stream_id, message.get("body", b""), not more_body)
            if not more_body:
                self.response_complete = True
                self.wake()
            elif self.protocol.send_backlog(self.stream_id) > _SEND_HIGH_WATER:
                await self.protocol.wait_for_send_room(self)
        else:
            raise RuntimeError(f"unexpected ASGI message type {kind!r} on an HTTP/3 request")

    async def run(self, app: ASGIApp) -> None:
        try:
            await app(self.scope, self.receive, self.send)
        except Exception:
            logger.exception("exception in ASGI app (HTTP/3 %s)", self.scope.get("path"))
            if not self.response_started and not self.disconnected:
                await self.send(
                    {
                        "type": "http.response.start",
                        "status": 500,
                        "headers": [(b"content-type", b"text/plain; charset=utf-8")],
                    }
                )
                await self.send({"type": "http.response.body", "body": b"Internal Server Error"})
        finally:
            if not self.response_complete and not self.disconnected:
                # The app returned (or was cancelled) mid-response: tell the client the
                # response is incomplete rather than letting it wait forever.
                self.protocol.abort_stream(self.stream_id, ErrorCode.H3_INTERNAL_ERROR)
            self.protocol.request_finished(self)


class _H3Service:
    """State shared by all connections of one listener: the app, the verifier, the tasks."""

    def __init__(
        self,
        app: ASGIApp,
        verifier: ClientCertificateVerifier,
        tickets: SessionTicketStore | None = None,
    ) -> None:
        self.app = app
        self.verifier = verifier
        self.tickets = tickets if tickets is not None else SessionTicketStore()
        self.tasks: set[asyncio.Task[None]] = set()
        self.protocols: set[_H3ServerProtocol] = set()
        self.closing = False
        self.server_address: tuple[str, int] | None = None
        self.tickets._revoke_listeners.append(self.close_revoked)

    def create_protocol(self, quic: QuicConnection, **kwargs: Any) -> _H3ServerProtocol:
        protocol = _H3ServerProtocol(quic, service=self, **kwargs)
        self.protocols.add(protocol)
        return protocol

    def forget_tickets(self, who: Identity | str) -> int:
        """Revoke resumption for an identity (or user name): its next connection is a full one."""
        return self.tickets.forget(who)

    def close_revoked(self, serials: frozenset[int]) -> None:
        """Close the connections whose client certificate has one of these serials."""
        for protocol in list(self.protocols):
            protocol.close_if_revoked(serials)

    def detach(self) -> None:
        """Stop listening to the ticket store (it may outlive this listener)."""
        with contextlib.suppress(ValueError):
            self.tickets._revoke_listeners.remove(self.close_revoked)


class _H3ServerProtocol(QuicConnectionProtocol):
    """One QUIC connection: client-certificate check, then HTTP/3 requests to the app."""

    def __init__(self, quic: QuicConnection, *, service: _H3Service, **kwargs: Any) -> None:
        super().__init__(quic, **kwargs)
        self._service = service
        self._h3: H3Connection | None = None
        self._identity: Identity | None = None
        self._tls: dict[str, Any] | None = None
        self._client: tuple[str, int] | None = None
        self._requests: dict[int, _RequestCycle] = {}
        self._send_waiters: list[asyncio.Future[None]] = []
        # The outcome of verifying the client certificate, once the client's Finished came.
        self._verified: Identity | CertificateRejected | None = None
        # The ticket this connection resumes with (offered by the client and found by us);
        # used up as soon as its PSK binder checked out.
        self._resumption: TicketRecord | None = None
        # Set once the client's Finished came and `_accept` let the connection in; until then
        # only a resumption whose early data we accepted serves (safe) requests.
        self._handshake_complete = False
        # Request streams answered 425 Too Early: what else arrives on them is ignored.
        self._too_early: set[int] = set()
        self._hook_tls(quic)

    def _hook_tls(self, quic: QuicConnection) -> None:
        # aioquic builds its TLS context lazily, on the first datagram, and exposes no option
        # to request a client certificate nor to tie tickets to one; hook the construction.
        initialize = quic._initialize

        def initialize_hooked(peer_cid: bytes) -> None:
            initialize(peer_cid)
            tls = quic.tls
            tls._request_client_certificate = True
            # Tickets are ours to issue (see `_issue_ticket`), never aioquic's.
            tls.new_session_ticket_cb = None
            tls.get_session_ticket_cb = self._fetch_ticket
            handle_hello = tls._server_handle_hello
            handle_finished = tls._server_handle_finished
            update_traffic_key = tls.update_traffic_key_cb

            def server_handle_hello(
                input_buf: Buffer, initial_buf: Buffer, handshake_buf: Buffer
            ) -> None:
                handle_hello(input_buf, initial_buf, handshake_buf)
                record = self._resumption
                if not tls.session_resumed or record is None:
                    # A ticket we know but aioquic did not take (another cipher suite).
                    self._resumption = None
                    return
                # The PSK binder checked out (aioquic raises otherwise): the ticket is spent,
                # so a replay of this ClientHello (and of its early data) finds nothing.
                self._service.tickets.take(record.session_ticket.ticket)
                if tls.state == quic_tls.State.SERVER_EXPECT_CERTIFICATE:
                    # A PSK handshake sent no CertificateRequest, so no certificate is coming;
                    # aioquic would wait for one anyway. Expect the client's Finished instead,
                    # exactly as aioquic does when it requested nothing.
                    tls._request_client_certificate = False
                    tls._server_expect_finished()

            def server_update_traffic_key(
                direction: quic_tls.Direction,
                epoch: quic_tls.Epoch,
                cipher_suite: quic_tls.CipherSuite,
                secret: bytes,
            ) -> None:
                if (
                    epoch == quic_tls.Epoch.ZERO_RTT
                    and direction == quic_tls.Direction.DECRYPT
                    and not self._early_data_allowed()
                ):
                    # aioquic accepts any early data offered with a ticket it resumes. Refuse
                    # it here, before EncryptedExtensions is written: without the key the
                    # early packets are dropped, and the client sends again after the
                    # handshake (RFC 9001 section 4.6.2).
                    tls.early_data_accepted = False
                    return
                update_traffic_key(direction, epoch, cipher_suite, secret)

            def server_handle_finished(input_buf: Buffer, output_buf: Buffer) -> None:
                handle_finished(input_buf, output_buf)
                # The Finished message checked out: the handshake (and the key proof behind
                # any certificate) is genuine. Verify the chain; a ticket only if it passes.
                try:
                    self._issue_ticket(tls, output_buf)
                except Exception:
                    # No ticket then (a full handshake next time); `_accept` still decides.
                    logger.exception("HTTP/3 session ticket for %s not issued", self._client)

            tls._server_handle_hello = server_handle_hello  # type: ignore[method-assign]
            tls._server_handle_finished = server_handle_finished  # type: ignore[method-assign]
            tls.update_traffic_key_cb = server_update_traffic_key

        quic._initialize = initialize_hooked  # type: ignore[method-assign]

    def _fetch_ticket(self, ticket: bytes) -> quic_tls.SessionTicket | None:
        """aioquic's ticket lookup: only our own unexpired, unused, unrevoked tickets resume."""
        record = self._service.tickets.lookup(ticket)
        self._resumption = record
        return record.session_ticket if record is not None else None

    def _early_data_allowed(self) -> bool:
        """Accept 0-RTT data? Only on a resumption of a ticket that allows it (checked when
        the ticket's binder has already passed, so the record is genuinely the client's)."""
        record = self._resumption
        return record is not None and record.early_data and not self._service.closing

    def _issue_ticket(self, tls: quic_tls.Context, output_buf: Buffer) -> None:
        if tls._psk_key_exchange_mode is None or self._service.closing:
            return
        tickets = self._service.tickets
        now = time_now()
        if tls.session_resumed:
            # A successor for the ticket this connection used up: the same identity, proven
            # at the session's full handshake, and the same end, so the session is not extended.
            record = self._resumption
            if record is None or tickets.is_revoked(record.serial):
                return
            identity, cert, expires = record.identity, record.certificate, record.expires
            lifetime = int(expires - now)
        else:
            peer = tls._peer_certificate
            if peer is None:
                return
            verified = self._verified = self._verify(peer, tls._peer_certificate_chain)
            if isinstance(verified, CertificateRejected):
                return
            identity, cert = verified, peer
            lifetime = tickets.lifetime_for(cert, now)
            expires = now + lifetime
        if lifetime <= 0:
            return
        message = quic_tls.NewSessionTicket(
            ticket_lifetime=lifetime,
            ticket_age_add=secrets.randbits(32),
            ticket_nonce=b"",
            ticket=secrets.token_bytes(32),
            max_early_data_size=MAX_EARLY_DATA if tickets.early_data else None,
        )
        # The ticket carries our transport parameters: a client may send 0-RTT data only
        # within the limits it remembers (RFC 9000 section 7.4.1).
        session_ticket = tls._build_session_ticket(message, tls.handshake_extensions)
        quic_tls.push_new_session_ticket(output_buf, message)
        tickets.add(session_ticket, identity, cert, expires)

    # Datagram and QUIC events

    def datagram_received(self, data: bytes | str, addr: NetworkAddress) -> None:
        if self._client is None:
            self._client = (str(addr[0]), int(addr[1]))
        super().datagram_received(data, addr)
        # Incoming datagrams carry the acknowledgements that make room in send buffers.
        if self._send_waiters:
            self._wake_senders()

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.HandshakeCompleted):
            self._accept(event)
            return
        if isinstance(event, events.ConnectionTerminated):
            self._service.protocols.discard(self)
            for cycle in list(self._requests.values()):
                cycle.disconnect()
            self._wake_senders()
            return
        if self._h3 is None:
            if not isinstance(event, events.StreamDataReceived):
                return
            if self._handshake_complete or not self._start_early():
                # Application data before the certificate was checked: never serve it.
                self._reject("stream data before the handshake completed")
                return
        assert self._h3 is not None
        for h3_event in self._h3.handle_event(event):
            self._http_event_received(h3_event)
        if isinstance(event, events.StreamReset | events.StopSendingReceived):
            abandoned = self._requests.get(event.stream_id)
            if abandoned is not None:
                abandoned.disconnect()
                self._wake_senders()

    def _start_early(self) -> bool:
        """Serve 0-RTT data (before the handshake completes) if we accepted it; whether we do."""
        record = self._resumption
        if record is None or not self._quic.tls.early_data_accepted:
            return False
        self._identity = record.identity
        self._tls = tls_extension(record.certificate, TLS_VERSIONS["TLSv1.3"])
        self._h3 = H3Connection(self._quic)
        return True

    def _accept(self, event: events.HandshakeCompleted) -> None:
        """Settle who the client is; serve HTTP/3 only if its certificate passed (or is absent)."""
        tls = self._quic.tls
        cert: x509.Certificate | None
        if event.session_resumed:
            record = self._resumption
            if record is None:
                # Not a ticket of ours: nothing vouches for the client.
                self._reject("session resumption without a valid ticket")
                return
            if self._service.tickets.is_revoked(record.serial):
                self._reject("certificate revoked", code=CERTIFICATE_REVOKED)
                return
            self._identity = record.identity
            cert = record.certificate
        else:
            if event.early_data_accepted:
                # Early data is only ever accepted with a ticket (see `_early_data_allowed`).
                self._reject("early data without resumption")
                return
            cert = tls._peer_certificate
            if cert is not None:
                verified = self._verified
                if verified is None:
                    verified = self._verify(cert, tls._peer_certificate_chain)
                if isinstance(verified, CertificateRejected):
                    logger.info("HTTP/3 client %s rejected: %s", self._client, verified)
                    revoked = isinstance(verified, CertificateRevoked)
                    code = CERTIFICATE_REVOKED if revoked else BAD_CERTIFICATE
                    self._reject(str(verified), code=code)
                    return
                self._identity = verified
        self._handshake_complete = True
        self._tls = tls_extension(cert, TLS_VERSIONS["TLSv1.3"])
        if self._h3 is None:
            self._h3 = H3Connection(self._quic)

    def _verify(
        self, cert: x509.Certificate, chain: list[x509.Certificate]
    ) -> Identity | CertificateRejected:
        try:
            return self._service.verifier.verify(cert, chain)
        except CertificateRejected as exc:
            return exc

    def close_if_revoked(self, serials: frozenset[int]) -> None:
        """Close this connection if its client's certificate serial is among `serials`."""
        identity = self._identity
        if identity is not None and identity.serial in serials:
            self._reject("certificate revoked", code=CERTIFICATE_REVOKED)

    def _reject(self, reason: str, code: int = QuicErrorCode.PROTOCOL_VIOLATION) -> None:
        self._h3 = None
        self._quic.close(error_code=code, reason_phrase=reason)
        # The app's running requests (watches) end now, not when the close has drained.
        for cycle in list(self._requests.values()):
            cycle.disconnect()
        self._transmit_soon()

    def _http_event_received(self, event: H3Event) -> None:
        if isinstance(event, DataReceived):
            cycle = self._requests.get(event.stream_id)
            if cycle is not None:
                cycle.feed(event.data, event.stream_ended)
        elif isinstance(event, HeadersReceived):
            cycle = self._requests.get(event.stream_id)
            if cycle is not None:
                # Trailers: nothing in the API uses them, but they may end the body.
                cycle.feed(b"", event.stream_ended)
            elif event.stream_id not in self._too_early:
                self._start_request(event)

    def _start_request(self, event: HeadersReceived) -> None:
        if self._service.closing:
            self.abort_stream(event.stream_id, ErrorCode.H3_REQUEST_REJECTED)
            return
        identity = self._identity
        if identity is not None and self._service.tickets.is_revoked(identity.serial):
            # Revoked since the handshake: the connection goes, as a new one would be refused.
            self._reject("certificate revoked", code=CERTIFICATE_REVOKED)
            return
        method = b"GET"
        raw_path = b"/"
        authority = b""
        headers: list[tuple[bytes, bytes]] = []
        for name, value in event.headers:
            if name == b":method":
                method = value
            elif name == b":path":
                raw_path = value
            elif name == b":authority":
                authority = value
            elif not name.startswith(b":"):
                headers.append((name, value))
        if not self._handshake_complete:
            # 0-RTT: only a bodiless read may run before the handshake proves the client live.
            if method not in EARLY_METHODS or not event.stream_ended:
                self._answer_too_early(event.stream_id, event.stream_ended)
                return
            headers.append((b"early-data", b"1"))
        if authority:
            # ASGI apps look for the host header; HTTP/3 carries it as :authority.
            headers.insert(0, (b"host", authority))
        path_bytes, _, query_string = raw_path.partition(b"?")
        path = path_bytes.decode("ascii", "replace")
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "3",
            "method": method.decode("ascii", "replace"),
            "scheme": "https",
            "path": urllib.parse.unquote(path) if "%" in path else path,
            "raw_path": path_bytes,
            "query_string": query_string,
            "root_path": "",
            "headers": headers,
            "client": self._client,
            "server": self._service.server_address,
            IDENTITY_SCOPE_KEY: identity,
            "extensions": {"tls": self._tls},
        }
        cycle = _RequestCycle(self, event.stream_id, scope)
        self._requests[event.stream_id] = cycle
        if event.stream_ended:
            cycle.more_body = False
        task = asyncio.get_running_loop().create_task(cycle.run(self._service.app))
        self._service.tasks.add(task)
        task.add_done_callback(self._service.tasks.discard)

    def _answer_too_early(self, stream_id: int, stream_ended: bool) -> None:
        """425 Too Early (RFC 8470): the client sends the request again after the handshake."""
        assert self._h3 is not None
        self._too_early.add(stream_id)
        self._h3.send_headers(
            stream_id, [(b":status", b"425"), (b"content-length", b"0")], end_stream=True
        )
        if not stream_ended:
            # The body will not be read: tell the client to stop sending it.
            with contextlib.suppress(ValueError, AssertionError):
                self._quic.stop_stream(stream_id, ErrorCode.H3_NO_ERROR)
        self._transmit_soon()

    # Called by request cycles

    def send_headers(self, stream_id: int, headers: list[tuple[bytes, bytes]]) -> None:
        assert self._h3 is not None
        self._h3.send_headers(stream_id, headers, end_stream=False)
        # Coalesce: one transmit per loop iteration carries headers and body together.
        self._transmit_soon()

    def send_data(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        assert self._h3 is not None
        self._h3.send_data(stream_id, bytes(data), end_stream=end_stream)
        self._transmit_soon()

    def abort_stream(self, stream_id: int, code: int) -> None:
        """Reset our side of a request stream and ask the client to stop sending on it."""
        try:
            self._quic.reset_stream(stream_id, code)
            self._quic.stop_stream(stream_id, code)
        except (ValueError, AssertionError):
            # The stream is already gone (finished or reset by the client).
            pass
        self._transmit_soon()

    def send_backlog(self, stream_id: int) -> int:
        """Bytes written to a stream that the client has not acknowledged yet."""
        stream = self._quic._streams.get(stream_id)
        return len(stream.sender._buffer) if stream is not None else 0

    async def wait_for_send_room(self, cycle: _RequestCycle) -> None:
        while not cycle.disconnected and self.send_backlog(cycle.stream_id) > _SEND_HIGH_WATER:
            waiter = self._loop.create_future()
            self._send_waiters.append(waiter)
            await waiter

    def _wake_senders(self) -> None:
        waiters, self._send_waiters = self._send_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def request_finished(self, cycle: _RequestCycle) -> None:
        self._requests.pop(cycle.stream_id, None)


def server_quic_configuration(
    certfile: PathLike, keyfile: PathLike, *, idle_timeout: float = 60.0
) -> QuicConfiguration:
    """The QUIC configuration of the listener (certificate, ALPN h3, flow-control windows)."""
    configuration = QuicConfiguration(
        is_client=False,
        alpn_protocols=H3_ALPN,
        idle_timeout=idle_timeout,
        max_data=8 << 20,
        max_stream_data=2 << 20,
    )
    configuration.load_cert_chain(certfile, keyfile)
    return configuration


class ServingQuic:
    """The listener's QUIC configuration, whose serving certificate can be replaced live.

    aioquic's server hands this one configuration object to every new connection, which reads
    the certificate when its TLS context is made: replacing it changes new handshakes only, and
    open connections (and their watches) carry on with the certificate they were shown.
    """

    def __init__(self, certfile: PathLike, keyfile: PathLike, *, idle_timeout: float = 60.0) -> None:
        self.configuration = server_quic_configuration(certfile, keyfile, idle_timeout=idle_timeout)

    def reload(self, certfile: PathLike, keyfile: PathLike) -> None:
        """Serve a new certificate to new connections; a pair that does not load changes nothing."""
        scratch = QuicConfiguration(is_client=False)
        scratch.load_cert_chain(certfile, keyfile)
        configuration = self.configuration
        configuration.certificate = scratch.certificate
        configuration.certificate_chain = scratch.certificate_chain
        configuration.private_key = scratch.private_key


async def serve_h3(
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
    idle_timeout: float = 60.0,
    tickets: SessionTicketStore | None = None,
    revoked: RevocationCheck | None = None,
    serving: ServingQuic | None = None,
) -> None:
    """Serve `app` over HTTP/3 on UDP `host:port` until `shutdown` is set (or cancellation).

    On shutdown new requests are refused (H3_REQUEST_REJECTED), running ones get
    `graceful_timeout` seconds to finish before they are cancelled, then every connection is
    closed. Clients must present a certificate from `cafile`'s CA or none at all.
    Session tickets go to verified clients only and are remembered in `tickets` (a fresh
    store by default); `tickets.forget(identity)` revokes resumption for an identity.

    `revoked(serial) -> bool`, when given, becomes the store's revocation check (replacing
    any it had): it is asked at every full handshake, resumption and request, and must be
    cheap (a set lookup). `tickets.revoke(serials)` is the other way in, for a caller that
    pushes changes rather than answering questions.

    `serving`, when given, holds the configuration (so its owner can `reload` a rotated
    serving certificate); `certfile`/`keyfile` are then not read here.
    """
    loop = asyncio.get_running_loop()
    if serving is None:
        serving = ServingQuic(certfile, keyfile, idle_timeout=idle_timeout)
    configuration = serving.configuration
    store = tickets if tickets is not None else SessionTicketStore()
    if revoked is not None:
        store.revoked = revoked
    verifier = ClientCertificateVerifier(Path(cafile).read_bytes(), revoked=store.is_revoked)
    service = _H3Service(app, verifier, store)
    sock = sockets.udp_listener(host, port)
    sockname = sock.getsockname()
    service.server_address = (str(sockname[0]), int(sockname[1]))
    # No session_ticket_fetcher/handler here: each connection's TLS hooks issue and look up
    # tickets (see the module docstring for why aioquic's own handling will not do).
    transport, server = await loop.create_datagram_endpoint(
        lambda: QuicServer(configuration=configuration, create_protocol=service.create_protocol),
        sock=sock,
    )
    if ready is not None:
        ready.set()
    graceful = False
    try:
        if shutdown is None:
            await loop.create_future()
        else:
            await shutdown.wait()
        graceful = True
    finally:
        service.closing = True
        if graceful and service.tasks:
            await asyncio.wait(set(service.tasks), timeout=graceful_timeout)
        for task in list(service.tasks):
            task.cancel()
        if graceful and service.tasks:
            await asyncio.wait(set(service.tasks), timeout=1.0)
        service.detach()
        for protocol in list(service.protocols):
            protocol.close(error_code=ErrorCode.H3_NO_ERROR, reason_phrase="server shutting down")
        server.close()
        transport.close()
