"""`AsyncClient`: the API client for asyncio code (controllers, agents), over TLS or in process.

The synchronous `Client` suits a command that makes a few requests and exits; a controller
process instead keeps several watches open for hours while it reads and writes objects, all on
one event loop. This client is that: the same verbs and the same errors (`ApiError` built from
the server's `Status`, `ClientError` when no answer came), on one of two transports:

- `from_config`: HTTPS on TCP through asyncio streams, HTTP/1.1 with keep-alive. Up to
  `pool_size` connections are open at once, so a long watch never makes a `get` wait behind it;
  idle connections are kept for the next request. Watches arrive chunked and are decoded as the
  chunks come. `use_client_certificate` swaps the client certificate of a running client (a
  node agent renewing its own): new connections present the new one at once, idle ones are
  closed, and those in use (a watch, a request under way) finish on the old one and are not
  reused, so no request fails and none is sent with the old certificate after the swap.
- `in_process`: calls the server's ASGI app directly with a fixed identity. No socket and no TLS
  are paid, but the request still goes through the app's authn, authz and admission, which is
  what lets `hypermesh server` run its controllers in process without breaking the layering.

The transport is a two-method protocol (`Transport.open` returns a `StreamingResponse`), so tests
can wrap one, for example to freeze a watch and check that the informer notices.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol
from urllib.parse import quote, urlencode, urlsplit

import orjson

from hypermesh.client.api import JSON, LOG_ACCEPT, exec_query, log_query
from hypermesh.client.config import ClusterConfig
from hypermesh.client.errors import ApiError, ClientError
from hypermesh.client.resources import Resource
from hypermesh.client.transports import private_pem_files

Query = Mapping[str, str] | Sequence[tuple[str, str]]
Headers = list[tuple[str, str]]
PatchType = Literal["merge", "json", "apply"]
PATCH_CONTENT_TYPES: dict[str, str] = {
    "merge": "application/merge-patch+json",
    "json": "application/json-patch+json",
    "apply": "application/apply-patch+yaml",
}
ASGIApp = Callable[
    [dict[str, Any], Callable[[], Awaitable[dict[str, Any]]], Callable[[dict[str, Any]], Awaitable[None]]],
    Awaitable[None],
]
USER_AGENT = "hypermesh-aio/0.1"


# -- transports -------------------------------------------------------------------------------


class StreamingResponse(Protocol):
    """A response whose head has arrived; the body is read whole or chunk by chunk."""

    status: int
    headers: dict[str, str]

    def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives."""
        ...

    async def aclose(self) -> None:
        """Stop reading (early close ends the request on the server side too)."""
        ...


class Transport(Protocol):
    """Sends one request and returns the response once its head has arrived."""

    async def open(
        self, method: str, target: str, headers: Headers, body: bytes
    ) -> StreamingResponse:
        """`target` is the path with its query string."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


async def read_all(response: StreamingResponse) -> bytes:
    """The whole body of `response`."""
    parts = [chunk async for chunk in response.chunks()]
    return b"".join(parts)


# -- HTTP/1.1 over TLS ------------------------------------------------------------------------


class _Connection:
    """One TLS connection; carries one request at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, generation: int = 0) -> None:
        self.reader = reader
        self.writer = writer
        self.reusable = True
        # Which client credentials it was opened with (see `TcpTransport.use_client_certificate`).
        self.generation = generation

    def close(self) -> None:
        self.reusable = False
        with contextlib.suppress(Exception):
            self.writer.close()


