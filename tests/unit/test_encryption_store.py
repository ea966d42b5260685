"""Every read path of the API server gets Secrets decrypted, and the backend only ever holds
ciphertext."""

from __future__ import annotations

import asyncio
import base64
import copy
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from hypermesh.api import encryption, encryptionkeys, errors
from hypermesh.api.encryptedstore import EncryptedStore, key_prefix, open_encrypted
from hypermesh.api.storage import ObjectStorage
from hypermesh.api.watchcache import CachedEvent, WatchCache, Watcher, to_cached
from hypermesh.resources.registry import Registry
from hypermesh.store import Compare, Delete, MemoryStore, Put, SqliteStore, Store

REGISTRY = Registry.with_builtins()
SECRETS = REGISTRY.by_plural("", "v1", "secrets")
NAMESPACES = REGISTRY.by_plural("", "v1", "namespaces")
assert SECRETS is not None and NAMESPACES is not None

PASSWORD = b"correct-horse-battery-staple"


def _secret(name: str, password: bytes = PASSWORD, namespace: str = "default") -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": name, "namespace": namespace, "uid": name, "labels": {"app": "db"}},
        "data": {"password": base64.b64encode(password).decode()},
    }


def _password(obj: dict[str, Any]) -> bytes:
    return base64.b64decode(obj["data"]["password"])


