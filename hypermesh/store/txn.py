"""Transaction rules every in-process backend shares.

`evaluate_txn` decides one transaction against a view of the current state. The SQLite writer
runs it over a whole batch (each transaction seeing the ones before it) and only then writes, so
the compare rules exist once, and `MemoryStore` runs the very same code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from hypermesh.store.base import (
    Compare,
    Delete,
    Event,
    KeyValue,
    Op,
    Put,
    TxnResult,
)

# At most this many ops in one branch of a transaction (etcd's default is 128; the API server
# writes one or two keys per transaction).
MAX_TXN_OPS = 10_000

_COMPARE_OPS = ("=", "!=", "<", ">")


# Key ranges.


def prefix_end(prefix: str) -> str | None:
    """The smallest key above every key that starts with `prefix` (None when unbounded).

    Python orders `str` by code point and SQLite orders UTF-8 text bytewise; both orders agree,
    so this bound works for either backend.
    """
    while prefix:
        last = ord(prefix[-1])
        if last < 0x10FFFF:
            following = last + 1
            # Surrogates cannot be encoded to UTF-8, so no key contains one: skip them.
            if 0xD800 <= following <= 0xDFFF:
                following = 0xE000
            return prefix[:-1] + chr(following)
        prefix = prefix[:-1]
    return None


# Transactions.


def check_txn(compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op]) -> None:
    """Reject a malformed transaction before it reaches a writer.

    Raises TypeError or ValueError naming the offending compare or op.
    """
    for index, compare in enumerate(compares):
        if not isinstance(compare, Compare):
            raise TypeError(f"compares[{index}] is a {type(compare).__name__}, not a Compare")
        _check_key(compare.key, f"compares[{index}]")
        if compare.op not in _COMPARE_OPS:
            raise ValueError(
                f"compares[{index}] on {compare.key!r}: op {compare.op!r} is not one of "
                f"{', '.join(_COMPARE_OPS)}"
            )
    for branch, ops in (("success", success), ("failure", failure)):
        if len(ops) > MAX_TXN_OPS:
            raise ValueError(f"the {branch} branch has {len(ops)} ops; at most {MAX_TXN_OPS}")
        seen: set[str] = set()
        for index, op in enumerate(ops):
            where = f"{branch}[{index}]"
            if isinstance(op, Put):
                if not isinstance(op.value, bytes):
                    raise TypeError(
                        f"{where} puts {op.key!r} with a {type(op.value).__name__}; "
                        "values are bytes"
                    )
            elif not isinstance(op, Delete):
                raise TypeError(f"{where} is a {type(op).__name__}, not a Put or a Delete")
            _check_key(op.key, where)
            # One revision holds at most one version of a key, as in etcd.
            if op.key in seen:
                raise ValueError(
                    f"{where}: key {op.key!r} appears twice in the {branch} branch; "
                    "a transaction writes each key at most once"
                )
            seen.add(op.key)


def _check_key(key: object, where: str) -> None:
    if not isinstance(key, str) or not key:
        raise ValueError(f"{where}: the key must be a non-empty str, got {key!r}")


def compare_holds(compare: Compare, kv: KeyValue | None) -> bool:
    """Whether `compare` holds for the key's current version (None: the key is absent)."""
    actual = kv.mod_revision if kv is not None else 0
    if compare.op == "=":
        return actual == compare.mod_revision
    if compare.op == "!=":
        return actual != compare.mod_revision
    if compare.op == "<":
        return actual < compare.mod_revision
    return actual > compare.mod_revision


def evaluate_txn(
    current: Callable[[str], KeyValue | None],
    compares: Sequence[Compare],
    success: Sequence[Op],
    failure: Sequence[Op],
    revision: int,
) -> tuple[TxnResult, list[Event]]:
    """Decide one transaction against `current` (the live version of a key, or None).

    `revision` is the store revision before the transaction. Returns the result and the events
    it produces (in key order); the caller applies the events to its state. Deleting an absent
    key changes nothing, and a transaction that changes nothing takes no revision.
    """
    succeeded = all(compare_holds(compare, current(compare.key)) for compare in compares)
    ops = success if succeeded else failure
    new_revision = revision + 1
    prev: list[KeyValue | None] = []
    events: list[Event] = []
    for op in ops:
        old = current(op.key)
        prev.append(old)
        if isinstance(op, Put):
            kv = KeyValue(
                key=op.key,
                value=op.value,
                create_revision=old.create_revision if old is not None else new_revision,
                mod_revision=new_revision,
                version=old.version + 1 if old is not None else 1,
            )
            events.append(Event("PUT", kv, old))
        elif old is not None:
            events.append(Event("DELETE", tombstone(op.key, new_revision), old))
    conflict = () if succeeded else tuple(current(compare.key) for compare in compares)
    if events:
        # Watchers see the changes of one revision in key order, live or replayed.
        events.sort(key=_event_key)
        revision = new_revision
    return TxnResult(succeeded, revision, tuple(prev), conflict), events


def tombstone(key: str, revision: int) -> KeyValue:
    """The `kv` of a DELETE event: no value, no creation, version 0."""
    return KeyValue(key=key, value=b"", create_revision=0, mod_revision=revision, version=0)


def _event_key(event: Event) -> str:
    return event.kv.key
