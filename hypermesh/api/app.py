"""The API server as one ASGI application.

`APIServer` wires the parts (store, registry, verbs, watch cache, discovery, OpenAPI) and routes
each request: health and version endpoints first (they are public, as in Kubernetes), then the
identity check (mutual TLS happened in the transport; a request without a verified client
certificate may still prove a bootstrap token, see `tokens`, and gets 401 otherwise; so does a
revoked certificate, see `revocation`), then discovery, OpenAPI, and the resource verbs. The
cluster CA is public at `CA_PATH`, so a joining node can fetch it before it trusts anything (it
checks the CA's public key hash it was given).
Any `ApiError` becomes a `Status` response; any other exception becomes a 500 Status and a log
line, never a crash. WebSocket upgrades (only interactive exec takes one) go through the same
identity check and are refused with a Status when they cannot be served.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import orjson

from hypermesh.api import (
    audit,
    authz,
    binding,
    certificatesigning,
    discovery,
    errors,
    guard,
    nodeproxy,
    paths,
    proxy,
    rbac,
    reviews,
    revocation,
    tables,
    tokens,
)
from hypermesh.api.compactor import CompactionPolicy, Compactor
from hypermesh.api.customresources import CustomResources, hypermesh_crds
from hypermesh.api.eventttl import DEFAULT_TTL, EventExpiry
from hypermesh.api.http import Receive, Request, Send, send_bytes, send_error, send_json
from hypermesh.api.namespaces import Namespaces
from hypermesh.api.openapi import OpenAPI
from hypermesh.api.rest import ResourceAPI, load_body
from hypermesh.api.storage import ObjectStorage, Page
from hypermesh.api.watch import WatchStream
from hypermesh.api.watchcache import WatchCache
from hypermesh.pki import csr
from hypermesh.resources.registry import Registry, ResourceType, builtin_types
from hypermesh.store import Store
from hypermesh.transport.asgi import IDENTITY_SCOPE_KEY, deny_websocket

log = logging.getLogger(__name__)


def data_dir_of(store: Any, name: str) -> Path | None:
    """`<data dir>/NAME` for a store kept in `<data dir>/state.db`; None for a store in memory."""
    path = getattr(store, "path", None)
    return Path(path).parent / name if path else None

# Where a joining node fetches the cluster CA (PEM) before it can verify the server.
CA_PATH = csr.CA_PATH
PUBLIC_PATHS = frozenset({"/livez", "/readyz", "/healthz", "/version", CA_PATH})


class APIServer:
    """The Kubernetes-compatible API over one state engine."""

    def __init__(
        self,
        store: Store,
        *,
        compaction: CompactionPolicy | None = None,
        event_ttl: float = DEFAULT_TTL,
        pki_dir: Path | None = None,
        audit_log: Path | None = None,
    ) -> None:
        self.store = store
        self.compactor = Compactor(store, compaction or CompactionPolicy())
        self.registry = Registry()
        for rtype in builtin_types():
            self.registry.add(rtype)
        self.storage = ObjectStorage(store)
        self.watchcache = WatchCache(store)
        self.admission = certificatesigning.Admission(self.storage, self.registry)
        self.api = ResourceAPI(self.storage, self.admission)
        self.binder = binding.Binder(self.storage, self.registry)
        self.namespaces = Namespaces(self.storage, self.registry, self.watchcache)
        self.namespaces.api = self.api
        self.crds = CustomResources(self.storage, self.registry, self.watchcache)
        self.admission.namespaces = self.namespaces
        self.admission.crds = self.crds
        self.event_expiry = EventExpiry(self.storage, self.registry, event_ttl)
        # Authorisation (node rules, then RBAC) and the audit log, by default `audit.log` beside
        # the store's file (a store without a file, in tests, keeps no log unless given one).
        self.policy = authz.PolicySource(self.storage, self.registry, self.watchcache)
        self.admission.policy = self.policy
        audit_path = audit_log or data_dir_of(store, "audit.log")
        self.guard = guard.Guard(self.policy, self.storage, self.registry, audit.AuditLog(audit_path) if audit_path else None)
        # Revoked client certificates: refused at every request (and their connections closed
        # by the listeners the daemon connects to `revocations.on_revoked`).
        self.revocations = revocation.RevocationList(self.storage, self.registry, self.watchcache)
        # Bearer bootstrap tokens, for requests that come without a client certificate.
        self.tokens = tokens.TokenAuthenticator(self.storage, self.registry, self.watchcache)
        self.discovery = discovery.Discovery(self.registry)
        self.openapi = OpenAPI(self.registry)
        self.shutdown = asyncio.Event()
        # Logs and exec go to node agents with a client certificate from the CA in `pki_dir`
        # (by default the `pki` directory beside the store's file).
        self.proxy = proxy.AgentProxy(self.storage, self.registry, self.shutdown, pki_dir or proxy.pki_dir_of(store))
        # The cluster CA once started: an in-process node agent authenticates this server by it.
        self.cluster_ca_pem: bytes | None = None
        self.ready = False

    async def start(self) -> None:
        """Bring stored state in: HyperMesh's CRDs, user CRDs, default namespaces."""
        for crd in hypermesh_crds():
            await self.crds.install(crd)
        await self.crds.load()
        await self.namespaces.ensure_defaults()
        await self.admission.priorities.ensure_system_classes()
        await self.policy.start()
        await self.revocations.start()
        await self.tokens.start()
        if self.guard.log is not None:
            self.guard.log.start()
        self.cluster_ca_pem = await asyncio.to_thread(self.proxy.load)
        self.compactor.start()
        self.event_expiry.start()
        self.ready = True

    async def stop(self) -> None:
        """End every watch stream and background task; the store is closed by its owner."""
        self.ready = False
        self.shutdown.set()
        await self.compactor.stop()
        await self.event_expiry.stop()
        await self.namespaces.stop()
        await self.policy.stop()
        await self.revocations.stop()
        await self.tokens.stop()
        if self.guard.log is not None:
            await self.guard.log.stop()
        await self.watchcache.stop()

    # ------------------------------------------------------------------ ASGI

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        if scope["type"] != "http":
            return
        req = Request.from_scope(scope, receive)
        # Kept whole for the exec subresource, whose `command` parameter repeats.
        req.extra["query_string"] = scope.get("query_string", b"")
        req.extra["tls"] = (scope.get("extensions") or {}).get("tls")
        send = self.guard.audited(req, send)
        try:
            await self._route(req, send)
        except errors.ApiError as exc:
            await send_error(send, exc)
        except Exception:
            log.exception("internal error serving %s %s", req.method, req.path)
            await send_error(send, errors.ApiError(500, "InternalError", "an internal error occurred; the server logged the details"))

    async def _websocket(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        """A WebSocket upgrade: only an Instance's `exec` takes one (an interactive session,
        relayed to its node's agent). Refusals are HTTP answers carrying a Status."""
        try:
            identity = scope.get(IDENTITY_SCOPE_KEY)
            if identity is None:
                raise errors.unauthorized()
            self.revocations.check(identity)
            target = paths.parse(unquote(scope["path"]), self.registry)
            if isinstance(target, paths.Target):
                # An interactive exec is authorised as `create` on instances/exec, as Kubernetes
                # does for WebSocket exec since 1.30 (a GET must not open a shell).
                attrs = rbac.Attributes(
                    identity.user, authz.groups_of(identity.groups), "create", target.rtype.group,
                    target.rtype.plural, target.subresource or "", target.namespace or "", target.name or "",
                )  # fmt: skip
                decision = await self.guard.decide(attrs)
                if self.guard.log is not None:
                    self.guard.log.record(audit.entry(
                        user=attrs.user, groups=attrs.groups, verb=attrs.verb, code=101 if decision.allowed else 403,
                        started=asyncio.get_running_loop().time(), api_group=attrs.api_group, resource=attrs.resource,
                        subresource=attrs.subresource, namespace=attrs.namespace, name=attrs.name, decision=decision.reason,
                    ))  # fmt: skip
                if not decision.allowed:
                    raise authz.forbidden(attrs)
            if (
                not isinstance(target, paths.Target)
                or target.name is None
                or target.namespace is None
                or target.subresource not in proxy.SUBRESOURCES
                or not proxy.proxied(target.rtype)
            ):
                raise errors.bad_request(
                    "only .../namespaces/NAMESPACE/instances/NAME/exec takes a WebSocket upgrade "
                    f"(interactive exec); {scope['path']} is served over plain HTTP"
                )
            await self.proxy.serve_websocket(scope, receive, send, target.rtype, target.namespace, target.name, target.subresource)
        except errors.ApiError as exc:
            await deny_websocket(send, exc.code, exc.body())
        except Exception:
            log.exception("internal error serving a WebSocket on %s", scope.get("path"))
            # Only possible before the upgrade was accepted; afterwards the connection just ends.
            with contextlib.suppress(Exception):
                error = errors.ApiError(500, "InternalError", "an internal error occurred; the server logged the details")
                await deny_websocket(send, error.code, error.body())

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _route(self, req: Request, send: Send) -> None:
        path = req.path
        if path in PUBLIC_PATHS:
            await self._public(req, send)
            return
        if req.identity is None:
            # No client certificate: a bootstrap token is the only other credential.
            authorization = req.headers.get("authorization")
            req.identity = await self.tokens.authenticate(authorization)
            if req.identity is None and tokens.bearer_token(authorization) is not None:
                raise errors.ApiError(401, "Unauthorized", "Unauthorized: the bearer token is not a valid bootstrap token (unknown, expired or deleted), and no client certificate was presented")
            if req.identity is None:
                raise errors.unauthorized()
        else:
            self.revocations.check(req.identity)
        if path == binding.BATCH_PATH:
            # Bindings of Instances in any namespace: a cluster-wide grant is needed.
            instances = self.registry.by_plural("hypermesh.io", "v1", "instances")
            assert instances is not None
            await self.guard.authorize(req, paths.Target(instances, None, None, "binding"))
            if req.method != "POST":
                raise errors.method_not_allowed("bindings are created with POST")
            body = load_body(await req.body(), req.content_type)
            await send_json(send, 200, await self.binder.bind_many(body))
            return
        target = paths.parse(path, self.registry)
        await self.guard.authorize(req, target)
        if path.startswith("/openapi/"):
            await self._openapi(req, send)
            return
        if path in ("/api", "/api/", "/apis", "/apis/"):
            await self._discovery_root(req, send, core=path.startswith("/api/") or path == "/api")
            return
        # Review kinds are served by no registry type, so their paths parse to nothing.
        review = reviews.match(path) if target is None else None
        if review is not None:
            await self._review(req, send, *review)
            return
        if target is None:
            raise errors.ApiError(404, "NotFound", "the server could not find the requested resource")
        if isinstance(target, paths.GroupVersionPath):
            await self._discovery_gv(req, send, target)
            return
        await self._resource(req, send, target)

    async def _review(self, req: Request, send: Send, plural: str, namespace: str | None) -> None:
        """A SelfSubjectAccessReview or one of its kin: answered, never stored."""
        if req.method != "POST":
            raise errors.method_not_allowed(f"{plural} are created with POST")
        body = load_body(await req.body(), req.content_type)
        identity = req.identity
        answer = await reviews.answer(
            plural, namespace, body, user=identity.user, groups=authz.groups_of(identity.groups),
            decide=self.guard.decide, rules_for=lambda ns: self.guard.rules_for(req, ns),
        )  # fmt: skip
        await send_json(send, 201, answer)

    async def _public(self, req: Request, send: Send) -> None:
        if req.path == "/version":
            await send_json(send, 200, discovery.version_info())
        elif req.path == CA_PATH:
            if self.cluster_ca_pem is None:
                raise errors.ApiError(404, "NotFound", "this server has no cluster CA to publish")
            await send_bytes(send, 200, self.cluster_ca_pem, content_type=b"application/x-pem-file")
        elif req.path == "/readyz" and not self.ready:
            await send_bytes(send, 503, b"not ready: starting or stopping", content_type=b"text/plain")
        else:
            await send_bytes(send, 200, b"ok", content_type=b"text/plain")

    async def _discovery_root(self, req: Request, send: Send, *, core: bool) -> None:
        if discovery.wants_aggregated(req.accept):
            await send_bytes(send, 200, self.discovery.aggregated(core), content_type=discovery.AGGREGATED_CT.encode())
        elif core:
            await send_bytes(send, 200, self.discovery.core_versions())
        else:
            await send_bytes(send, 200, self.discovery.group_list())

    async def _discovery_gv(self, req: Request, send: Send, target: paths.GroupVersionPath) -> None:
        if not target.version:
            body = self.discovery.group(target.group)
        else:
            body = self.discovery.resource_list(target.group, target.version)
        if body is None:
            raise errors.ApiError(404, "NotFound", "the server could not find the requested resource")
        await send_bytes(send, 200, body)

    async def _openapi(self, req: Request, send: Send) -> None:
        if req.path.rstrip("/") == "/openapi/v3":
            await send_bytes(send, 200, self.openapi.index(), headers=[(b"cache-control", b"no-cache, private")])
            return
        if req.path.startswith("/openapi/v3/"):
            found = self.openapi.document(req.path[len("/openapi/v3/"):])
            if found is not None:
                body, digest = found
                cache = b"public, immutable" if req.query.get("hash") == digest else b"no-cache, private"
                await send_bytes(send, 200, body, headers=[(b"etag", f'"{digest}"'.encode()), (b"cache-control", cache)])
                return
        raise errors.ApiError(404, "NotFound", "the server could not find the requested resource")

    # ------------------------------------------------------------------ resources

    async def _resource(self, req: Request, send: Send, target: paths.Target) -> None:
        rtype, ns, name, sub = target.rtype, target.namespace, target.name, target.subresource
        method = req.method
        if sub == "binding" and name is not None and ns is not None and binding.bindable(rtype):
            if method != "POST":
                raise errors.method_not_allowed("a binding is created with POST")
            body = load_body(await req.body(), req.content_type)
            await send_json(send, 201, await self.binder.bind(rtype, ns, name, body))
            return
        if sub in proxy.SUBRESOURCES and name is not None and ns is not None and proxy.proxied(rtype):
            await self.proxy.serve(req, send, rtype, ns, name, sub)
            return
        if sub == "proxy" and name is not None and nodeproxy.proxied(rtype):
            await nodeproxy.serve(self.proxy, req, send, rtype, name, target.proxy_path or "")
            return
        if sub is not None and sub != "status":
            raise errors.ApiError(404, "NotFound", f'the server could not find the requested resource ({sub} subresource)')
        if sub == "status" and not rtype.has_status:
            raise errors.ApiError(404, "NotFound", f"{rtype.kind} has no status subresource")
        if certificatesigning.is_csr(rtype) and method != "GET":
            # The requester stamped into a new CertificateSigningRequest names the certificate too.
            certificatesigning.current_client_certificate.set(certificatesigning.client_certificate_of(req.extra.get("tls")))
        if name is None:
            if method == "GET":
                if req.flag("watch"):
                    stream = WatchStream(req, send, rtype, ns, self.api, self.watchcache.for_type(rtype), self.shutdown)
                    await stream.run()
                    return
                page = await self.api.list_page(rtype, ns, req)
                await self._send_list(req, send, rtype, page)
            elif method == "POST":
                if not rtype.namespaced:
                    ns = None
                elif ns is None:
                    raise errors.method_not_allowed(f"create of {rtype.plural} needs a namespace in the URL")
                status, obj, warnings = await self.api.create(rtype, ns, req)
                await self._send_object(req, send, rtype, obj, status, warnings)
            elif method == "DELETE":
                result = await self.api.delete_collection(rtype, ns, req)
                await send_json(send, 200, result)
            else:
                raise errors.method_not_allowed()
            return
        if method == "GET":
            if tables.wants_table(req.accept):
                obj = await self.api.get(rtype, ns, name)
                await self._send_object(req, send, rtype, obj, 200, [])
            else:
                await send_bytes(send, 200, await self.api.storage.get_raw(rtype, ns, name))
        elif method == "PUT":
            status, obj, warnings = await self.api.update(rtype, ns, name, sub, req)
            await self._send_object(req, send, rtype, obj, status, warnings)
        elif method == "PATCH":
            status, obj, warnings = await self.api.patch(rtype, ns, name, sub, req)
            await self._send_object(req, send, rtype, obj, status, warnings)
        elif method == "DELETE" and sub is None:
            status, obj = await self.api.delete(rtype, ns, name, req)
            await self._send_object(req, send, rtype, obj, status, [])
        else:
            raise errors.method_not_allowed()

    async def _send_object(self, req: Request, send: Send, rtype: ResourceType, obj: dict[str, Any], status: int, warnings: list[str]) -> None:
        headers = [(b"warning", _warning(w)) for w in warnings]
        if tables.wants_table(req.accept) and req.method == "GET":
            body = tables.table(rtype, [obj], resource_version=obj["metadata"].get("resourceVersion", ""))
            await send_bytes(send, status, orjson.dumps(body), content_type=tables.TABLE_CONTENT_TYPE, headers=headers)
            return
        await send_bytes(send, status, orjson.dumps(obj), headers=headers)

    async def _send_list(self, req: Request, send: Send, rtype: ResourceType, page: Page) -> None:
        rv = str(page.revision)
        if tables.wants_table(req.accept):
            table = tables.table(rtype, page.items, resource_version=rv, continue_token=page.continue_token, remaining=page.remaining)
            await send_bytes(send, 200, orjson.dumps(table), content_type=tables.TABLE_CONTENT_TYPE)
            return
        metadata: dict[str, Any] = {"resourceVersion": rv}
        if page.continue_token:
            metadata["continue"] = page.continue_token
        if page.remaining is not None:
            metadata["remainingItemCount"] = page.remaining
        head = orjson.dumps({"kind": rtype.list_kind, "apiVersion": rtype.api_version, "metadata": metadata})
        # The items are already JSON: splice them in rather than decode and encode them again.
        body = b"".join((head[:-1], b',"items":[', b",".join(page.raw), b"]}"))
        await send_bytes(send, 200, body)


def _warning(text: str) -> bytes:
    """A `Warning: 299 - "..."` header value. A header value may not hold control characters:
    any a client sent (a field name with one, echoed in an "unknown field" warning) is escaped,
    or the response could not be sent at all."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    safe = "".join(f"\\x{ord(c):02x}" if (c < " " and c != "\t") or c == "\x7f" else c for c in escaped)
    return f'299 - "{safe}"'.encode()