@dataclass
class _TcpResponse:
    status: int
    headers: dict[str, str]
    _conn: _Connection
    _release: Callable[[_Connection], None]
    _timeout: float | None
    _done: bool = False
    _released: bool = False

    async def chunks(self) -> AsyncIterator[bytes]:
        reader = self._conn.reader
        try:
            if self.headers.get("transfer-encoding", "").lower() == "chunked":
                while True:
                    size_line = await self._read(reader.readline())
                    size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                    if size == 0:
                        # Trailers (none expected) end with an empty line.
                        while (await self._read(reader.readline())).strip():
                            pass
                        break
                    data = await self._read(reader.readexactly(size + 2))
                    yield data[:-2]
            elif "content-length" in self.headers:
                length = int(self.headers["content-length"])
                if length:
                    yield await self._read(reader.readexactly(length))
            else:
                # No framing: the body ends with the connection.
                self._conn.reusable = False
                while chunk := await self._read(reader.read(65536)):
                    yield chunk
            self._done = True
        finally:
            await self.aclose()

    async def _read(self, op: Awaitable[bytes]) -> bytes:
        try:
            return await asyncio.wait_for(op, self._timeout) if self._timeout else await op
        except asyncio.IncompleteReadError as exc:
            raise ClientError("the server closed the connection in the middle of a response") from exc
        except OSError as exc:  # TimeoutError included
            raise ClientError(f"reading a response failed: {exc.__class__.__name__}: {exc}") from exc

    async def aclose(self) -> None:
        if self._released:
            return
        self._released = True
        if not self._done:
            # Unread body bytes would corrupt the next response: the connection cannot be reused.
            self._conn.close()
        self._release(self._conn)


