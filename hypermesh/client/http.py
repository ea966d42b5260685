"""`Client`: synchronous HTTP to one API server, over HTTP/3 when it can and TCP when not.

The client knows HTTP and Kubernetes' error convention, nothing about kinds (that is
`resources`): a status of 400 or more becomes an `ApiError` built from the server's `Status`,
a failure to get any answer a `ClientError`. Watches come back as an iterator of decoded
newline-delimited JSON objects.

Choosing a transport (`auto`) is a trade between latency and robustness: HTTP/3 first, but a
network that drops UDP would otherwise cost every command a long QUIC timeout. So the QUIC
connect gets one second; on failure the request goes over TCP, and once TCP has answered the
failure is remembered for ten minutes (`$HYPERMESH_HOME/cache/transport.json`) so the next
commands go straight to TCP. Nothing is remembered when TCP fails too: then the server is
simply down, and HTTP/3 should be tried again when it is back.

Transports are imported when first used: aioquic alone takes longer to import than a whole
`nexus get` over TCP takes to run.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import urlencode

import orjson

from hypermesh.client import localstate
from hypermesh.client.config import ClusterConfig
from hypermesh.client.errors import ApiError, ClientError
from hypermesh.client.transports import Endpoint, Headers, StreamHandle, Transport

TransportName = Literal["auto", "h3", "tcp"]
Query = Mapping[str, str] | Sequence[tuple[str, str]]

# `auto` gives QUIC this long to answer before trying TCP.
AUTO_H3_CONNECT_TIMEOUT = 1.0
# An explicit `--transport=h3` waits longer: the user asked for it.
H3_CONNECT_TIMEOUT = 5.0


@dataclass
class Response:
    """A complete response; header names are lower-case."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def json(self) -> Any:
        """The body decoded as JSON."""
        return orjson.loads(self.body)


