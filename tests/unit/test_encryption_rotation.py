"""Key rotation: a new primary KEK, every value re-encrypted, old keys dropped; interrupted
rotations complete on a rerun, and concurrent writers lose nothing."""

from __future__ import annotations

import asyncio
import base64
import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from hypermesh.api import encryption, encryptionkeys, errors, keyrotation
from hypermesh.api.encryptedstore import EncryptedStore
from hypermesh.api.storage import ObjectStorage
from hypermesh.resources.registry import Registry
from hypermesh.store import Compare, MemoryStore, Op, SqliteStore, Store, TxnResult

REGISTRY = Registry.with_builtins()
SECRETS = REGISTRY.by_plural("", "v1", "secrets")
assert SECRETS is not None


def _secret(name: str, value: str = "s3cret") -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": "default", "uid": name},
        "data": {"v": base64.b64encode(value.encode()).decode()},
    }


async def _fill(store: EncryptedStore, count: int) -> ObjectStorage:
    storage = ObjectStorage(store)
    for i in range(count):
        await storage.create(SECRETS, _secret(f"s{i}", f"value-{i}"))
    # A second version of each, so the history holds old-key ciphertext too.
    for i in range(count):
        obj = await storage.get_required(SECRETS, "default", f"s{i}")
        await storage.update(SECRETS, obj, int(obj["metadata"]["resourceVersion"]))
    return storage


async def _all_kek_ids(store: Store) -> set[str | None]:
    """Every KEK id in the store, past versions included (read by a watch's replay)."""
    ids: set[str | None] = {encryption.kek_id_of(kv.value) for kv in (await store.range("")).kvs}
    if store.compact_revision >= store.revision:
        return ids  # no past version is retained
    watch = store.watch("", start_revision=store.compact_revision + 1)
    async for batch in watch:
        for event in batch.events:
            for kv in (event.kv, event.prev):
                if kv is not None and kv.value:
                    ids.add(encryption.kek_id_of(kv.value))
        if batch.revision >= store.revision:
            break
    await watch.aclose()  # type: ignore[attr-defined]
    return ids


async def _values(storage: ObjectStorage) -> dict[str, str]:
    page = await storage.list(SECRETS, None, predicate=lambda obj: True)
    return {o["metadata"]["name"]: base64.b64decode(o["data"]["v"]).decode() for o in page.items}


async def test_rotation_re_encrypts_everything_and_retires_the_old_key(tmp_path: Path) -> None:
    keys = encryptionkeys.load_or_create(tmp_path)
    old = keys.primary.id
    store = EncryptedStore(MemoryStore(), keys)
    storage = await _fill(store, 20)
    before = await _values(storage)
    assert await _all_kek_ids(store.inner) == {old}

    report = await keyrotation.rotate(store)

    assert report.primary != old and report.retired == (old,) and not report.resumed
    assert report.resealed.rewritten == 20
    assert encryptionkeys.load(keys.path).ids == [report.primary]
    # Not one version left under the old key, current or past.
    assert await _all_kek_ids(store.inner) == {report.primary}
    assert await _values(storage) == before
    # A server started afresh on the rotated key file reads everything.
    fresh = EncryptedStore(store.inner, encryptionkeys.load(keys.path))
    assert await _values(ObjectStorage(fresh)) == before


class _CrashingStore(MemoryStore):
    """A backend that dies (raises) after `writes` more transactions."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: int | None = None

    async def txn(self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()) -> TxnResult:
        if self.writes is not None:
            if self.writes == 0:
                raise RuntimeError("crash")
            self.writes -= 1
        return await super().txn(compares, success, failure)


async def test_an_interrupted_rotation_is_completed_by_a_rerun(tmp_path: Path) -> None:
    keys = encryptionkeys.load_or_create(tmp_path)
    old = keys.primary.id
    inner = _CrashingStore()
    store = EncryptedStore(inner, keys)
    storage = await _fill(store, 10)
    before = await _values(storage)

    inner.writes = 4
    with pytest.raises(RuntimeError, match="crash"):
        await keyrotation.rotate(store)
    inner.writes = None
    # Half done: both keys kept, both in use, everything reads (as a restarted server sees it).
    on_disk = encryptionkeys.load(keys.path)
    assert len(on_disk.ids) == 2 and on_disk.primary.id != old
    assert await keyrotation.key_uses(inner) == {on_disk.primary.id: 4, old: 6}
    restarted = EncryptedStore(inner, on_disk)
    assert await _values(ObjectStorage(restarted)) == before

    report = await keyrotation.rotate(restarted)
    assert report.resumed and report.primary == on_disk.primary.id and report.retired == (old,)
    assert report.resealed.rewritten == 6
    assert encryptionkeys.load(keys.path).ids == [report.primary]
    assert await _all_kek_ids(inner) == {report.primary}
    assert await _values(ObjectStorage(restarted)) == before


class _RacedStore(MemoryStore):
    """A backend on which `race` runs right after the first page of a range is read: a write
    that lands between a rotation's read of a value and its compare-and-swap."""

    def __init__(self) -> None:
        super().__init__()
        self.race: Any = None

    async def range(self, prefix: str, **options: Any) -> Any:
        result = await super().range(prefix, **options)
        race, self.race = self.race, None
        if race is not None:
            await race()
        return result


