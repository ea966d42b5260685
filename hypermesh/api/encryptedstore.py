"""A state engine that seals the values of encrypted resources on their way in and opens them
on their way out.

Encryption sits here, as a `Store` wrapped around the real one, rather than in the object
layer, for the same reason kube-apiserver puts its value transformer inside its etcd storage:
every reader of the store is then covered by construction. The object storage, the watch cache,
a watch resumed from the store's own history (`watch.py`) and the compactor all talk to this
`Store`, and none of them can be handed ciphertext by forgetting a call. The backend below (and
its read cache of recent values, `store/recent.py`) only ever holds ciphertext, so its file, its
WAL and its snapshots (`hypermesh backup`) hold no secret bytes.

Which keys are sealed is a set of key prefixes built from (group, resource) pairs; only core
`secrets` today. Reads do not consult that set: any value carrying the encryption header is
opened, wherever it lives, so values written under an older configuration (sealed, or plain from
before encryption existed) always read.

A value that cannot be opened (its KEK is missing from the key file, or it was altered) is never
raised from here, since one bad value must not end a watch or a txn that succeeded: it goes up
as an `encryption.UnreadableValue`, and the object layer reports that object as unreadable.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hypermesh.api import encryption, encryptionkeys
from hypermesh.api.encryption import Envelope
from hypermesh.api.encryptionkeys import KeyRing
from hypermesh.store import (
    Compare,
    Event,
    KeyValue,
    Op,
    Put,
    RangeResult,
    Store,
    TxnResult,
    WatchBatch,
    open_store,
)

log = logging.getLogger(__name__)

# (API group, resource) pairs whose objects are sealed; "" is the core group.
DEFAULT_RESOURCES: tuple[tuple[str, str], ...] = (("", "secrets"),)
# Values read per page by a re-encryption pass.
RESEAL_PAGE = 500
# How many distinct undecryptable keys are logged, so a broken key file cannot flood the log.
_WARN_LIMIT = 1000


def key_prefix(group: str, resource: str) -> str:
    """The store prefix of a resource's objects (the layout of `ResourceType.key_prefix`)."""
    return f"/registry/{group or 'core'}/{resource}/"