class EventStream:
    """Decoded objects of a newline-delimited JSON response, as they arrive.

    The request is sent when the stream is created, so errors such as 404 surface from the call
    that opens it. `close()` (or leaving a `with` block) ends the response early.
    """

    def __init__(self, handle: StreamHandle, url: str) -> None:
        self._handle = handle
        self._url = url
        self._lines = self._decode()

    def _decode(self) -> Generator[dict[str, Any], None, None]:
        pending = b""
        for chunk in self._handle.chunks():
            pending += chunk
            if b"\n" not in chunk:
                continue
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if line.strip():
                    yield self._parse(line)
        if pending.strip():
            yield self._parse(pending)

    def _parse(self, line: bytes) -> dict[str, Any]:
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise ClientError(
                f"{self._url} sent a stream line that is not JSON: {line[:120]!r}"
            ) from None
        if not isinstance(value, dict):
            raise ClientError(
                f"{self._url} sent a stream line that is not an object: {line[:120]!r}"
            )
        return value

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> dict[str, Any]:
        return next(self._lines)

    def close(self) -> None:
        """Stop reading; the server sees the stream closed."""
        self._lines.close()
        self._handle.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Client:
    """Synchronous HTTP to the API server of one kubeconfig context."""

    def __init__(
        self,
        config: ClusterConfig,
        *,
        transport: TransportName = "auto",
        timeout: float = 30.0,
        user_agent: str = "nexus/0.1",
    ) -> None:
        if transport not in ("auto", "h3", "tcp"):
            raise ValueError(f'transport must be "auto", "h3" or "tcp", not "{transport}"')
        self.config = config
        self.timeout = timeout
        self.user_agent = user_agent
        self.mode: TransportName = transport
        # "h3" or "tcp" once the first request has chosen; "" before.
        self.transport_used = ""
        self._endpoint = Endpoint.from_config(config)
        self._transport: Transport | None = None
        # Why HTTP/3 failed in `auto`, recorded once TCP has proved the server is up.
        self._h3_failure: str | None = None

    @property
    def resumed(self) -> bool:
        """Whether the HTTP/3 connection resumed a session (False over TCP or before connecting)."""
        return bool(getattr(self._transport, "resumed", False))

    # Choosing a transport

    def _connect(self) -> Transport:
        if self._transport is not None:
            return self._transport
        if self.mode == "tcp":
            transport: Transport = self._tcp()
        elif self.mode == "h3":
            transport = self._h3(H3_CONNECT_TIMEOUT)
        else:
            transport = self._auto()
        self._transport = transport
        self.transport_used = transport.name
        return transport

    def _auto(self) -> Transport:
        memory = localstate.TransportMemory()
        server = self.config.server
        if memory.h3_failed_recently(server):
            return self._tcp()
        try:
            transport = self._h3(AUTO_H3_CONNECT_TIMEOUT)
        except ImportError as exc:
            self._h3_failure = f"HTTP/3 support is not installed: {exc}"
        except ClientError as exc:
            self._h3_failure = str(exc)
        else:
            memory.forget(server)
            return transport
        return self._tcp()

    def _tcp(self) -> Transport:
        from hypermesh.client import tcp

        return tcp.TcpTransport(self._endpoint, self.config, timeout=self.timeout)

    def _h3(self, connect_timeout: float) -> Transport:
        from hypermesh.client import h3, tickets

        transport = h3.H3Transport(
            self._endpoint,
            self.config,
            timeout=self.timeout,
            connect_timeout=min(connect_timeout, self.timeout),
            tickets=tickets.TicketStore(self.config.server),
        )
        try:
            transport.connect()
        except BaseException:
            transport.close()
            raise
        return transport

    def _answered(self) -> None:
        """The server answered over TCP: now an HTTP/3 failure says something about UDP."""
        if self._h3_failure is not None:
            localstate.TransportMemory().remember_h3_failure(self.config.server, self._h3_failure)
            self._h3_failure = None

    # Requests

    def _target(self, path: str, query: Query | None) -> str:
        target = self._endpoint.prefix + path
        if query:
            target += "?" + urlencode(query)
        return target

    def _headers(self, accept: str) -> Headers:
        return [("accept", accept), ("user-agent", self.user_agent)]

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Query | None = None,
        body: bytes | dict[str, Any] | list[Any] | None = None,
        content_type: str = "application/json",
        accept: str = "application/json",
    ) -> Response:
        """Send one request; raise ApiError for a status >= 400, ClientError for no answer."""
        target = self._target(path, query)
        headers = self._headers(accept)
        data: bytes | None = None
        if body is not None:
            data = body if isinstance(body, bytes) else orjson.dumps(body)
            headers.append(("content-type", content_type))
        transport = self._connect()
        status, response_headers, response_body = transport.request(
            method.upper(), target, headers, data
        )
        self._answered()
        if status >= 400:
            raise ApiError.from_response(status, response_body, url=self.config.server + target)
        return Response(status, response_headers, response_body)

    def open(
        self,
        method: str,
        path: str,
        *,
        query: Query | None = None,
        accept: str = "application/json",
    ) -> StreamHandle:
        """Send a request whose answer is read as it arrives (logs, watches): returns once the
        head is in, with no deadline on the body; raises ApiError for a status >= 400."""
        target = self._target(path, query)
        transport = self._connect()
        handle = transport.open_stream(method.upper(), target, self._headers(accept))
        self._answered()
        if handle.status >= 400:
            body = handle.read()
            raise ApiError.from_response(handle.status, body, url=self.config.server + target)
        return handle

    def stream(
        self,
        method: str,
        path: str,
        *,
        query: Query | None = None,
        accept: str = "application/json",
    ) -> EventStream:
        """Open a newline-delimited JSON response (a watch) and iterate its objects."""
        handle = self.open(method, path, query=query, accept=accept)
        return EventStream(handle, self.config.server + self._target(path, query))

    # Lifecycle

    def close(self) -> None:
        """Close the connections (idempotent); the client may be used again afterwards."""
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
