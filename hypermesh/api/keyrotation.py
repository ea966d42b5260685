"""`hypermesh keys rotate`: a new key-encryption key, every sealed value re-encrypted under it,
and the old keys dropped once nothing uses them.

A rotation is four steps, each safe to interrupt, and the state between them is visible in the
key file alone, so a rerun knows where to pick up:

1. a new KEK is written to the key file as the primary (one atomic file replace). From here
   on every write seals under it; the old keys stay, so everything still reads;
2. every value still sealed under another KEK (or still in clear under an encrypted prefix) is
   re-encrypted, each with a compare-and-swap on the revision read (`encryptedstore.reseal`);
3. the store is compacted to the revision reached, so that no retained past version (which a
   watch could replay) is sealed under an old key;
4. a scan confirms that nothing names an old key, and the old keys are dropped from the file.

A key file with more than one key is therefore a rotation that did not finish: a rerun
completes it instead of making yet another key. If a value cannot be opened (its key is gone or
it was altered), the rotation stops before step 3 and keeps every key, naming the objects.

The server holds the store's lock, so the command runs on a stopped server (`rotate_data_dir`).
`rotate` itself only needs an `EncryptedStore` and is safe beside concurrent writers that go
through the same store: they seal under the new primary from step 1 on. Compacting to the
current revision then ends resumable watch history, so such a caller's watchers relist (410).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from hypermesh.api import encryption, encryptionkeys
from hypermesh.api.encryptedstore import DEFAULT_RESOURCES, EncryptedStore, ResealReport, reseal
from hypermesh.store import Store, StoreError, db_path, open_store

# How many unreadable objects an error names before it says "and N more".
_NAMED = 10


class RotationError(Exception):
    """The rotation cannot go on; every key is kept and a rerun resumes it."""


@dataclass(frozen=True, slots=True)
class RotationReport:
    """What a rotation did."""

    primary: str
    retired: tuple[str, ...]
    resumed: bool  # an earlier, interrupted rotation was completed
    resealed: ResealReport
    compacted_at: int

    def summary(self) -> str:
        """One paragraph for the command's output."""
        how = "completed an interrupted rotation" if self.resumed else "rotated"
        retired = ", ".join(self.retired) or "none"
        return (
            f"{how}: primary key-encryption key is now {self.primary}; re-encrypted "
            f"{self.resealed.rewritten} of {self.resealed.scanned} stored objects; history "
            f"compacted at revision {self.compacted_at}; retired keys: {retired}"
        )


async def rotate(store: EncryptedStore) -> RotationReport:
    """Rotate the KEK of `store` (see the module docstring for the steps)."""
    keys = store.keys
    resumed = len(keys.ids) > 1
    if not resumed:
        await asyncio.to_thread(keys.add_primary)
    primary = keys.primary.id
    # Every key, not only the encrypted prefixes: a value sealed under an older configuration
    # elsewhere still names an old key.
    report = await reseal(store, "")
    if report.unreadable:
        raise RotationError(_unreadable_message(report, keys.path, primary))
    revision = store.inner.revision
    if revision > store.inner.compact_revision:
        await store.inner.compact(revision)
    still_used = {kek_id: count for kek_id, count in (await key_uses(store.inner)).items() if kek_id != primary}
    if still_used:
        # Only a bug or a writer with another key ring gets here; keeping the keys is safe.
        uses = ", ".join(f"\"{kek_id}\" by {count}" for kek_id, count in sorted(still_used.items()))
        raise RotationError(
            f"after re-encryption, stored values still use old keys ({uses}); every key in "
            f"{keys.path} is kept: run the rotation again"
        )
    retired = tuple(kek_id for kek_id in keys.ids if kek_id != primary)
    if retired:
        await asyncio.to_thread(keys.retire, list(retired))
    return RotationReport(primary, retired, resumed, report, revision)


async def key_uses(store: Store, prefix: str = "") -> dict[str, int]:
    """How many current values under `prefix` each KEK seals (from the headers alone)."""
    uses: dict[str, int] = {}
    start_after: str | None = None
    while True:
        page = await store.range(prefix, start_after=start_after, limit=1000)
        for kv in page.kvs:
            try:
                kek_id = encryption.kek_id_of(kv.value)
            except encryption.DecryptError:
                kek_id = "(malformed header)"
            if kek_id is not None:
                uses[kek_id] = uses.get(kek_id, 0) + 1
        if not page.more or not page.kvs:
            return uses
        start_after = page.kvs[-1].key


async def rotate_data_dir(data_dir: Path, *, resources: tuple[tuple[str, str], ...] = DEFAULT_RESOURCES) -> RotationReport:
    """Rotate the keys of a stopped server's data directory."""
    database = db_path(data_dir)
    if not database.is_file():
        raise RotationError(f"{data_dir} holds no store ({database} does not exist)")
    keys = encryptionkeys.load_or_create(data_dir)
    try:
        inner = await open_store(str(database))
    except StoreError as exc:
        raise RotationError(f"the store cannot be opened: {exc}; stop the server first, keys are rotated offline") from None
    try:
        return await rotate(EncryptedStore(inner, keys, resources=resources))
    finally:
        await inner.close()


def _unreadable_message(report: ResealReport, path: Path, primary: str) -> str:
    named = "; ".join(f"{key}: {reason}" for key, reason in report.unreadable[:_NAMED])
    more = len(report.unreadable) - _NAMED
    if more > 0:
        named += f"; and {more} more"
    return (
        f"{len(report.unreadable)} stored objects cannot be decrypted, so no key was retired "
        f"(the primary is now \"{primary}\"; {path} keeps every key): {named}. Restore the missing "
        "key to the key file, or delete those objects, then run the rotation again"
    )
