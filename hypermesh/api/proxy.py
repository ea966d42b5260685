"""Instances' `log` and `exec` subresources: the API server relays them to the node agent.

Only the agent on an Instance's node can read its containers' output or enter them, and users
are not expected to reach nodes at all. So, as kube-apiserver does for `pods/log` and
`pods/exec`, the API server takes the request (authenticated like any other), finds the
Instance's node and the endpoint that Node publishes, and relays the request there and the
answer back, streaming it as it comes: `kubectl get --raw .../instances/NAME/log?follow=true`
prints lines as the container writes them.

- `GET .../namespaces/NS/instances/NAME/log?container=&follow=&previous=&tailLines=&limitBytes=&stream=`
  answers `text/plain`; `timestamps`, `sinceSeconds` and `sinceTime` are passed on and refused
  by the agent, whose files hold no times (see hypermesh/runtime/endpoint.py for the merge of
  stdout and stderr).
- `POST .../namespaces/NS/instances/NAME/exec?command=A&command=B&container=&timeoutSeconds=`
  runs a command without input or terminal and answers an `ExecResult`
  (`{exitCode, stdout, stderr, encoding: text|base64, timedOut}`).
- `GET .../exec?command=...&container=&stdin=&stdout=&stderr=&tty=` with a WebSocket upgrade
  (`v5.channel.k8s.io`, else `v4.channel.k8s.io`) is an interactive session, as `kubectl exec
  -it` opens one: this server opens a WebSocket to the agent with the same subprotocols and
  relays whole messages both ways (see hypermesh/client/remotecommand.py for their framing),
  reading from one side only when the other has taken the previous message, until either ends.
  A refusal before the session starts is an HTTP answer with a `Status`; a break afterwards a
  Failure `Status` on the error channel.

Trust. Nodes do not have certificates from the cluster CA yet, so each agent signs its own
serving certificate and publishes its SHA-256 in its Node (`status.daemonEndpoints.
agentEndpoint.certificateHash`); this module accepts the agent's TLS connection only if the
certificate it presents hashes to exactly that (`check_pin`), and sends nothing before. The
agent in turn wants a client certificate from the cluster CA naming `system:apiserver`: at
start the server issues one for itself, in memory, with the CA key under `<data dir>/pki`
(kube-apiserver is given a `--kubelet-client-certificate` for the same purpose). Writing a
Node's status is therefore what lets a process claim to be that node's agent; that is the
same trust every other component already places in Node objects until RBAC restricts who
may write them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import re
import shutil
import ssl
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

import orjson

from hypermesh.api import errors
from hypermesh.api.http import Receive, Request, Send, send_bytes
from hypermesh.api.storage import ObjectStorage
from hypermesh.client import remotecommand
from hypermesh.client.websocket import GOING_AWAY, NORMAL_CLOSURE, AsyncWebSocket, Rejected
from hypermesh.pki.ca import CertificateAuthority
from hypermesh.resources.registry import Registry, ResourceType
from hypermesh.transport.asgi import DISCONNECTED_SCOPE_KEY

log = logging.getLogger(__name__)

SUBRESOURCES = frozenset({"log", "exec"})
# The user the server's client certificate names; agents let it in (and administrators).
APISERVER_USER = "system:apiserver"
# Which of a Node's addresses to dial, most preferred first.
ADDRESS_TYPES = ("InternalIP", "ExternalIP", "InternalDNS", "ExternalDNS", "Hostname")
CONNECT_TIMEOUT = 10.0
# A log answer's head comes at once; an exec's only when the command has ended.
HEAD_TIMEOUT = 30.0
EXEC_TIMEOUT = 60
# The client certificate is issued again after this long (it is valid for a year).
CREDENTIALS_MAX_AGE = 7 * 24 * 3600.0
# Largest error or exec answer relayed (an exec keeps at most 1 MiB per stream, base64 4/3 of it).
MAX_ANSWER = 8 * 1024 * 1024
_HASH = re.compile(r"sha256:[0-9a-f]{64}")
_LOG_PARAMS = ("follow", "previous", "tailLines", "limitBytes", "stream", "timestamps", "sinceSeconds", "sinceTime")
_EXEC_PARAMS = ("command", "timeoutSeconds", "stdin", "tty")
_SESSION_PARAMS = ("command", "stdin", "stdout", "stderr", "tty")


def proxied(rtype: ResourceType) -> bool:
    """Only Instances have containers to read or enter."""
    return rtype.group == "hypermesh.io" and rtype.kind == "Instance"


def pki_dir_of(store: Any) -> Path | None:
    """`<data dir>/pki` for a store kept in `<data dir>/state.db`, as `hypermesh server` lays
    them out; None for a store without a path (memory)."""
    path = getattr(store, "path", None)
    return Path(path).parent / "pki" if path else None


class PinMismatch(Exception):
    """The agent's certificate is not the one its Node publishes."""


