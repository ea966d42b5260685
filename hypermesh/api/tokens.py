"""Bootstrap token authentication: the one credential besides a client certificate.

A node that joins has no certificate yet; it holds a bootstrap token (`hypermesh token create`,
format and storage in `hypermesh.pki.bootstraptoken`) and sends it as `Authorization: Bearer
<id>.<secret>` on a connection without a client certificate. When the token's Secret exists in
`kube-system`, is meant for authentication, has not expired and its secret matches (compared in
constant time), the request is `system:bootstrap:<id>` in `system:bootstrappers` (plus the
token's `auth-extra-groups`); RBAC then lets that identity do one thing, ask for a node
certificate. Any other bearer token leaves the request unauthenticated (401), as Kubernetes
does. A client certificate always wins: a token sent beside one is ignored.

`TokenAuthenticator` answers from an in-memory index of the bootstrap token Secrets, kept in
step with them through the Secrets' watch cache (as `authz.PolicySource` keeps the RBAC index),
so authenticating costs a dict lookup and no store read. Events of other Secrets are recognised
by their key and never decoded. An id the index does not know is looked up once in the store,
so a token created a moment ago on another API server (its watch event not here yet) works at
once. Token secrets are never logged: only ids appear in this module's messages.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Callable

from hypermesh.api.storage import ObjectStorage
from hypermesh.api.watchcache import CachedEvent, KindCache, WatchCache, Watcher
from hypermesh.pki import bootstraptoken
from hypermesh.pki.identity import Identity
from hypermesh.resources.registry import Registry, ResourceType

log = logging.getLogger(__name__)

Clock = Callable[[], datetime.datetime]


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header value, or None."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip() or None


class TokenAuthenticator:
    """Bearer bootstrap tokens -> identities, from an index of their Secrets."""

    def __init__(self, storage: ObjectStorage, registry: Registry, watchcache: WatchCache, *, clock: Clock = _now) -> None:
        self.storage = storage
        self.registry = registry
        self.watchcache = watchcache
        self.clock = clock
        # token id -> what its Secret says
        self._tokens: dict[str, bootstraptoken.StoredToken] = {}
        self._tracker: asyncio.Task[None] | None = None

    @property
    def rtype(self) -> ResourceType:
        rtype = self.registry.by_plural("", "v1", "secrets")
        assert rtype is not None
        return rtype

    @property
    def _prefix(self) -> str:
        return self.rtype.key(bootstraptoken.NAMESPACE, bootstraptoken.SECRET_PREFIX)

    async def start(self) -> None:
        """Load the token Secrets and follow their changes."""
        cache, watcher = await self._subscribe()
        self._tracker = asyncio.get_running_loop().create_task(self._track(cache, watcher), name="bootstrap-tokens")

    async def stop(self) -> None:
        if self._tracker is not None:
            self._tracker.cancel()
            try:
                await self._tracker
            except asyncio.CancelledError:
                pass
            self._tracker = None

    async def _subscribe(self) -> tuple[KindCache, Watcher]:
        """Watch the Secrets, then load the tokens as of the watch's start (no gap between)."""
        cache = self.watchcache.for_type(self.rtype)
        subscription = cache.subscribe(lambda obj: True, None)
        assert subscription is not None
        watcher, _, revision = subscription
        try:
            page = await self.storage.list(self.rtype, bootstraptoken.NAMESPACE, revision=revision)
        except BaseException:
            cache.unsubscribe(watcher)
            raise
        tokens = {}
        for obj in page.items:
            stored = bootstraptoken.from_secret(obj)
            if stored is not None:
                tokens[stored.id] = stored
        self._tokens = tokens
        return cache, watcher

    async def _track(self, cache: KindCache, watcher: Watcher) -> None:
        """Apply the token Secrets' events; after the watch ends (a slow reader, a cache
        reset) or fails, subscribe and load again."""
        while True:
            try:
                while not watcher.closed or watcher.items:
                    await watcher.wait(60.0)
                    while watcher.items:
                        item = watcher.items.popleft()
                        if isinstance(item, CachedEvent) and item.key.startswith(self._prefix):
                            self._apply(item)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("following bootstrap token Secrets failed; starting over")
            finally:
                cache.unsubscribe(watcher)
            while True:
                try:
                    cache, watcher = await self._subscribe()
                    break
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("loading bootstrap token Secrets failed; retrying")
                    await asyncio.sleep(0.5)

    def _apply(self, event: CachedEvent) -> None:
        token_id = event.key[len(self._prefix):]
        if event.type == "DELETED":
            self._tokens.pop(token_id, None)
            return
        stored = bootstraptoken.from_secret(event.obj)
        if stored is None:
            self._tokens.pop(token_id, None)  # its type changed: no longer a token
        else:
            self._tokens[stored.id] = stored

    async def _lookup(self, token_id: str) -> bootstraptoken.StoredToken | None:
        stored = self._tokens.get(token_id)
        if stored is not None:
            return stored
        secret = await self.storage.get(self.rtype, bootstraptoken.NAMESPACE, bootstraptoken.SECRET_PREFIX + token_id)
        return bootstraptoken.from_secret(secret) if secret is not None else None

    async def authenticate(self, authorization: str | None) -> Identity | None:
        """The identity a bearer bootstrap token proves, or None (no token, or not a valid one)."""
        text = bearer_token(authorization)
        if text is None:
            return None
        try:
            token = bootstraptoken.BootstrapToken.parse(text)
        except bootstraptoken.TokenFormatError:
            return None
        stored = await self._lookup(token.id)
        if stored is None:
            log.debug("bootstrap token %s refused: no such token", token.id)
            return None
        now = self.clock()
        if not stored.accepts(token.secret, now):
            log.debug("bootstrap token %s refused: %s", token.id, stored.problem or ("expired" if stored.expired(now) else "wrong secret"))
            return None
        return Identity(token.user, stored.groups)