@pytest.fixture(params=["memory", "sqlite"])
async def inner(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    store: Store = MemoryStore() if request.param == "memory" else await SqliteStore.open(tmp_path / "state.db")
    yield store
    await store.close()


@pytest.fixture
def keys(tmp_path: Path) -> encryptionkeys.KeyRing:
    return encryptionkeys.load_or_create(tmp_path)


def _no_secret_bytes(value: bytes) -> None:
    assert PASSWORD not in value
    assert base64.b64encode(PASSWORD) not in value


async def _drain(watch: AsyncIterator[Any], revision: int) -> list[Any]:
    events: list[Any] = []
    async for batch in watch:
        events.extend(batch.events)
        if batch.revision >= revision:
            return events
    return events


def test_the_prefix_matches_the_registry_layout() -> None:
    assert key_prefix("", "secrets") == SECRETS.key_prefix(None)


async def test_objects_round_trip_and_only_secrets_are_sealed(inner: Store, keys: encryptionkeys.KeyRing) -> None:
    store = EncryptedStore(inner, keys)
    storage = ObjectStorage(store)
    created = await storage.create(SECRETS, _secret("db"))
    await storage.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "plain-ns"}})
    stored = await inner.get(SECRETS.key("default", "db"))
    assert stored is not None and stored.value.startswith(encryption.PREFIX + keys.primary.id.encode())
    _no_secret_bytes(stored.value)
    plain = await inner.get(NAMESPACES.key(None, "plain-ns"))
    assert plain is not None and plain.value.startswith(b'{"metadata"')

    got = await storage.get_required(SECRETS, "default", "db")
    assert _password(got) == PASSWORD
    assert got["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
    assert _password(orjson.loads(await storage.get_raw(SECRETS, "default", "db"))) == PASSWORD
    page = await storage.list(SECRETS, "default")
    assert [_password(orjson.loads(raw)) for raw in page.raw] == [PASSWORD]
    filtered = await storage.list(SECRETS, None, predicate=lambda obj: True)
    assert [_password(obj) for obj in filtered.items] == [PASSWORD]

    changed = copy.deepcopy(got)
    changed["data"]["password"] = base64.b64encode(b"new").decode()
    updated = await storage.update(SECRETS, changed, int(got["metadata"]["resourceVersion"]))
    assert _password(await storage.get_required(SECRETS, "default", "db")) == b"new"
    await storage.delete(SECRETS, updated, int(updated["metadata"]["resourceVersion"]))
    assert await storage.get(SECRETS, "default", "db") is None


async def test_plain_values_stored_before_encryption_still_read(inner: Store, keys: encryptionkeys.KeyRing) -> None:
    await ObjectStorage(inner).create(SECRETS, _secret("old"))
    store = EncryptedStore(inner, keys)
    storage = ObjectStorage(store)
    assert _password(await storage.get_required(SECRETS, "default", "old")) == PASSWORD
    assert len((await storage.list(SECRETS, None)).raw) == 1
    history = store.watch(SECRETS.key_prefix(None), start_revision=1)
    (event,) = await _drain(history, store.revision)
    assert _password(orjson.loads(event.kv.value)) == PASSWORD
    await history.aclose()  # type: ignore[attr-defined]


async def test_watches_replay_and_stream_opened_values(inner: Store, keys: encryptionkeys.KeyRing) -> None:
    store = EncryptedStore(inner, keys)
    storage = ObjectStorage(store)
    raw_watch = inner.watch(SECRETS.key_prefix(None))
    live = store.watch(SECRETS.key_prefix(None))
    created = await storage.create(SECRETS, _secret("db"))
    await storage.delete(SECRETS, created, int(created["metadata"]["resourceVersion"]))

    put, deleted = await _drain(live, store.revision)
    assert _password(orjson.loads(put.kv.value)) == PASSWORD
    assert deleted.type == "DELETE" and _password(orjson.loads(deleted.prev.value)) == PASSWORD
    # The backend's own watchers still see ciphertext: opened batches are copies.
    for event in await _drain(raw_watch, store.revision):
        for kv in (event.kv, event.prev):
            if kv is not None and kv.value:
                assert encryption.is_encrypted(kv.value)
                _no_secret_bytes(kv.value)

    replay = store.watch(SECRETS.key_prefix(None), start_revision=1)
    events = [to_cached(event) for event in await _drain(replay, store.revision)]
    assert [e.type for e in events] == ["ADDED", "DELETED"]
    assert all(_password(e.obj) == PASSWORD for e in events)
    assert all(_password(orjson.loads(e.raw_line(e.type))["object"]) == PASSWORD for e in events)
    for watch in (raw_watch, live, replay):
        await watch.aclose()  # type: ignore[attr-defined]


async def test_watch_cache_serves_decrypted_lines(keys: encryptionkeys.KeyRing) -> None:
    store = EncryptedStore(MemoryStore(), keys)
    storage = ObjectStorage(store)
    cache = WatchCache(store).for_type(SECRETS)
    await asyncio.sleep(0)
    subscribed = cache.subscribe(lambda obj: True, None)
    assert subscribed is not None
    watcher = subscribed[0]
    await storage.create(SECRETS, _secret("db"))
    event = await _next(watcher)
    line = orjson.loads(event.raw_line("ADDED"))
    assert line["type"] == "ADDED" and _password(line["object"]) == PASSWORD
    await cache.stop()


async def test_txn_results_come_back_opened(inner: Store, keys: encryptionkeys.KeyRing) -> None:
    store = EncryptedStore(inner, keys)
    key = SECRETS.key("default", "db")
    await store.put(key, b'{"metadata":{},"v":1}')
    stale = await store.txn([Compare(key, 0)], [Put(key, b'{"metadata":{},"v":2}')])
    assert not stale.succeeded and stale.current[0] is not None
    assert stale.current[0].value == b'{"metadata":{},"v":1}'
    done = await store.txn([], [Put(key, b'{"metadata":{},"v":3}'), ])
    assert done.prev[0] is not None and done.prev[0].value == b'{"metadata":{},"v":1}'
    gone = await store.txn([], [Delete(key)])
    assert gone.prev[0] is not None and gone.prev[0].value == b'{"metadata":{},"v":3}'


async def test_sqlite_read_cache_holds_only_ciphertext(tmp_path: Path, keys: encryptionkeys.KeyRing) -> None:
    inner = await SqliteStore.open(tmp_path / "state.db")
    store = EncryptedStore(inner, keys)
    await ObjectStorage(store).create(SECRETS, _secret("db"))
    for _ in range(2):  # the second read is answered by the recent-values map
        raw = await inner.get(SECRETS.key("default", "db"))
        assert raw is not None
        _no_secret_bytes(raw.value)
        opened = await store.get(SECRETS.key("default", "db"))
        assert opened is not None and _password(orjson.loads(opened.value)) == PASSWORD
    # A control: what is not a Secret is in the file in clear, so the search can find things.
    await ObjectStorage(store).create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "plain-marker"}})
    await inner.close()
    files = b"".join(p.read_bytes() for p in (tmp_path / "state.db", tmp_path / "state.db-wal") if p.exists())
    assert b"plain-marker" in files
    _no_secret_bytes(files)