def check_pin(der: bytes | None, expected: str | None) -> None:
    """Accept a peer certificate (DER) only if it hashes to `expected` (`sha256:<hex>`)."""
    if not expected:
        raise PinMismatch("its Node publishes no certificate hash (status.daemonEndpoints.agentEndpoint.certificateHash)")
    if not _HASH.fullmatch(expected):
        raise PinMismatch(f"its Node publishes certificate hash {expected!r}, which is not sha256:<64 hex digits>")
    if not der:
        raise PinMismatch("it presented no certificate")
    actual = "sha256:" + hashlib.sha256(der).hexdigest()
    if not hmac.compare_digest(actual, expected):
        raise PinMismatch(f"it presented a certificate with {actual}, but its Node publishes {expected}")


# -- credentials -------------------------------------------------------------------------------


@dataclass(frozen=True)
class AgentCredentials:
    """The TLS client side of talking to agents: our certificate, no chain checks (pins do)."""

    context: ssl.SSLContext
    ca_pem: bytes
    issued: float


def issue_credentials(pki_dir: Path) -> AgentCredentials:
    """A fresh `system:apiserver` client certificate from the cluster CA in `pki_dir`, loaded
    into a TLS context; the key exists on disk only while the context reads it."""
    ca = CertificateAuthority.load(pki_dir)
    cert_pem, key_pem = ca.issue(APISERVER_USER, client=True, days=365)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # The agent's certificate is self-signed: the pin checked after the handshake replaces
    # chain and name verification.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    directory = Path(tempfile.mkdtemp(prefix="hypermesh-agent-client-"))
    try:
        (directory / "client.pem").write_bytes(cert_pem + key_pem)
        context.load_cert_chain(directory / "client.pem")
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    context.set_alpn_protocols(["http/1.1"])
    return AgentCredentials(context, ca.cert_pem, time.monotonic())


# -- where the agent is ------------------------------------------------------------------------