class TcpTransport:
    """HTTP/1.1 over TLS to one server, with a small pool of keep-alive connections."""

    def __init__(self, config: ClusterConfig, *, pool_size: int = 8, timeout: float = 30.0) -> None:
        # The CA the kubeconfig trusts for the server: the cluster CA.
        self.ca_pem = config.ca_pem
        url = urlsplit(config.server)
        self.host = url.hostname or "127.0.0.1"
        self.port = url.port or 443
        self.server_name = config.tls_server_name or self.host
        self.host_header = url.netloc
        self.config = config
        self.timeout = timeout
        self._context: ssl.SSLContext | None = None
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(pool_size)
        self._generation = 0

    def _ssl_context(self) -> ssl.SSLContext:
        if self._context is None:
            self._context = _client_context(self.config)
        return self._context

    def use_client_certificate(self, cert_pem: bytes, key_pem: bytes) -> None:
        """Present `cert_pem` (with `key_pem`) on every connection opened from now on.

        The new context is built first, so a certificate that cannot be loaded raises
        ClientError and changes nothing. Idle connections are closed; connections in use finish
        what they carry and are closed when released."""
        config = dataclasses.replace(self.config, cert_pem=cert_pem, key_pem=key_pem, token=None)
        context = _client_context(config)
        self.config, self._context = config, context
        self._generation += 1
        while self._idle:
            self._idle.pop().close()

    async def _connect(self) -> _Connection:
        # Taken together before the handshake: a swap during it must not mark this connection
        # as one of the new certificate.
        generation, context = self._generation, self._ssl_context()
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    self.host, self.port, ssl=context, server_hostname=self.server_name
                ),
                self.timeout,
            )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            raise ClientError(
                f"cannot reach {self.config.server} ({exc.__class__.__name__}: {exc}); is the "
                "server running, and is this the right kubeconfig?"
            ) from None
        return _Connection(reader, writer, generation)

    def _release(self, conn: _Connection) -> None:
        if conn.reusable and conn.generation == self._generation:
            self._idle.append(conn)
        else:
            conn.close()
        self._slots.release()

    async def open(
        self, method: str, target: str, headers: Headers, body: bytes
    ) -> StreamingResponse:
        await self._slots.acquire()
        try:
            return await self._send(method, target, headers, body)
        except BaseException:
            self._slots.release()
            raise

    async def _send(
        self, method: str, target: str, headers: Headers, body: bytes
    ) -> StreamingResponse:
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self.host_header}"]
        lines += [f"{k}: {v}" for k, v in headers]
        if self.config.token and not self.config.cert_pem:
            lines.append(f"Authorization: Bearer {self.config.token}")
        lines.append(f"Content-Length: {len(body)}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        # A kept-alive connection may have been closed by the server while idle; the request
        # never reached it then, so one more try on a fresh connection is safe.
        for attempt in range(2):
            reused = bool(self._idle)
            conn = self._idle.pop() if reused else await self._connect()
            try:
                conn.writer.write(head + body)
                await conn.writer.drain()
                status_line = await asyncio.wait_for(conn.reader.readline(), self.timeout)
                if not status_line:
                    raise ConnectionResetError("connection closed")
                parts = status_line.decode("latin-1").split(" ", 2)
                status = int(parts[1])
                response_headers: dict[str, str] = {}
                while True:
                    line = await asyncio.wait_for(conn.reader.readline(), self.timeout)
                    if line in (b"\r\n", b"\n", b""):
                        break
                    name, _, value = line.decode("latin-1").partition(":")
                    response_headers[name.strip().lower()] = value.strip()
            except (ConnectionError, OSError, IndexError, ValueError) as exc:
                conn.close()
                if reused and attempt == 0:
                    continue
                raise ClientError(f"no answer from {self.config.server}: {exc}") from None
            except BaseException:
                conn.close()
                raise
            if response_headers.get("connection", "").lower() == "close":
                conn.reusable = False
            # Streams (watches) have no read deadline: the informer's stall detector owns that.
            timeout = None if response_headers.get("transfer-encoding") else self.timeout
            return _TcpResponse(status, response_headers, conn, self._release, timeout)
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        while self._idle:
            self._idle.pop().close()


def _client_context(config: ClusterConfig) -> ssl.SSLContext:
    """The TLS context for `config`: its CA (or no verification at all when `insecure`) and its
    client certificate, if any."""
    try:
        if config.insecure:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        else:
            context = ssl.create_default_context(cadata=config.ca_pem.decode("ascii") if config.ca_pem else None)
        if config.cert_pem and config.key_pem:
            with private_pem_files(config) as files:
                context.load_cert_chain(str(files.cert), str(files.key))
    except (ssl.SSLError, ValueError) as exc:
        raise ClientError(
            f"the certificates in {config.source} cannot be loaded ({exc}); re-copy them "
            "from the server's admin.kubeconfig"
        ) from None
    context.set_alpn_protocols(["http/1.1"])
    return context


# -- in process -------------------------------------------------------------------------------


@dataclass
class _AsgiResponse:
    status: int
    headers: dict[str, str]
    _messages: asyncio.Queue[dict[str, Any] | None]
    _disconnect: asyncio.Event
    _task: asyncio.Task[None]
    _first: list[bytes] = field(default_factory=list)

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            for chunk in self._first:
                yield chunk
            while True:
                message = await self._messages.get()
                if message is None:
                    return
                body = message.get("body", b"")
                if body:
                    yield body
                if not message.get("more_body", False):
                    return
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        self._disconnect.set()
        if not self._task.done():
            # Give the app a moment to see the disconnect and end by itself, as over a socket.
            with contextlib.suppress(TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(self._task), 1.0)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


class InProcessTransport:
    """Calls an ASGI app directly, as the given identity (authz and admission still apply)."""

    def __init__(self, app: ASGIApp, identity: object) -> None:
        self.app = app
        self.identity = identity

    @property
    def ca_pem(self) -> bytes | None:
        """The cluster CA, if the app publishes it (the API server does, once started)."""
        value = getattr(self.app, "cluster_ca_pem", None)
        return value if isinstance(value, bytes) else None

    async def open(
        self, method: str, target: str, headers: Headers, body: bytes
    ) -> StreamingResponse:
        path, _, query_string = target.partition("?")
        raw_headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        raw_headers.append((b"content-length", str(len(body)).encode()))
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "https",
            "path": path,
            "raw_path": path.encode("latin-1"),
            "query_string": query_string.encode("latin-1"),
            "root_path": "",
            "headers": raw_headers,
            "client": None,
            "server": None,
            "hypermesh.identity": self.identity,
        }
        messages: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        disconnect = asyncio.Event()
        sent_body = False

        async def receive() -> dict[str, Any]:
            nonlocal sent_body
            if not sent_body:
                sent_body = True
                return {"type": "http.request", "body": body, "more_body": False}
            await disconnect.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if disconnect.is_set() and message["type"] == "http.response.body":
                return
            messages.put_nowait(message)

        async def serve() -> None:
            await self.app(scope, receive, send)

        task = asyncio.get_running_loop().create_task(serve())
        task.add_done_callback(lambda _: messages.put_nowait(None))
        start = await messages.get()
        if start is None or start["type"] != "http.response.start":
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise ClientError(f"the in-process server failed: {task.exception()}")
            raise ClientError("the in-process server ended without a response")
        response_headers = {
            k.decode("latin-1").lower(): v.decode("latin-1") for k, v in start.get("headers", [])
        }
        return _AsgiResponse(int(start["status"]), response_headers, messages, disconnect, task)

    async def aclose(self) -> None:
        return None


