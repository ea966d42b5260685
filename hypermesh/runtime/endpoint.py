"""The node agent's HTTPS endpoint: container logs and exec, for the API server to proxy.

Users never reach a node directly. `nexus logs` and `kubectl get --raw .../instances/NAME/log`
ask the API server, which looks up the Instance's Node and forwards the request here, as
kube-apiserver does with kubelet's `/containerLogs` and `/exec`. The agent is the only process
that can read a container's files and enter its namespaces, so the work happens here; the API
server only relays bytes.

The contract (paths, query parameters, answers) is this module's:

- `GET /logs/{namespace}/{name}/{container}?uid=&follow=&previous=&tailLines=&limitBytes=&stream=`
  answers `text/plain` with the container's output. `stream` is `All` (the default), `Stdout`
  or `Stderr`, as in Kubernetes 1.32's split-stream logs.
- `POST /exec/{namespace}/{name}/{container}?uid=&command=ARG&command=ARG...&timeoutSeconds=`
  runs the command in the running container without input and answers an `ExecResult`.
- `GET /exec/...?uid=&command=...&stdin=&stdout=&stderr=&tty=` with a WebSocket upgrade
  (`v5.channel.k8s.io` or `v4.channel.k8s.io`) is an interactive session (`terminal`).
- Errors are Kubernetes `Status` objects, so the API server can pass them on unchanged.

`uid`, when given, must be the Instance's: an Instance deleted and created again under the same
name between the API server's read and this request is a different Instance.

Trust, until nodes get certificates from the cluster CA: the agent signs its own serving
certificate and publishes its SHA-256 in its Node (`status.daemonEndpoints.agentEndpoint`),
and the API server accepts this endpoint only if the certificate it is shown has that hash. In
the other direction the agent demands a client certificate signed by the cluster CA (the one in
its kubeconfig) naming the API server's user, `system:apiserver`, or a member of
`system:masters` (an administrator, as kubelet lets cluster-admins in); a node's own
certificate is refused, so one node cannot read another's logs. A revoked client certificate
is refused too (401), whatever it names: the agent follows the cluster's CertificateRevocations
and hands the endpoint its `revoked(serial)` check, and the endpoint closes the connections a
certificate holds when it becomes revoked (`Endpoint.close_revoked`), ending its log follows
and exec sessions.

Logs are read by `logreader` (stdout, then stderr; following polls the files), and the
`timestamps`, `sinceSeconds` and `sinceTime` options are refused rather than silently ignored,
since the files record no times. Interactive exec (a WebSocket on `/exec/...`) is `terminal`'s.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import hashlib
import ipaddress
import logging
import socket
import ssl
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote

import orjson
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hypermesh.pki import files as pki_files
from hypermesh.pki.ca import cert_to_pem, generate_key, key_to_pem
from hypermesh.pki.identity import Identity
from hypermesh.resources.meta import Model
from hypermesh.runtime import imageapi, logfiles, runc, terminal
from hypermesh.runtime.logreader import LogOptions, read_logs
from hypermesh.runtime.supervisor import NodeServices, container_id
from hypermesh.transport.asgi import (
    DISCONNECTED_SCOPE_KEY,
    IDENTITY_SCOPE_KEY,
    Receive,
    Scope,
    Send,
    deny_websocket,
)
from hypermesh.transport.sockets import tcp_listener
from hypermesh.transport.tcp import ConnectionsBySerial, bound_protocols

log = logging.getLogger(__name__)

__all__ = [
    "ADMIN_GROUP",
    "APISERVER_USER",
    "Endpoint",
    "EndpointApp",
    "ExecResult",
    "LogOptions",
    "ServingCertificate",
    "certificate_hash",
    "ensure_serving_certificate",
    "read_logs",
    "start",
]

# Who may call the endpoint (besides members of ADMIN_GROUP).
APISERVER_USER = "system:apiserver"
ADMIN_GROUP = "system:masters"
# An exec runs this long unless the request says otherwise, and never longer than the cap.
EXEC_TIMEOUT = 60
MAX_EXEC_TIMEOUT = 3600
# The serving certificate lasts this long and is replaced at a start this close to its end.
_CERT_DAYS = 365
_CERT_RENEW = datetime.timedelta(days=30)
_STREAM_NAMES: dict[str, tuple[logfiles.Stream, ...]] = {
    "All": logfiles.STREAMS,
    "Stdout": ("stdout",),
    "Stderr": ("stderr",),
}

# name, namespace -> the Instance as the agent's informer has it, or None.
InstanceLookup = Callable[[str, str], dict[str, Any] | None]
# A client certificate's serial -> whether it has been revoked.
RevocationCheck = Callable[[int | None], bool]


class ExecResult(Model):
    """The answer to an exec: the exit code and everything the command wrote.

    Output is text when both streams are valid UTF-8, and base64 (both streams) otherwise;
    `encoding` says which.
    """

    api_version: Literal["hypermesh.io/v1"] = "hypermesh.io/v1"
    kind: Literal["ExecResult"] = "ExecResult"
    exit_code: int
    stdout: str
    stderr: str
    encoding: Literal["text", "base64"] = "text"
    timed_out: bool = False

    @classmethod
    def of(cls, result: runc.ExecResult) -> ExecResult:
        """The wire form of what the runtime reported."""
        try:
            out, err = result.stdout.decode(), result.stderr.decode()
            encoding: Literal["text", "base64"] = "text"
        except UnicodeDecodeError:
            out = base64.b64encode(result.stdout).decode("ascii")
            err = base64.b64encode(result.stderr).decode("ascii")
            encoding = "base64"
        return cls(
            exit_code=result.exit_code,
            stdout=out,
            stderr=err,
            encoding=encoding,
            timed_out=result.timed_out,
        )


class EndpointError(Exception):
    """A request the endpoint answers with an error `Status`."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message

    def body(self) -> bytes:
        return orjson.dumps(
            {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": self.message,
                "reason": self.reason,
                "code": self.code,
            }
        )