@dataclass(frozen=True)
class AgentAddress:
    """One node agent's endpoint, as its Node publishes it."""

    node: str
    host: str
    port: int
    certificate_hash: str | None

    @property
    def authority(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def agent_address(node: dict[str, Any]) -> AgentAddress:
    """Where a Node's agent serves logs and exec; 503 when the Node does not say."""
    name = node["metadata"]["name"]
    status = node.get("status") or {}
    endpoint = (status.get("daemonEndpoints") or {}).get("agentEndpoint") or {}
    port = endpoint.get("port")
    addresses = {a.get("type"): a.get("address") for a in status.get("addresses") or [] if isinstance(a, dict)}
    host = next((addresses[t] for t in ADDRESS_TYPES if addresses.get(t)), None)
    if not isinstance(port, int) or not host:
        missing = "status.daemonEndpoints.agentEndpoint.port" if not isinstance(port, int) else "status.addresses"
        raise errors.ApiError(
            503, "ServiceUnavailable",
            f'node "{name}" publishes no agent endpoint ({missing} is empty): is its agent running?',
        )  # fmt: skip
    return AgentAddress(name, str(host), port, endpoint.get("certificateHash"))


# -- the relay ---------------------------------------------------------------------------------


class AgentProxy:
    """Serves the `log` and `exec` subresources of Instances by relaying them to agents."""

    def __init__(self, storage: ObjectStorage, registry: Registry, shutdown: asyncio.Event, pki_dir: Path | None) -> None:
        self.storage = storage
        self.registry = registry
        self.shutdown = shutdown
        self.pki_dir = pki_dir
        self._credentials: AgentCredentials | None = None
        self._unavailable = "the server was started without a cluster CA directory"

    def load(self) -> bytes | None:
        """Issue the client certificate; returns the cluster CA (PEM), or None without one."""
        if self.pki_dir is None:
            return None
        try:
            self._credentials = issue_credentials(self.pki_dir)
        except (OSError, ValueError, TypeError) as exc:
            self._unavailable = f"the cluster CA in {self.pki_dir} cannot be used ({exc})"
            # An embedded server (tests, benchmarks) often has no CA at all; a broken one is news.
            level = logging.INFO if isinstance(exc, FileNotFoundError) else logging.WARNING
            log.log(level, "no logs or exec through this server: %s", self._unavailable)
            return None
        return self._credentials.ca_pem

    async def serve(self, req: Request, send: Send, rtype: ResourceType, namespace: str, name: str, sub: str) -> None:
        """One `log` or `exec` request, answered from the Instance's node agent."""
        if sub == "log" and req.method != "GET":
            raise errors.method_not_allowed("logs are read with GET")
        if sub == "exec" and req.method == "GET":
            raise errors.bad_request(
                "Upgrade request required: GET on exec opens an interactive session over a WebSocket "
                "(Connection: Upgrade, Upgrade: websocket, Sec-WebSocket-Protocol: "
                f"{', '.join(remotecommand.SUBPROTOCOLS)}); a command without input or terminal is run with POST"
            )
        if sub == "exec" and req.method != "POST":
            raise errors.method_not_allowed("exec is requested with POST, or with a WebSocket upgrade (GET) for an interactive session")
        query = parse_qsl(req.extra.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        address, target = await self._agent_target(rtype, namespace, name, sub, query)
        if sub == "log":
            await self._relay_stream(req, send, address, target)
        else:
            timeout = _timeout_seconds(dict(query).get("timeoutSeconds"))
            await self._relay_whole(send, address, "POST", target, timeout + HEAD_TIMEOUT)

    async def _agent_target(
        self, rtype: ResourceType, namespace: str, name: str, sub: str, query: list[tuple[str, str]], *, session: bool = False
    ) -> tuple[AgentAddress, str]:
        """Where the agent of the Instance's node serves `sub`, and the request target there."""
        instance = await self.storage.get_required(rtype, namespace, name)
        container = _container(instance, dict(query).get("container"))
        node_name = (instance.get("spec") or {}).get("nodeName")
        if not node_name:
            what = "no logs" if sub == "log" else "no containers to run a command in"
            raise errors.bad_request(f'instance "{name}" is not bound to a node yet (spec.nodeName is empty), so it has {what}')
        nodes = self.registry.by_plural("hypermesh.io", "v1", "nodes")
        node = await self.storage.get(nodes, None, node_name) if nodes is not None else None
        if node is None:
            raise errors.ApiError(503, "ServiceUnavailable", f'node "{node_name}" of instance "{name}" does not exist')
        address = agent_address(node)
        wanted = _LOG_PARAMS if sub == "log" else _SESSION_PARAMS if session else _EXEC_PARAMS
        forwarded = [(k, v) for k, v in query if k in wanted]
        forwarded.append(("uid", str(instance["metadata"].get("uid", ""))))
        path = "/".join(quote(part, safe="") for part in ("logs" if sub == "log" else "exec", namespace, name, container))
        return address, f"/{path}?{urlencode(forwarded)}"

    async def serve_websocket(
        self, scope: dict[str, Any], receive: Receive, send: Send, rtype: ResourceType, namespace: str, name: str, sub: str
    ) -> None:
        """An interactive exec session relayed to the Instance's node agent.

        Until the client's upgrade is accepted, failures raise ApiError (the caller refuses the
        upgrade with its Status); afterwards they end the session with a Failure Status on the
        error channel.
        """
        if sub != "exec":
            raise errors.bad_request(f"only exec takes a WebSocket upgrade; {sub} is requested with a plain HTTP request")
        offered = [p for p in scope.get("subprotocols") or [] if p in remotecommand.SUBPROTOCOLS]
        if not offered:
            raise errors.bad_request(
                f"none of the WebSocket subprotocols offered ({', '.join(scope.get('subprotocols') or []) or 'none'}) "
                f"is supported: offer {' or '.join(remotecommand.SUBPROTOCOLS)}"
            )
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        address, target = await self._agent_target(rtype, namespace, name, sub, query, session=True)
        agent = await self._open_websocket(address, target, offered)
        try:
            await send({"type": "websocket.accept", "subprotocol": agent.subprotocol})
            await self._relay_session(receive, send, scope.get(DISCONNECTED_SCOPE_KEY) or asyncio.Event(), agent, address)
        finally:
            agent.abort()

    async def _open_websocket(self, address: AgentAddress, target: str, subprotocols: list[str]) -> AsyncWebSocket:
        reader, writer = await self._connect(address)
        agent = AsyncWebSocket(reader, writer)
        try:
            await asyncio.wait_for(
                agent.handshake(host=address.authority, target=target, subprotocols=subprotocols,
                                headers=[("user-agent", "hypermesh-apiserver")]),
                HEAD_TIMEOUT,
            )  # fmt: skip
        except Rejected as exc:
            agent.abort()
            # The agent's refusal is a Status written for the user ("container ... is not running").
            raise _agent_error(address, exc.status, exc.body) from None
        except (OSError, TimeoutError, ValueError, ConnectionError) as exc:
            agent.abort()
            raise _unreachable(address, f"no WebSocket session ({exc.__class__.__name__}: {exc})") from None
        if agent.subprotocol not in subprotocols:
            agent.abort()
            raise _unreachable(address, f"it chose the subprotocol {agent.subprotocol!r}, which was not offered")
        return agent

    async def _relay_session(
        self, receive: Receive, send: Send, disconnected: asyncio.Event, agent: AsyncWebSocket, address: AgentAddress
    ) -> None:
        status_seen = False

        async def upstream() -> None:
            # Client to agent: a message is received only once the previous one is written.
            while (message := await receive())["type"] != "websocket.disconnect":
                data = message.get("bytes")
                await agent.send(data if data is not None else (message.get("text") or "").encode())

        async def downstream() -> None:
            nonlocal status_seen
            while (data := await agent.receive()) is not None:
                status_seen = status_seen or data[:1] == bytes((remotecommand.ERROR,))
                await send({"type": "websocket.send", "bytes": data})

        up, down = asyncio.ensure_future(upstream()), asyncio.ensure_future(downstream())
        gone, stopping = asyncio.ensure_future(disconnected.wait()), asyncio.ensure_future(self.shutdown.wait())
        try:
            done, _ = await asyncio.wait({up, down, gone, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (up, down, gone, stopping):
                task.cancel()
        # The client left (its disconnect, or the end of its messages): nothing to tell it.
        client_gone = gone in done or (up in done and up.exception() is None)
        if not client_gone:
            broken = [task.exception() for task in (up, down) if task in done and task.exception() is not None]
            if stopping in done:
                ending = remotecommand.failure_status("the API server is shutting down", reason="ServiceUnavailable", code=503)
            elif broken and not status_seen:
                log.warning("exec session with node %s broke off: %s", address.node, broken[0])
                ending = remotecommand.failure_status(f'the connection to the agent of node "{address.node}" broke off: {broken[0]}')
            else:
                ending = None
            with contextlib.suppress(Exception):
                if ending is not None:
                    await send({"type": "websocket.send", "bytes": remotecommand.status_frame(ending)})
                await send({"type": "websocket.close", "code": GOING_AWAY if stopping in done else NORMAL_CLOSURE})
        # Whoever ended first, the agent hears of it: a client gone means its command is killed.
        await agent.close(GOING_AWAY if stopping in done else NORMAL_CLOSURE)

    async def _relay_stream(self, req: Request, send: Send, address: AgentAddress, target: str) -> None:
        response = await self._open(address, "GET", target, HEAD_TIMEOUT)
        try:
            if response.status >= 400:
                await send_bytes(send, response.status, await response.read(MAX_ANSWER), content_type=response.content_type)
                return
            headers = [(b"content-type", response.content_type), (b"cache-control", b"no-cache")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            relay = asyncio.ensure_future(_copy_body(response, send))
            gone = asyncio.ensure_future(_until_disconnect(req))
            stopping = asyncio.ensure_future(self.shutdown.wait())
            try:
                done, _ = await asyncio.wait({relay, gone, stopping}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (relay, gone, stopping):
                    task.cancel()
            if relay in done and relay.exception() is not None:
                # Too late for an error status: the client sees the stream end early.
                log.warning("log stream from node %s broke off: %s", address.node, relay.exception())
            if gone not in done:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            response.close()

    async def _relay_whole(self, send: Send, address: AgentAddress, method: str, target: str, timeout: float) -> None:
        response = await self._open(address, method, target, timeout)
        try:
            body = await asyncio.wait_for(response.read(MAX_ANSWER), timeout)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
            raise _unreachable(address, f"the answer did not arrive whole ({exc.__class__.__name__})") from None
        finally:
            response.close()
        await send_bytes(send, response.status, body, content_type=response.content_type)

    async def _connect(self, address: AgentAddress) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A TLS connection to the agent with our client certificate, whose certificate is the
        one its Node publishes; nothing is sent before the pin is checked."""
        credentials = await self._client_credentials()
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(address.host, address.port, ssl=credentials.context),
                CONNECT_TIMEOUT,
            )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            raise _unreachable(address, str(exc) or exc.__class__.__name__) from None
        try:
            ssl_object = writer.get_extra_info("ssl_object")
            check_pin(ssl_object.getpeercert(binary_form=True) if ssl_object else None, address.certificate_hash)
        except PinMismatch as exc:
            writer.close()
            raise _unreachable(address, f"refusing the connection: {exc}") from None
        return reader, writer

    async def _open(self, address: AgentAddress, method: str, target: str, timeout: float) -> _AgentResponse:
        reader, writer = await self._connect(address)
        head = (
            f"{method} {target} HTTP/1.1\r\nHost: {address.authority}\r\nUser-Agent: hypermesh-apiserver\r\n"
            "Accept: */*\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        try:
            writer.write(head.encode("latin-1"))
            await writer.drain()
            status, headers = await asyncio.wait_for(_read_head(reader), timeout)
        except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError) as exc:
            writer.close()
            raise _unreachable(address, f"no answer ({exc.__class__.__name__}: {exc})") from None
        return _AgentResponse(status, headers, reader, writer)

    async def _client_credentials(self) -> AgentCredentials:
        credentials = self._credentials
        if credentials is None:
            raise errors.ApiError(503, "ServiceUnavailable", f"this server cannot reach node agents: {self._unavailable}")
        if time.monotonic() - credentials.issued > CREDENTIALS_MAX_AGE and self.pki_dir is not None:
            with contextlib.suppress(OSError, ValueError, TypeError):
                self._credentials = credentials = await asyncio.to_thread(issue_credentials, self.pki_dir)
        return credentials


@dataclass
class _AgentResponse:
    """An agent's answer whose head has been read."""

    status: int
    headers: dict[str, str]
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    @property
    def content_type(self) -> bytes:
        return self.headers.get("content-type", "application/json").encode("latin-1")

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives, whatever its framing."""
        reader = self.reader
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int((await reader.readline()).split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    return
                data = await reader.readexactly(size + 2)
                yield data[:-2]
        elif "content-length" in self.headers:
            remaining = int(self.headers["content-length"])
            while remaining > 0:
                data = await reader.read(min(remaining, 65536))
                if not data:
                    raise asyncio.IncompleteReadError(b"", remaining)
                remaining -= len(data)
                yield data
        else:
            while data := await reader.read(65536):
                yield data

    async def read(self, limit: int) -> bytes:
        """The whole body; ValueError past `limit` bytes."""
        parts: list[bytes] = []
        size = 0
        async for chunk in self.chunks():
            size += len(chunk)
            if size > limit:
                raise ValueError(f"the agent's answer is larger than {limit} bytes")
            parts.append(chunk)
        return b"".join(parts)

    def close(self) -> None:
        self.writer.close()


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    line = await reader.readline()
    parts = line.decode("latin-1").split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/"):
        raise ValueError(f"not an HTTP answer: {line[:60]!r}")
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


async def _copy_body(response: _AgentResponse, send: Send) -> None:
    async for chunk in response.chunks():
        if chunk:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})


async def _until_disconnect(req: Request) -> None:
    while (await req.receive())["type"] != "http.disconnect":
        pass


def _container(instance: dict[str, Any], wanted: str | None) -> str:
    """The container a request means: the one named, or the only one."""
    name = instance["metadata"]["name"]
    names = [str(c.get("name")) for c in (instance.get("spec") or {}).get("containers") or []]
    if wanted:
        if wanted not in names:
            raise errors.bad_request(f'container "{wanted}" is not valid for instance "{name}": choose one of [{" ".join(names)}]')
        return wanted
    if len(names) != 1:
        raise errors.bad_request(f'a container name must be specified for instance "{name}", choose one of: [{" ".join(names)}]')
    return names[0]


def _timeout_seconds(text: str | None) -> int:
    try:
        return max(1, int(text)) if text else EXEC_TIMEOUT
    except ValueError:
        raise errors.bad_request(f"timeoutSeconds={text!r} is not a whole number") from None


def _agent_error(address: AgentAddress, status: int, body: bytes) -> errors.ApiError:
    """The agent's error answer as ours: its Status when it sent one."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict) and parsed.get("kind") == "Status" and parsed.get("message"):
        return errors.ApiError(status, str(parsed.get("reason") or "BadRequest"), str(parsed["message"]))
    return _unreachable(address, f"it refused the session with HTTP {status}: {body[:200].decode(errors='replace')}")


def _unreachable(address: AgentAddress, why: str) -> errors.ApiError:
    return errors.ApiError(
        502, "BadGateway", f'cannot use the agent of node "{address.node}" at {address.authority}: {why}'
    )