class EncryptedStore(Store):
    """`inner` with the values of `resources` sealed at rest by `keys`."""

    def __init__(
        self,
        inner: Store,
        keys: KeyRing,
        *,
        resources: Sequence[tuple[str, str]] = DEFAULT_RESOURCES,
        envelope: Envelope | None = None,
    ) -> None:
        self.inner = inner
        self.keys = keys
        self.envelope = envelope or Envelope(keys)
        self.prefixes = tuple(key_prefix(group, resource) for group, resource in resources)
        self._warned: set[str] = set()

    @property
    def path(self) -> Path | None:
        """The backend's file, if it has one (the API server finds its `pki` beside it)."""
        path = getattr(self.inner, "path", None)
        return Path(path) if path is not None else None

    @property
    def revision(self) -> int:
        return self.inner.revision

    @property
    def compact_revision(self) -> int:
        return self.inner.compact_revision

    def encrypts(self, key: str) -> bool:
        """Whether a value written at `key` is sealed."""
        return key.startswith(self.prefixes)

    # Reads.

    async def get(self, key: str, *, revision: int = 0) -> KeyValue | None:
        kv = await self.inner.get(key, revision=revision)
        if kv is None or not kv.value.startswith(encryption.PREFIX):
            return kv
        return self._opened(kv)

    async def range(
        self,
        prefix: str,
        *,
        start_after: str | None = None,
        limit: int = 0,
        revision: int = 0,
    ) -> RangeResult:
        result = await self.inner.range(prefix, start_after=start_after, limit=limit, revision=revision)
        sealed = encryption.PREFIX
        if not any(kv.value.startswith(sealed) for kv in result.kvs):
            return result
        kvs = [self._opened(kv) if kv.value.startswith(sealed) else kv for kv in result.kvs]
        return RangeResult(kvs, result.revision, result.more, result.count)

    def watch(self, prefix: str, *, start_revision: int = 0) -> AsyncIterator[WatchBatch]:
        return _OpenedWatch(self.inner.watch(prefix, start_revision=start_revision), self)

    # Writes.

    async def txn(self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()) -> TxnResult:
        result = await self.inner.txn(compares, self._sealed(success), self._sealed(failure))
        if not (self._any_sealed(result.prev) or self._any_sealed(result.current)):
            return result
        return TxnResult(result.succeeded, result.revision, self._open_all(result.prev), self._open_all(result.current))

    async def compact(self, revision: int) -> None:
        await self.inner.compact(revision)

    async def snapshot(self, path: str) -> int:
        # The copy holds ciphertext, as the store does: restoring it needs the key file too.
        return await self.inner.snapshot(path)

    async def close(self) -> None:
        await self.inner.close()

    # Sealing and opening.

    def _sealed(self, ops: Sequence[Op]) -> Sequence[Op]:
        prefixes = self.prefixes
        if not any(isinstance(op, Put) and op.key.startswith(prefixes) for op in ops):
            return ops
        seal = self.envelope.encrypt
        return [
            Put(op.key, seal(op.key, op.value)) if isinstance(op, Put) and op.key.startswith(prefixes) else op
            for op in ops
        ]

    def _opened(self, kv: KeyValue) -> KeyValue:
        """`kv` with its value opened (or marked unreadable); `kv` itself when it is plain."""
        if not kv.value.startswith(encryption.PREFIX):
            return kv
        try:
            value: bytes = self.envelope.decrypt(kv.key, kv.value)
        except encryption.DecryptError as exc:
            self._warn(kv.key, exc)
            value = encryption.UnreadableValue(kv.value, exc.reason)
        return KeyValue(kv.key, value, kv.create_revision, kv.mod_revision, kv.version)

    def _open_event(self, event: Event) -> Event:
        prev = self._opened(event.prev) if event.prev is not None else None
        return Event(event.type, self._opened(event.kv), prev)

    def _any_sealed(self, kvs: tuple[KeyValue | None, ...]) -> bool:
        return any(kv is not None and kv.value.startswith(encryption.PREFIX) for kv in kvs)

    def _open_all(self, kvs: tuple[KeyValue | None, ...]) -> tuple[KeyValue | None, ...]:
        return tuple(self._opened(kv) if kv is not None else None for kv in kvs)

    def _warn(self, key: str, exc: encryption.DecryptError) -> None:
        if key in self._warned or len(self._warned) >= _WARN_LIMIT:
            return
        self._warned.add(key)
        log.warning("%s cannot be decrypted: %s", key, exc.reason)