def _bad_request(message: str) -> EndpointError:
    return EndpointError(400, "BadRequest", message)


# -- the serving certificate -------------------------------------------------------------------


@dataclass(frozen=True)
class ServingCertificate:
    """The agent's self-signed certificate and key, as files, and the hash it publishes."""

    cert_path: Path
    key_path: Path
    der: bytes

    @property
    def hash(self) -> str:
        return certificate_hash(self.der)


def certificate_hash(der: bytes) -> str:
    """`sha256:<hex>` of a DER certificate: the form Nodes publish and the API server pins."""
    return "sha256:" + hashlib.sha256(der).hexdigest()


def ensure_serving_certificate(
    directory: Path, *, node_name: str, addresses: Iterable[str] = ()
) -> ServingCertificate:
    """Load the serving certificate in `directory`, or make one; kept across restarts so the
    published hash stays valid while a restarted agent re-registers."""
    pki_files.ensure_private_dir(directory)
    cert_path, key_path = directory / "serving.crt", directory / "serving.key"
    with pki_files.locked(directory):
        cert = _load_if_current(cert_path, key_path)
        if cert is None:
            cert_pem, key_pem = _self_signed(node_name, addresses)
            pki_files.write_private(key_path, key_pem)
            pki_files.write_public(cert_path, cert_pem)
            cert = x509.load_pem_x509_certificate(cert_pem)
    return ServingCertificate(cert_path, key_path, cert.public_bytes(serialization.Encoding.DER))


def _load_if_current(cert_path: Path, key_path: Path) -> x509.Certificate | None:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    except (OSError, ValueError, TypeError):
        return None
    now = datetime.datetime.now(datetime.UTC)
    if key.public_key() != cert.public_key() or cert.not_valid_after_utc - now < _CERT_RENEW:
        return None
    return cert


def _self_signed(node_name: str, addresses: Iterable[str]) -> tuple[bytes, bytes]:
    key = generate_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"system:node:{node_name}")])
    now = datetime.datetime.now(datetime.UTC)
    alt_names: list[x509.GeneralName] = [x509.DNSName(node_name)]
    for address in addresses:
        with contextlib.suppress(ValueError):
            alt_names.append(x509.IPAddress(ipaddress.ip_address(address)))
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=_CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert_to_pem(cert), key_to_pem(key)