async def test_a_write_between_read_and_swap_wins(tmp_path: Path) -> None:
    keys = encryptionkeys.load_or_create(tmp_path)
    inner = _RacedStore()
    store = EncryptedStore(inner, keys)
    storage = await _fill(store, 10)

    async def race() -> None:
        obj = await storage.get_required(SECRETS, "default", "s3")
        obj["data"]["v"] = base64.b64encode(b"raced").decode()
        await storage.update(SECRETS, obj, int(obj["metadata"]["resourceVersion"]))

    inner.race = race
    report = await keyrotation.rotate(store)
    # s3 was re-read after its swap failed, found sealed under the new key, and left alone.
    assert report.resealed.rewritten == 9
    assert (await _values(storage))["s3"] == "raced"
    assert await keyrotation.key_uses(inner) == {report.primary: 10}


async def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    keys = encryptionkeys.load_or_create(tmp_path)
    # SQLite: every call is a real hop to a thread, so the writer and the rotation interleave.
    store = EncryptedStore(await SqliteStore.open(tmp_path / "state.db"), keys)
    storage = await _fill(store, 50)
    stop = asyncio.Event()
    written: dict[str, str] = {}

    async def writer() -> None:
        i = 0
        while not stop.is_set():
            name = f"s{i % 50}"
            obj = await storage.get_required(SECRETS, "default", name)
            changed = copy.deepcopy(obj)
            value = f"w-{i}"
            changed["data"]["v"] = base64.b64encode(value.encode()).decode()
            try:
                await storage.update(SECRETS, changed, int(obj["metadata"]["resourceVersion"]))
            except errors.ApiError as exc:
                # The rotation re-encrypted it between our read and write: a client retries.
                assert exc.code == 409
                continue
            written[name] = value
            i += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(writer())
    await asyncio.sleep(0.01)
    report = await keyrotation.rotate(store)
    stop.set()
    await task
    values = await _values(storage)
    assert all(values[name] == value for name, value in written.items())
    assert await keyrotation.key_uses(store.inner) == {report.primary: 50}
    await store.close()


async def test_an_unreadable_value_stops_the_rotation_and_keeps_every_key(tmp_path: Path) -> None:
    lost = encryptionkeys.load_or_create(tmp_path / "lost")
    inner = MemoryStore()
    await ObjectStorage(EncryptedStore(inner, lost)).create(SECRETS, _secret("orphan"))
    keys = encryptionkeys.load_or_create(tmp_path)
    store = EncryptedStore(inner, keys)
    await ObjectStorage(store).create(SECRETS, _secret("fine"))

    with pytest.raises(keyrotation.RotationError) as failure:
        await keyrotation.rotate(store)
    message = str(failure.value)
    assert "/registry/core/secrets/default/orphan" in message and f"\"{lost.primary.id}\"" in message
    assert str(keys.path) in message
    assert len(encryptionkeys.load(keys.path).ids) == 2


async def test_rotate_data_dir_works_offline_only(tmp_path: Path) -> None:
    with pytest.raises(keyrotation.RotationError, match="holds no store"):
        await keyrotation.rotate_data_dir(tmp_path / "nothing")
    keys = encryptionkeys.load_or_create(tmp_path)
    inner = await SqliteStore.open(tmp_path / "state.db")
    await ObjectStorage(EncryptedStore(inner, keys)).create(SECRETS, _secret("db"))
    with pytest.raises(keyrotation.RotationError, match="stop the server first"):
        await keyrotation.rotate_data_dir(tmp_path)
    await inner.close()

    report = await keyrotation.rotate_data_dir(tmp_path)
    assert report.retired == (keys.primary.id,)
    assert report.primary in report.summary()
    data = (tmp_path / "state.db").read_bytes()
    assert f":{report.primary}:".encode() in data
    assert f":{keys.primary.id}:".encode() not in data