# -- the client -------------------------------------------------------------------------------


class AsyncClient:
    """The Kubernetes verbs over one `Transport`; objects are plain dicts."""

    def __init__(self, transport: Transport, *, server: str = "in-process") -> None:
        self.transport = transport
        self.server = server

    @classmethod
    def from_config(
        cls, config: ClusterConfig, *, pool_size: int = 8, timeout: float = 30.0
    ) -> AsyncClient:
        """HTTPS on TCP to the kubeconfig context's server."""
        return cls(TcpTransport(config, pool_size=pool_size, timeout=timeout), server=config.server)

    @classmethod
    def in_process(cls, app: ASGIApp, identity: object) -> AsyncClient:
        """Direct calls into the server's ASGI app as `identity` (a hypermesh.pki.Identity)."""
        return cls(InProcessTransport(app, identity))

    async def aclose(self) -> None:
        """Close idle connections."""
        await self.transport.aclose()

    @property
    def ca_pem(self) -> bytes | None:
        """The cluster CA as PEM, when the transport knows it (a node agent trusts the API
        server's client certificate by it); None otherwise."""
        value = getattr(self.transport, "ca_pem", None)
        return value if isinstance(value, bytes) else None

    def use_client_certificate(self, cert_pem: bytes, key_pem: bytes) -> None:
        """Authenticate new connections with this certificate from now on (see the module
        docstring); ClientError when it cannot be loaded or the transport has no certificates."""
        swap = getattr(self.transport, "use_client_certificate", None)
        if swap is None:
            raise ClientError(f"the client of {self.server} has no certificate to replace")
        swap(cert_pem, key_pem)

    # Raw requests

    async def _open(
        self,
        method: str,
        path: str,
        query: Query | None,
        body: Any,
        content_type: str,
        accept: str,
    ) -> StreamingResponse:
        target = quote(path, safe="/:@!$&'()*+,;=-._~%")
        if query:
            target += "?" + urlencode(list(query.items()) if isinstance(query, Mapping) else query)
        if body is None:
            data = b""
        elif isinstance(body, bytes):
            data = body
        else:
            data = orjson.dumps(body)
        headers: Headers = [("Accept", accept), ("User-Agent", USER_AGENT)]
        if data or method in ("POST", "PUT", "PATCH"):
            headers.append(("Content-Type", content_type))
        response = await self.transport.open(method, target, headers, data)
        if response.status >= 400:
            error_body = await read_all(response)
            raise ApiError.from_response(response.status, error_body, url=self.server + path)
        return response

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: Query | None = None,
        body: Any = None,
        content_type: str = "application/json",
        accept: str = "application/json",
    ) -> tuple[int, dict[str, str], bytes]:
        """One request; raises `ApiError` for a status of 400 or more."""
        response = await self._open(method, path, query, body, content_type, accept)
        return response.status, response.headers, await read_all(response)

    async def stream(
        self, method: str, path: str, *, query: Query | None = None
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Decoded newline-delimited JSON objects as they arrive (close it to end early)."""
        response = await self._open(method, path, query, None, "application/json", "application/json")
        pending = b""
        try:
            async for chunk in response.chunks():
                pending += chunk
                if b"\n" not in chunk:
                    continue
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield _parse_line(line, path)
            if pending.strip():
                yield _parse_line(pending, path)
        finally:
            await response.aclose()

    async def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        _, _, data = await self.request(method, path, **kwargs)
        value = orjson.loads(data) if data else {}
        if not isinstance(value, dict):
            raise ClientError(f"{self.server}{path} answered with JSON that is not an object")
        return value

    # Typed verbs

    async def get(self, res: Resource, name: str, namespace: str | None = None) -> dict[str, Any]:
        """One object."""
        return await self._json("GET", res.path(_ns(res, namespace), name))

    async def list(
        self,
        res: Resource,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        limit: int = 500,
    ) -> dict[str, Any]:
        """Every matching object as one List, following `continue` tokens to the end."""
        query: list[tuple[str, str]] = []
        if label_selector:
            query.append(("labelSelector", label_selector))
        if field_selector:
            query.append(("fieldSelector", field_selector))
        if limit > 0:
            query.append(("limit", str(limit)))
        path = res.path(namespace if res.namespaced else None)
        result: dict[str, Any] | None = None
        items: list[Any] = []
        token = ""
        while True:
            page = await self._json(
                "GET", path, query=query + ([("continue", token)] if token else [])
            )
            if result is None:
                result = page
            items.extend(page.get("items") or [])
            token = (page.get("metadata") or {}).get("continue") or ""
            if not token:
                break
        result["items"] = items
        result.setdefault("metadata", {}).pop("continue", None)
        return result

    async def create(
        self,
        res: Resource,
        obj: dict[str, Any],
        namespace: str | None = None,
        *,
        field_manager: str = "hypermesh",
    ) -> dict[str, Any]:
        """Create `obj` (409 AlreadyExists if it does)."""
        ns = _ns(res, namespace or (obj.get("metadata") or {}).get("namespace"))
        return await self._json(
            "POST", res.path(ns), query=[("fieldManager", field_manager)], body=obj
        )

    async def replace(
        self, res: Resource, obj: dict[str, Any], *, subresource: str | None = None
    ) -> dict[str, Any]:
        """PUT `obj`; its metadata.resourceVersion must be current or the answer is 409."""
        meta = obj.get("metadata") or {}
        path = res.path(_ns(res, meta.get("namespace")), meta["name"], subresource)
        return await self._json("PUT", path, body=obj)

    async def patch(
        self,
        res: Resource,
        name: str,
        namespace: str | None,
        body: Any,
        *,
        patch_type: PatchType = "merge",
        subresource: str | None = None,
        field_manager: str = "hypermesh",
        force: bool = False,
    ) -> dict[str, Any]:
        """Patch one object or a subresource; `apply` is server-side apply as `field_manager`."""
        query = [("fieldManager", field_manager)]
        if force:
            query.append(("force", "true"))
        return await self._json(
            "PATCH",
            res.path(_ns(res, namespace), name, subresource),
            query=query,
            body=body,
            content_type=PATCH_CONTENT_TYPES[patch_type],
        )

    async def apply(
        self, res: Resource, obj: dict[str, Any], *, field_manager: str, force: bool = False
    ) -> dict[str, Any]:
        """Server-side apply of `obj` (a full intent of the fields `field_manager` owns)."""
        meta = obj.get("metadata") or {}
        return await self.patch(
            res,
            meta["name"],
            meta.get("namespace"),
            obj,
            patch_type="apply",
            field_manager=field_manager,
            force=force,
        )

    async def update_status(
        self,
        res: Resource,
        name: str,
        namespace: str | None,
        status: dict[str, Any],
        *,
        field_manager: str = "hypermesh",
    ) -> dict[str, Any]:
        """Merge-patch `status` into the object's /status subresource."""
        return await self.patch(
            res,
            name,
            namespace,
            {"status": status},
            subresource="status",
            field_manager=field_manager,
        )

    async def bind(
        self, res: Resource, name: str, namespace: str, node: str, *, resource_version: str | None = None
    ) -> dict[str, Any]:
        """POST a Binding to the object's `binding` subresource (409 if it is already bound)."""
        return await self._json(
            "POST", res.path(namespace, name, "binding"), body=binding_body(name, node, resource_version)
        )

    async def bind_many(
        self, bindings: Sequence[tuple[str, str, str, str | None]]
    ) -> Sequence[dict[str, Any]]:
        """Bind many Instances in one request: (namespace, name, node, resourceVersion) each.

        Returns one Status per binding, in order; a failed item (`status: Failure`, `code` 409
        or 404) fails only itself."""
        items = []
        for namespace, name, node, rv in bindings:
            item = binding_body(name, node, rv)
            item["metadata"]["namespace"] = namespace
            items.append(item)
        body = {"apiVersion": "hypermesh.io/v1", "kind": "BindingList", "items": items}
        answer = await self._json("POST", BINDINGS_PATH, body=body)
        results = answer.get("items")
        if not isinstance(results, list) or len(results) != len(items):
            raise ClientError(f"{self.server}{BINDINGS_PATH} answered without one result per binding")
        return results

    async def delete(
        self,
        res: Resource,
        name: str,
        namespace: str | None = None,
        *,
        propagation: str | None = None,
    ) -> dict[str, Any]:
        """Delete one object; returns the object (finalizers pending) or a Status."""
        body = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if propagation:
            body["propagationPolicy"] = propagation
        return await self._json("DELETE", res.path(_ns(res, namespace), name), body=body)

    async def logs(
        self,
        res: Resource,
        name: str,
        namespace: str,
        *,
        container: str | None = None,
        follow: bool = False,
        previous: bool = False,
        tail_lines: int | None = None,
        limit_bytes: int | None = None,
    ) -> AsyncGenerator[bytes, None]:
        """A container's output from the `log` subresource, as it arrives (close to stop a
        follow); stdout first, then stderr (see hypermesh/runtime/endpoint.py)."""
        query = log_query(
            container=container,
            follow=follow,
            previous=previous,
            tail_lines=tail_lines,
            limit_bytes=limit_bytes,
        )
        path = res.path(namespace, name, "log")
        response = await self._open("GET", path, query, None, JSON, LOG_ACCEPT)
        try:
            async for chunk in response.chunks():
                yield chunk
        finally:
            await response.aclose()

    async def exec(
        self,
        res: Resource,
        name: str,
        namespace: str,
        command: Sequence[str],
        *,
        container: str | None = None,
        timeout_seconds: int | None = None,
    ) -> dict[str, Any]:
        """Run `command` in the Instance's container (no input, no terminal); returns the
        ExecResult: `exitCode`, `stdout`, `stderr`, `encoding` (text or base64), `timedOut`."""
        query = exec_query(command, container=container, timeout_seconds=timeout_seconds)
        return await self._json("POST", res.path(namespace, name, "exec"), query=query)

    def watch(
        self,
        res: Resource,
        namespace: str | None = None,
        *,
        resource_version: str | None = None,
        timeout_seconds: int | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        bookmarks: bool = True,
    ) -> AsyncGenerator[dict[str, Any], None]:
        """`{"type", "object"}` events; an ERROR event with a 410 Status means "relist"."""
        query: list[tuple[str, str]] = [("watch", "true")]
        if bookmarks:
            query.append(("allowWatchBookmarks", "true"))
        if resource_version is not None:
            query.append(("resourceVersion", resource_version))
        if timeout_seconds is not None:
            query.append(("timeoutSeconds", str(timeout_seconds)))
        if label_selector:
            query.append(("labelSelector", label_selector))
        if field_selector:
            query.append(("fieldSelector", field_selector))
        return self.stream("GET", res.path(namespace if res.namespaced else None), query=query)


def resource_from_type(rtype: Any) -> Resource:
    """A client `Resource` from a `hypermesh.resources.registry.ResourceType`."""
    return Resource(
        group=rtype.group,
        version=rtype.version,
        kind=rtype.kind,
        plural=rtype.plural,
        singular=rtype.singular,
        namespaced=rtype.namespaced,
        short_names=tuple(rtype.short_names),
        subresources=("status",) if getattr(rtype, "has_status", False) else (),
    )


# The API server's batch binding endpoint (hypermesh/api/binding.py).
BINDINGS_PATH = "/apis/hypermesh.io/v1/bindings"


def binding_body(name: str, node: str, resource_version: str | None = None) -> dict[str, Any]:
    """A core v1 Binding of `name` to `node`, guarded by `resource_version` when given."""
    meta: dict[str, Any] = {"name": name}
    if resource_version:
        meta["resourceVersion"] = resource_version
    return {"apiVersion": "v1", "kind": "Binding", "metadata": meta, "target": {"kind": "Node", "name": node}}


def _ns(res: Resource, namespace: str | None) -> str | None:
    return namespace if res.namespaced else None


def _parse_line(line: bytes, where: str) -> dict[str, Any]:
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise ClientError(f"{where} sent a stream line that is not JSON: {line[:120]!r}") from None
    if not isinstance(value, dict):
        raise ClientError(f"{where} sent a stream line that is not an object: {line[:120]!r}")
    return value