async def test_open_encrypted_seals_secrets_stored_in_clear(tmp_path: Path) -> None:
    plain = await SqliteStore.open(tmp_path / "state.db")
    await ObjectStorage(plain).create(SECRETS, _secret("old"))
    await plain.close()
    store = await open_encrypted(tmp_path)
    try:
        raw = await store.inner.get(SECRETS.key("default", "old"))
        assert raw is not None and encryption.kek_id_of(raw.value) == store.keys.primary.id
        assert _password(await ObjectStorage(store).get_required(SECRETS, "default", "old")) == PASSWORD
    finally:
        await store.close()
    again = await open_encrypted(tmp_path)  # nothing left to do: no write
    revision = again.revision
    await again.close()
    assert revision == raw.mod_revision


# Unreadable values.


async def _unreadable_store(tmp_path: Path, keys: encryptionkeys.KeyRing) -> tuple[EncryptedStore, encryptionkeys.KeyRing]:
    """A store holding a Secret sealed under `keys`, opened with another key ring."""
    inner = MemoryStore()
    await ObjectStorage(EncryptedStore(inner, keys)).create(SECRETS, _secret("db"))
    other = encryptionkeys.load_or_create(tmp_path / "other")
    return EncryptedStore(inner, other), other


async def test_an_unreadable_secret_is_a_precise_500(tmp_path: Path, keys: encryptionkeys.KeyRing) -> None:
    store, other = await _unreadable_store(tmp_path, keys)
    storage = ObjectStorage(store)
    for read in (
        lambda: storage.get(SECRETS, "default", "db"),
        lambda: storage.get_raw(SECRETS, "default", "db"),
        lambda: storage.list(SECRETS, "default"),
        lambda: storage.list(SECRETS, None, predicate=lambda obj: True),
    ):
        with pytest.raises(errors.ApiError) as failure:
            await read()
        error = failure.value
        assert error.code == 500 and error.reason == "InternalError"
        assert error.message.startswith('secrets "db" in namespace "default" cannot be read: ')
        assert f"\"{keys.primary.id}\"" in error.message and str(other.path) in error.message
        _no_secret_bytes(error.body())


async def test_an_unreadable_secret_is_an_error_event_in_a_watch(tmp_path: Path, keys: encryptionkeys.KeyRing) -> None:
    store, _ = await _unreadable_store(tmp_path, keys)
    replay = store.watch(SECRETS.key_prefix(None), start_revision=1)
    (event,) = await _drain(replay, store.revision)
    await replay.aclose()  # type: ignore[attr-defined]
    assert isinstance(event.kv.value, encryption.UnreadableValue)

    plain = to_cached(event)
    line = orjson.loads(plain.raw_line("ADDED"))
    assert line["type"] == "ERROR" and line["object"]["code"] == 500
    assert 'secrets "db" in namespace "default" cannot be read' in line["object"]["message"]
    # Watchers with selectors or Tables test a placeholder, and are sent the same ERROR.
    selected = to_cached(event)
    assert selected.obj["metadata"] == {"name": "db", "namespace": "default", "resourceVersion": str(event.kv.mod_revision)}
    assert selected.lines[(True, "ADDED")] == selected.raw_line("MODIFIED") == plain.raw_line("ADDED")


async def test_values_without_a_key_ring_are_reported_not_parsed(keys: encryptionkeys.KeyRing) -> None:
    inner = MemoryStore()
    await ObjectStorage(EncryptedStore(inner, keys)).create(SECRETS, _secret("db"))
    with pytest.raises(errors.ApiError, match="encrypted at rest, but this server runs without encryption keys"):
        await ObjectStorage(inner).get(SECRETS, "default", "db")


async def _next(watcher: Watcher) -> CachedEvent:
    while True:
        assert await watcher.wait(2), "no event within 2 s"
        item = watcher.items.popleft()
        if isinstance(item, CachedEvent):
            return item