def server_context(serving: ServingCertificate, client_ca_pem: bytes) -> ssl.SSLContext:
    """TLS >= 1.2, our certificate, and a client certificate from the cluster CA required."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(serving.cert_path, serving.key_path)
    context.load_verify_locations(cadata=client_ca_pem.decode("ascii"))
    context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(["http/1.1"])
    return context


def allowed(identity: Identity | None) -> bool:
    """Whether a verified client may use the endpoint: the API server, or an administrator."""
    if identity is None:
        return False
    return identity.user == APISERVER_USER or ADMIN_GROUP in identity.groups


# -- the HTTP application ----------------------------------------------------------------------


class EndpointApp:
    """The ASGI application: authorization, routing, logs and exec."""

    def __init__(self, services: NodeServices, lookup: InstanceLookup, revoked: RevocationCheck | None = None) -> None:
        self.services = services
        self.lookup = lookup
        self.revoked: RevocationCheck = revoked or (lambda serial: False)
        # One event per open log stream, set to end it (client gone, or the agent stopping).
        self._streams: set[asyncio.Event] = set()
        # Set when the agent stops: interactive sessions end (and their commands are killed).
        self._stopping = asyncio.Event()

    def end_streams(self) -> None:
        """End every open log stream (follows included) at its next look at the files, and
        every interactive exec session."""
        self._stopping.set()
        for ended in self._streams:
            ended.set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            await self._route(scope, receive, send, _authorized(scope, self.revoked))
        except EndpointError as exc:
            await _send_bytes(send, exc.code, exc.body(), b"application/json")

    async def _route(self, scope: Scope, receive: Receive, send: Send, identity: Identity) -> None:
        if scope["path"] == "/images" or scope["path"].startswith("/images/"):
            try:
                await imageapi.serve(self.services, scope, receive, send, identity, scope["path"][len("/images"):])
            except imageapi.ImageRouteError as exc:
                raise EndpointError(exc.code, exc.reason, exc.message) from None
            return
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        kind, instance, container = self._target(scope["path"], query)
        if kind == "logs":
            if scope["method"] != "GET":
                raise EndpointError(405, "MethodNotAllowed", "logs are read with GET")
            await self._logs(receive, send, instance, container, dict(query))
        else:
            if scope["method"] != "POST":
                raise EndpointError(
                    405, "MethodNotAllowed",
                    "exec is requested with POST, or with a WebSocket upgrade for an interactive session",
                )  # fmt: skip
            await self._exec(send, instance, container, query, identity)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """An interactive exec session (`terminal`); anything else is refused with a Status."""
        try:
            identity = _authorized(scope, self.revoked)
            query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
            kind, instance, container = self._target(scope["path"], query)
            if kind != "exec":
                raise _bad_request("only exec takes a WebSocket upgrade: logs are read with a plain GET")
            try:
                options = terminal.exec_options(query)
                protocol = terminal.negotiate(list(scope.get("subprotocols") or []))
            except terminal.SessionError as exc:
                raise _bad_request(str(exc)) from None
            cid = await self._running_container(instance, container)
        except EndpointError as exc:
            await deny_websocket(send, exc.code, exc.body())
            return
        meta = instance["metadata"]
        log.info(
            "interactive exec in %s/%s/%s for %s: %s (tty=%s)",
            meta.get("namespace"), meta["name"], container, identity.user, options.command[0], options.tty,
        )  # fmt: skip
        await terminal.serve(
            receive, send,
            runtime=self.services.runtime, container_id=cid, options=options, protocol=protocol,
            disconnected=scope.get(DISCONNECTED_SCOPE_KEY) or asyncio.Event(), stopping=self._stopping,
            what=f'container "{container}"',
        )  # fmt: skip

    def _target(self, path: str, query: list[tuple[str, str]]) -> tuple[str, dict[str, Any], str]:
        """(logs|exec, the Instance, the container) that a path names."""
        kind, _, rest = path.lstrip("/").partition("/")
        parts = [unquote(p) for p in rest.split("/")]
        if kind not in ("logs", "exec") or len(parts) != 3 or not all(parts):
            raise EndpointError(
                404, "NotFound", "unknown path: use /logs/NAMESPACE/NAME/CONTAINER or /exec/NAMESPACE/NAME/CONTAINER"
            )
        namespace, name, container = parts
        instance = self._instance(namespace, name, dict(query).get("uid"))
        if container not in _container_names(instance):
            raise _bad_request(
                f'container "{container}" is not valid for instance "{name}": choose one of '
                f"[{' '.join(_container_names(instance))}]"
            )
        return kind, instance, container

    async def _running_container(self, instance: dict[str, Any], container: str) -> str:
        """The runtime's id of the container, which must be running to enter it."""
        meta = instance["metadata"]
        cid = container_id(str(meta["uid"]), container)
        state = await self.services.runtime.state(cid)
        if state is None or state.status != "running" or (self._workdir(instance, container) / "exit").exists():
            waiting = _waiting_reason(instance, container)
            raise _bad_request(
                f'container "{container}" in instance "{meta["name"]}" is not running'
                + (f" ({waiting})" if waiting else "")
            )
        return cid

    def _instance(self, namespace: str, name: str, uid: str | None) -> dict[str, Any]:
        instance = self.lookup(name, namespace)
        if instance is None or (uid and instance["metadata"].get("uid") != uid):
            raise EndpointError(
                404, "NotFound",
                f'instance "{namespace}/{name}"{f" (uid {uid})" if uid else ""} is not on node '
                f'"{self.services.node_name}"',
            )  # fmt: skip
        return instance

    def _workdir(self, instance: dict[str, Any], container: str) -> Path:
        return self.services.data_dir / "instances" / str(instance["metadata"]["uid"]) / container

    # Logs

    async def _logs(
        self, receive: Receive, send: Send, instance: dict[str, Any], container: str, query: dict[str, str]
    ) -> None:
        options = log_options(query)
        workdir = self._workdir(instance, container)
        name = instance["metadata"]["name"]
        if not any(logfiles.run_files(workdir, s, previous=options.previous) for s in logfiles.STREAMS):
            if options.previous:
                raise _bad_request(f'previous terminated container "{container}" in instance "{name}" not found')
            waiting = _waiting_reason(instance, container)
            if waiting:
                raise _bad_request(f'container "{container}" in instance "{name}" is waiting to start: {waiting}')
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"cache-control", b"no-cache")],
            }
        )
        ended = asyncio.Event()
        self._streams.add(ended)
        watcher = asyncio.ensure_future(_until_disconnect(receive, ended))
        try:
            async for chunk in read_logs(workdir, options, stop=ended):
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watcher.cancel()
            self._streams.discard(ended)

    # Exec

    async def _exec(
        self, send: Send, instance: dict[str, Any], container: str, query: list[tuple[str, str]], identity: Identity
    ) -> None:
        argv = [value for key, value in query if key == "command"]
        flags = dict(query)
        if not argv:
            raise _bad_request("exec needs a command: command=ARG, once per argument")
        for flag in ("stdin", "tty"):
            if flags.get(flag, "").lower() in ("true", "1"):
                # A POST is the non-interactive exec; input and a terminal take a WebSocket.
                raise _bad_request(f"{flag}=true is not supported: exec runs commands without input or a terminal")
        timeout = _int_param(flags, "timeoutSeconds", EXEC_TIMEOUT, low=1, high=MAX_EXEC_TIMEOUT)
        meta = instance["metadata"]
        cid = await self._running_container(instance, container)
        log.info("exec in %s/%s/%s for %s: %s", meta.get("namespace"), meta["name"], container, identity.user, argv[0])
        try:
            result = await self.services.runtime.exec(cid, argv, timeout=float(timeout))
        except runc.CommandError as exc:
            raise _bad_request(f'cannot run {argv[0]!r} in container "{container}": {exc.stderr.strip() or exc}') from None
        body = ExecResult.of(result).to_dict()
        await _send_bytes(send, 200, orjson.dumps(body), b"application/json")