class _OpenedWatch(AsyncIterator[WatchBatch]):
    """A backend watch whose batches come out with their values opened.

    Batches are rebuilt rather than changed in place: the backend may share one batch between
    several watchers, and a raw watcher (a key rotation) must keep seeing ciphertext.
    """

    def __init__(self, inner: AsyncIterator[WatchBatch], store: EncryptedStore) -> None:
        self._inner = inner
        self._store = store

    def __aiter__(self) -> _OpenedWatch:
        return self

    async def __anext__(self) -> WatchBatch:
        batch = await self._inner.__anext__()
        sealed = encryption.PREFIX
        if not any(
            event.kv.value.startswith(sealed) or event.prev is not None and event.prev.value.startswith(sealed)
            for event in batch.events
        ):
            return batch
        return WatchBatch([self._store._open_event(event) for event in batch.events], batch.revision)

    async def aclose(self) -> None:
        close = getattr(self._inner, "aclose", None)
        if close is not None:
            await close()

    async def __aenter__(self) -> _OpenedWatch:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def open_encrypted(data_dir: Path, *, resources: Sequence[tuple[str, str]] = DEFAULT_RESOURCES) -> EncryptedStore:
    """The data directory's store with encryption at rest, as `hypermesh server` opens it.

    Makes the key file on first start (KeyFileError when it exists but cannot be used), then
    seals what is still stored in clear under an encrypted prefix (Secrets written before
    encryption existed): a scan of the encrypted prefixes that writes nothing once done.

    A value that cannot be opened (its KEK is not in the key file, even a key file lost and
    made afresh) is logged and left alone: the server still starts, serves everything else, and
    reports that object as unreadable, naming the key and the file.
    """
    keys = encryptionkeys.load_or_create(data_dir)
    inner = await open_store(str(data_dir))
    store = EncryptedStore(inner, keys, resources=resources)
    try:
        report = ResealReport()
        for prefix in store.prefixes:
            report.add(await reseal(store, prefix))
    except BaseException:
        await inner.close()
        raise
    if report.rewritten:
        log.info("encrypted %d objects stored in clear before encryption at rest was enabled", report.rewritten)
    if report.unreadable:
        # The server still starts (everything else works, and the unreadable objects can be
        # deleted), but this is the moment to say how to get them back.
        key, reason = report.unreadable[0]
        log.error(
            "%d stored objects cannot be decrypted (the first, %s: %s). If a key-encryption key "
            "is missing, add its entry back to the \"keys\" list of %s (do not replace the file: "
            "it may hold keys that newer objects use), then restart",
            len(report.unreadable), key, reason, keys.path,
        )
    return store


# Re-encryption.


@dataclass(slots=True)
class ResealReport:
    """What a `reseal` pass saw and did."""

    scanned: int = 0
    rewritten: int = 0
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (store key, reason)

    def add(self, other: ResealReport) -> None:
        self.scanned += other.scanned
        self.rewritten += other.rewritten
        self.unreadable.extend(other.unreadable)


async def reseal(store: EncryptedStore, prefix: str = "") -> ResealReport:
    """Bring every current value under `prefix` to the form the configuration asks for: sealed
    under the primary KEK where `store.encrypts(key)`, plain elsewhere.

    Only the headers are read to decide (nothing is decrypted that is already right), so a pass
    over values already in form costs a scan and writes nothing. Each rewrite is a
    compare-and-swap on the revision that was read: a concurrent write through `store` (which
    seals under the primary already) wins, and the key is looked at again. A value that cannot
    be opened is reported, not rewritten. The pass is idempotent, so an interrupted one is
    completed by running it again.
    """
    report = ResealReport()
    start_after: str | None = None
    while True:
        page = await store.inner.range(prefix, start_after=start_after, limit=RESEAL_PAGE)
        for kv in page.kvs:
            report.scanned += 1
            await _reseal_key(store, kv, report)
        if not page.more or not page.kvs:
            return report
        start_after = page.kvs[-1].key


async def _reseal_key(store: EncryptedStore, kv: KeyValue, report: ResealReport) -> None:
    current: KeyValue | None = kv
    while current is not None:
        try:
            value = _resealed(store, current)
        except encryption.DecryptError as exc:
            report.unreadable.append((current.key, exc.reason))
            return
        if value is None:
            return
        result = await store.inner.txn([Compare(current.key, current.mod_revision)], [Put(current.key, value)])
        if result.succeeded:
            report.rewritten += 1
            return
        # Written (or deleted) since it was read: decide again on what is there now.
        current = await store.inner.get(current.key)


def _resealed(store: EncryptedStore, kv: KeyValue) -> bytes | None:
    """The value `kv` should hold instead, or None when it is in form already."""
    kek_id = encryption.kek_id_of(kv.value)
    if store.encrypts(kv.key):
        if kek_id == store.keys.primary.id:
            return None
        plaintext = kv.value if kek_id is None else store.envelope.decrypt(kv.key, kv.value)
        return store.envelope.encrypt(kv.key, plaintext)
    if kek_id is None:
        return None
    # A resource no longer encrypted: its values go back to plain JSON.
    return store.envelope.decrypt(kv.key, kv.value)