def _authorized(scope: Scope, revoked: RevocationCheck) -> Identity:
    """The caller's identity, if it may use the endpoint at all."""
    identity: Identity | None = scope.get(IDENTITY_SCOPE_KEY)
    if identity is not None and revoked(identity.serial):
        raise EndpointError(
            401, "Unauthorized",
            f'the client certificate of user "{identity.user}" (serial {identity.serial:x}) has been revoked',
        )  # fmt: skip
    if identity is None or not allowed(identity):
        who = f'user "{identity.user}"' if identity is not None else "an anonymous client"
        raise EndpointError(
            403, "Forbidden",
            f"{who} may not use the node agent's endpoint; only the API server "
            f"({APISERVER_USER}) and members of {ADMIN_GROUP} may",
        )  # fmt: skip
    return identity


def log_options(query: dict[str, str]) -> LogOptions:
    """Parse a log request's query; refuses what the files cannot answer."""
    for unsupported in ("timestamps", "sinceSeconds", "sinceTime"):
        value = query.get(unsupported, "")
        if value and value.lower() != "false":
            raise _bad_request(
                f"{unsupported} is not supported: container logs on this node are not timestamped"
            )
    stream = query.get("stream") or "All"
    if stream not in _STREAM_NAMES:
        raise _bad_request(f'stream "{stream}" is not valid: use All, Stdout or Stderr')
    tail = query.get("tailLines")
    limit = query.get("limitBytes")
    return LogOptions(
        streams=_STREAM_NAMES[stream],
        follow=_flag(query, "follow"),
        previous=_flag(query, "previous"),
        tail_lines=None if tail in (None, "", "-1") else _int_param(query, "tailLines", 0, low=0),
        limit_bytes=None if limit in (None, "") else _int_param(query, "limitBytes", 0, low=1),
    )


def _flag(query: dict[str, str], name: str) -> bool:
    return query.get(name, "").lower() in ("true", "1")


def _int_param(query: dict[str, str], name: str, default: int, *, low: int, high: int | None = None) -> int:
    text = query.get(name)
    if text in (None, ""):
        return default
    try:
        value = int(text)
    except ValueError:
        raise _bad_request(f"{name}={text!r} is not a whole number") from None
    if value < low or (high is not None and value > high):
        bounds = f"at least {low}" if high is None else f"between {low} and {high}"
        raise _bad_request(f"{name}={value} must be {bounds}")
    return value


def _container_names(instance: dict[str, Any]) -> list[str]:
    return [str(c.get("name")) for c in (instance.get("spec") or {}).get("containers") or []]


def _waiting_reason(instance: dict[str, Any], container: str) -> str:
    for status in (instance.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == container:
            return str(((status.get("state") or {}).get("waiting") or {}).get("reason") or "")
    return "ContainerCreating"


async def _until_disconnect(receive: Receive, gone: asyncio.Event) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    gone.set()


async def _send_bytes(send: Send, status: int, body: bytes, content_type: bytes) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# -- running the listener ----------------------------------------------------------------------


class Endpoint:
    """The listener: uvicorn (as the API server's TCP listener runs it) on a socket of ours."""

    def __init__(self, app: EndpointApp, context: ssl.SSLContext, sock: socket.socket, serving: ServingCertificate) -> None:
        self.app = app
        self.serving = serving
        self.port: int = sock.getsockname()[1]
        self._sock = sock
        self._context = context
        self._server: _QuietServer | None = None
        self._task: asyncio.Task[None] | None = None
        # Open connections by client certificate serial, to close those of revoked ones.
        self.connections = ConnectionsBySerial()

    def close_revoked(self, serials: Iterable[int]) -> int:
        """Close the connections of these (just revoked) client certificates; how many."""
        return self.connections.close(serials)

    async def serve(self) -> None:
        """Start serving; returns once the listener accepts connections."""
        http_protocol, ws_protocol = bound_protocols(self.connections)
        config = uvicorn.Config(
            self.app,
            http=http_protocol,
            ws=ws_protocol,
            # Pings keep idle sessions' connections alive, but with no deadline for the pong: a peer
            # reads (and answers) only as fast as its own reader, and a slow reader is no dead one.
            # A vanished peer still ends the session, when TCP gives up on the unanswered pings.
            ws_ping_timeout=None,
            lifespan="off",
            interface="asgi3",
            ssl_context_factory=lambda _config, _default: self._context,
            access_log=False,
            log_config=None,
            server_header=False,
            timeout_graceful_shutdown=2,
        )
        server = _QuietServer(config)
        self._server = server
        self._task = asyncio.get_running_loop().create_task(server.serve(sockets=[self._sock]), name="agent-endpoint")
        while not server.started:
            if self._task.done():
                self._task.result()  # raises what stopped it
                raise RuntimeError("the agent endpoint stopped while starting")
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        """Stop listening; log streams and interactive sessions end at once (their commands are
        killed), an exec still running gets 2 s."""
        self.app.end_streams()
        if self._server is not None:
            self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._task, 5)
        self._sock.close()


class _QuietServer(uvicorn.Server):
    """uvicorn.Server that leaves signal handling to the agent's process."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def start(
    services: NodeServices,
    lookup: InstanceLookup,
    *,
    client_ca_pem: bytes,
    host: str = "::",
    port: int = 0,
    revoked: RevocationCheck | None = None,
) -> Endpoint:
    """Make or load the serving certificate, listen on `host:port` (0: any free port) and serve;
    `revoked(serial)` says which client certificates to refuse."""
    serving = await asyncio.to_thread(
        ensure_serving_certificate,
        services.data_dir / "endpoint",
        node_name=services.node_name,
        addresses=[services.host_ip],
    )
    context = server_context(serving, client_ca_pem)
    sock = tcp_listener(host, port, 128)
    endpoint = Endpoint(EndpointApp(services, lookup, revoked), context, sock, serving)
    try:
        await endpoint.serve()
    except BaseException:
        sock.close()
        raise
    return endpoint
