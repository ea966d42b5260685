"""Server-side apply: who owns which field of an object, kept in `metadata.managedFields`.

Kubernetes records, for every writer ("manager"), the set of fields it last set, so that an
`apply` can do three things a plain merge cannot: refuse to overwrite a value another writer
set (a conflict, 409, unless `force`), remove the fields the applier used to set and has now
dropped from its configuration, and leave everything else alone. This module is that
bookkeeping, as two pure functions the API server calls on every write:

- `apply` for `application/apply-patch+yaml` requests;
- `update` for every other write (create, PUT, merge patch, JSON patch), which hands the fields
  the write changed to its manager and takes them away from everybody else.

The entries keep Kubernetes' shape (`manager`, `operation`, `apiVersion`, `time`, `fieldsType:
FieldsV1`, `fieldsV1`, `subresource`) so that kubectl, the python client and kopf read them
unchanged. The field sets themselves (paths, object diffs, FieldsV1 tries) are `fieldsets`;
tries are only decoded at the start of a call and encoded at its end.

Kubernetes details kept on purpose: an apply to an object without managedFields first credits
its existing fields to "before-first-apply", so it cannot silently take values it never set; an
entry's `time` moves only when its write changed something, so a no-op apply returns the live
object unchanged; at most ten Update entries are kept, older ones fold into "ancient-changes".
`apply` returns a fresh object that shares nothing with its arguments.

How a list or map merges follows the schema rules described in `fieldsets`.

Simplifications, each deliberate:
- One identity per (manager, operation, subresource); Kubernetes also splits Update entries by
  apiVersion, which matters only for a multi-version API.
- An item of an associative list that another manager still owns fields inside survives when
  the applier drops it (Kubernetes removes it anyway); only fields nobody owns are removed.
- `null` in an apply configuration removes the field from the object and keeps the claim.
- A user may reset `managedFields` with a write: `[]` or `[{}]` clears all entries (Kubernetes
  only honours `[{}]`), any other different list replaces them. Omitting the key keeps them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, TypeAlias

from hypermesh.api import patching
from hypermesh.api.fieldsets import (
    ANCIENT_CHANGES_MANAGER,
    BEFORE_FIRST_APPLY_MANAGER,
    JSON,
    MAX_UPDATE_MANAGERS,
    FieldManagerError,
    FieldSet,
    Path,
    _all_nodes,
    _child_schema,
    _config_fields,
    _decode_fields,
    _Diff,
    _diff_objects,
    _encode_fields,
    _item_element,
    _list_rule,
    _map_is_atomic,
    _ownable,
    _untracked,
    format_path,
)


@dataclass(frozen=True, slots=True)
class Conflict:
    """One field that an apply would change although another manager owns it."""

    manager: str
    field: str
    operation: str = "Update"
    api_version: str = ""
    subresource: str = ""

    def describe_manager(self) -> str:
        """Name the manager the way Kubernetes' conflict messages do."""
        text = json.dumps(self.manager)
        if self.subresource:
            text += f" with subresource {json.dumps(self.subresource)}"
        if self.operation == "Update":
            text += f" using {self.api_version}"
        return text


class ApplyConflict(Exception):
    """An apply without `force` would take fields other managers own (the API answers 409)."""

    def __init__(self, conflicts: list[Conflict]) -> None:
        self.conflicts = conflicts
        self.message = _conflict_message(conflicts)
        super().__init__(self.message)


def _conflict_message(conflicts: list[Conflict]) -> str:
    """Render conflicts exactly as Kubernetes words them."""
    count = len(conflicts)
    prefix = f"Apply failed with {count} conflict{'s' if count != 1 else ''}: "
    if count == 1:
        only = conflicts[0]
        return f"{prefix}conflict with {only.describe_manager()}: {only.field}"
    grouped: dict[str, list[str]] = {}
    for conflict in conflicts:
        grouped.setdefault(conflict.describe_manager(), []).append(conflict.field)
    lines = []
    for manager in sorted(grouped):
        lines.append(f"conflicts with {manager}:")
        lines.extend(f"- {name}" for name in grouped[manager])
    return prefix + "\n".join(lines)


# --------------------------------------------------------------------------------------------
# managedFields entries.


@dataclass(slots=True)
class _Entry:
    manager: str
    operation: str
    api_version: str
    time: str | None
    subresource: str
    fields: FieldSet
    # The entry's FieldsV1 as stored and the set it decoded to: an entry a write did not
    # touch is written back as it was, which saves re-encoding it on every write.
    stored: tuple[dict[str, JSON], FieldSet] | None = None

    @property
    def identity(self) -> tuple[str, str, str]:
        return self.manager, self.operation, self.subresource

    def encode(self) -> dict[str, JSON]:
        entry: dict[str, JSON] = {
            "manager": self.manager,
            "operation": self.operation,
            "apiVersion": self.api_version,
        }
        if self.time is not None:
            entry["time"] = self.time
        entry["fieldsType"] = "FieldsV1"
        if self.stored is not None and self.stored[1] == self.fields:
            entry["fieldsV1"] = patching.clone_json(self.stored[0])
        else:
            entry["fieldsV1"] = _encode_fields(self.fields)
        if self.subresource:
            entry["subresource"] = self.subresource
        return entry


_Entries: TypeAlias = dict[tuple[str, str, str], _Entry]


def _decode_live_entries(obj: JSON) -> _Entries:
    """Read the stored managedFields leniently: an unreadable entry is dropped, not fatal."""
    if not isinstance(obj, dict):
        return {}
    metadata = obj.get("metadata")
    raw = metadata.get("managedFields") if isinstance(metadata, dict) else None
    if not isinstance(raw, list):
        return {}
    entries: _Entries = {}
    for item in raw:
        if not isinstance(item, dict) or item.get("operation") not in ("Apply", "Update"):
            continue
        fields: FieldSet = set()
        raw_fields = item.get("fieldsV1") or {}
        _decode_fields(raw_fields, (), fields, strict=False, where="")
        identity = _identity_of(item)
        duplicate = identity in entries
        _add_entry(entries, item, fields)
        entries[identity].stored = None if duplicate else (raw_fields, set(fields))
    return entries


def _decode_user_entries(raw: JSON) -> _Entries:
    """Validate managedFields a user wrote; `[]` and `[{}]` both mean "forget all owners"."""
    where = "metadata.managedFields"
    if raw is None:
        return {}
    if not isinstance(raw, list):
        raise FieldManagerError(f"{where}: must be a list of entries")
    entries: _Entries = {}
    for position, item in enumerate(raw):
        at = f"{where}[{position}]"
        if not isinstance(item, dict):
            raise FieldManagerError(f"{at}: must be an object")
        if not item:
            continue
        for name in ("manager", "apiVersion", "time", "subresource"):
            if name in item and item[name] is not None and not isinstance(item[name], str):
                raise FieldManagerError(f"{at}.{name}: must be a string")
        if item.get("operation") not in ("Apply", "Update"):
            raise FieldManagerError(
                f"{at}.operation: Unsupported value: {json.dumps(item.get('operation'))}: "
                'supported values: "Apply", "Update"'
            )
        if item.get("fieldsType", "FieldsV1") != "FieldsV1":
            raise FieldManagerError(
                f"{at}.fieldsType: Unsupported value: {json.dumps(item.get('fieldsType'))}: "
                'supported values: "FieldsV1"'
            )
        fields: FieldSet = set()
        _decode_fields(item.get("fieldsV1") or {}, (), fields, strict=True, where=f"{at}.fieldsV1")
        _add_entry(entries, item, fields)
    return entries


def _identity_of(item: dict[str, JSON]) -> tuple[str, str, str]:
    return (
        str(item.get("manager") or ""),
        str(item["operation"]),
        str(item.get("subresource") or ""),
    )


def _add_entry(entries: _Entries, item: dict[str, JSON], fields: FieldSet) -> None:
    manager, operation, subresource = _identity_of(item)
    entry = _Entry(
        manager=manager,
        operation=operation,
        api_version=str(item.get("apiVersion") or ""),
        time=item.get("time"),
        subresource=subresource,
        fields=fields,
    )
    existing = entries.get(entry.identity)
    if existing is not None:
        # Two entries with one identity can only come from a hand-edit; they mean the union.
        existing.fields |= fields
    else:
        entries[entry.identity] = entry


def _cap_update_entries(entries: _Entries) -> None:
    """Fold the oldest Update entries into one bucket once there are too many of them."""
    updates = [entry for entry in entries.values() if entry.operation == "Update"]
    if len(updates) <= MAX_UPDATE_MANAGERS:
        return
    updates.sort(key=lambda entry: (entry.time or "", entry.manager))
    oldest = updates[: len(updates) - MAX_UPDATE_MANAGERS + 1]
    bucket_key = (ANCIENT_CHANGES_MANAGER, "Update", "")
    bucket = entries.get(bucket_key) or _Entry(
        ANCIENT_CHANGES_MANAGER, "Update", oldest[-1].api_version, None, "", set()
    )
    for entry in oldest:
        del entries[entry.identity]
        bucket.fields |= entry.fields
        bucket.time = max(bucket.time or "", entry.time or "") or None
    entries[bucket_key] = bucket


def _encode_entries(entries: _Entries) -> list[dict[str, JSON]]:
    """Drop empty Update entries and order the rest as Kubernetes does: operation, time, manager.

    An Apply entry stays even when empty: it records that the object is managed by apply, so a
    later apply does not credit server-set fields to "before-first-apply" (which would turn an
    identical re-apply of, say, a bare Namespace into a change).
    """
    _cap_update_entries(entries)
    kept = [entry for entry in entries.values() if entry.fields or entry.operation == "Apply"]
    kept.sort(
        key=lambda e: (e.operation, e.time or "", e.manager, e.api_version, e.subresource)
    )
    return [entry.encode() for entry in kept]


def _with_managed_fields(obj: dict[str, JSON], encoded: list[dict[str, JSON]]) -> None:
    """Store `encoded` in obj's metadata (obj and its metadata must be private copies)."""
    metadata = obj["metadata"]
    if encoded:
        metadata["managedFields"] = encoded
    else:
        metadata.pop("managedFields", None)


# --------------------------------------------------------------------------------------------
# Merging an apply configuration into the live object.


def _merge(live: JSON, config: JSON, schema: JSON, path: Path) -> JSON:
    """Merge `config` onto `live` (a private copy, edited in place) and return the result."""
    if isinstance(config, dict):
        if _map_is_atomic(schema):
            return patching.clone_json(config)
        target = live if isinstance(live, dict) else {}
        for key, value in config.items():
            if len(path) < 2 and _untracked(path, key):
                # Kind and apiVersion follow the request; the server's metadata stays the
                # server's, except what a create brings along (name, namespace).
                brought = key != "managedFields" and key not in target and value is not None
                if not path or brought:
                    target[key] = patching.clone_json(value)
                continue
            if not path and key == "metadata" and not isinstance(value, dict):
                # Metadata holds the server's fields too; a configuration cannot drop it whole.
                continue
            if value is None:
                target.pop(key, None)
                continue
            target[key] = _merge(
                target.get(key), value, _child_schema(schema, path, key), path + ("f:" + key,)
            )
        return target
    if isinstance(config, list):
        kind, keys = _list_rule(schema)
        if kind == "atomic" or not isinstance(live, list):
            return _fresh_list(config, kind, schema, path)
        return _merge_list(live, config, kind, keys, schema.get("items"), path)
    return config


def _fresh_list(config: list[JSON], kind: str, schema: JSON, path: Path) -> list[JSON]:
    """A configured list with nothing live to merge into; keyed items still drop their nulls."""
    if kind != "map":
        copied: list[JSON] = patching.clone_json(config)
        return copied
    item_schema = schema.get("items")
    return [_merge(None, item, item_schema, path + ("item",)) for item in config]


def _merge_list(
    live: list[JSON],
    config: list[JSON],
    kind: str,
    keys: tuple[str, ...],
    item_schema: JSON,
    path: Path,
) -> list[JSON]:
    """Merge an associative list or set: shared items merge in place, live order is kept.

    A configured item the live list lacks goes right after the configured item before it, or,
    for the first ones, before the first configured item that is live; else at the end.
    """
    result = list(live)
    elements: list[str | None] = [_item_element(item, kind, keys, item_schema) for item in live]
    inserted_after: int | None = None
    pending: list[tuple[str, JSON]] = []
    for item in config:
        element = _item_element(item, kind, keys, item_schema)
        position = elements.index(element) if element in elements else -1
        if position >= 0:
            if kind == "map":
                result[position] = _merge(result[position], item, item_schema, path + ("item",))
            # Items configured before the first live one go in front of it.
            for offset, (queued, value) in enumerate(pending):
                result.insert(position + offset, value)
                elements.insert(position + offset, queued)
            position += len(pending)
            pending.clear()
            inserted_after = position
            continue
        if kind == "map":
            value = _merge(None, item, item_schema, path + ("item",))
        else:
            value = patching.clone_json(item)
        if inserted_after is None:
            pending.append((element or "", value))
        else:
            inserted_after += 1
            result.insert(inserted_after, value)
            elements.insert(inserted_after, element)
    for queued, value in pending:
        result.append(value)
        elements.append(queued)
    return result


# --------------------------------------------------------------------------------------------
# Pruning what the applier dropped.


def _prune(obj: dict[str, JSON], last: FieldSet, entries: _Entries, schema: JSON) -> None:
    """Remove from `obj` the fields the applier owned before and nobody owns any more."""
    owned: FieldSet = set()
    for entry in entries.values():
        owned |= entry.fields
    candidates = last - owned
    if not candidates:
        return
    # A node stays while anybody owns it or anything below it.
    keep: FieldSet = set()
    for path in owned:
        for depth in range(1, len(path) + 1):
            keep.add(path[:depth])
    for path in sorted(candidates, key=len, reverse=True):
        if path not in keep and _ownable(path) and not _is_key_field(path):
            _remove_path(obj, path, schema, keep)


def _is_key_field(path: Path) -> bool:
    """True for the key field of a list item (`name` of a container): it goes with its item."""
    if len(path) < 2 or not path[-2].startswith("k:") or not path[-1].startswith("f:"):
        return False
    try:
        return path[-1][2:] in json.loads(path[-2][2:])
    except ValueError:
        return False


def _remove_path(obj: dict[str, JSON], path: Path, schema: JSON, keep: FieldSet) -> None:
    """Delete the node at `path`, then any ancestor that this left empty and nobody owns."""
    chain: list[tuple[JSON, Any]] = []
    node: JSON = obj
    for depth, element in enumerate(path):
        kind = element[:2]
        if kind == "f:":
            key = element[2:]
            if not isinstance(node, dict) or key not in node:
                return
            schema = _child_schema(schema, path[:depth], key)
            chain.append((node, key))
            node = node[key]
            continue
        if not isinstance(node, list):
            return
        rule, keys = _list_rule(schema)
        item_schema = schema.get("items") if schema is not None else None
        if kind == "i:":
            position = int(element[2:])
            if position >= len(node):
                return
        else:
            position = next(
                (
                    i
                    for i, item in enumerate(node)
                    if _item_element(item, rule, keys, item_schema) == element
                ),
                -1,
            )
            if position < 0:
                return
        schema = item_schema
        chain.append((node, position))
        node = node[position]
    container, selector = chain[-1]
    del container[selector]
    for depth in range(len(chain) - 2, -1, -1):
        container, selector = chain[depth]
        ancestor = path[: depth + 1]
        # An ancestor goes only if this removal emptied it and nobody has a stake in it.
        if container[selector] or ancestor in keep or not _ownable(ancestor):
            return
        del container[selector]


# --------------------------------------------------------------------------------------------
# The two operations.


def apply(
    live: dict[str, JSON] | None,
    config: dict[str, JSON],
    *,
    manager: str,
    force: bool,
    schema: dict[str, JSON] | None,
    now: str,
    api_version: str,
    subresource: str = "",
) -> dict[str, JSON]:
    """Server-side apply `config` as `manager` onto `live` (None to create); return the result.

    Raises `ApplyConflict` when the apply would change a field another manager owns and
    `force` is false, and `FieldManagerError` for a configuration that cannot be tracked
    (an associative list item without its keys, a duplicated item).
    """
    if not isinstance(config, dict):
        raise FieldManagerError("an apply configuration must be an object")
    config_fields = _config_fields(config, schema)
    entries = _decode_live_entries(live)
    if live and not entries:
        # Fields written before anybody tracked them belong to a stand-in owner, so the first
        # apply still conflicts with values it did not set instead of silently taking them.
        before = _Diff()
        _all_nodes(live, schema, (), before.added)
        if before.added:
            entries[(BEFORE_FIRST_APPLY_MANAGER, "Update", "")] = _Entry(
                BEFORE_FIRST_APPLY_MANAGER, "Update", api_version, now, "", before.added
            )

    merged: dict[str, JSON] = _merge(patching.clone_json(live) if live else {}, config, schema, ())
    if not isinstance(merged.get("metadata"), dict):
        merged["metadata"] = {}
    identity = (manager, "Apply", subresource)
    previous = entries.get(identity)
    entries[identity] = _Entry(manager, "Apply", api_version, now, subresource, config_fields,
                               previous.stored if previous is not None else None)
    if previous is not None and previous.fields:
        _prune(merged, previous.fields, entries, schema)

    diff = _diff_objects(live, merged, schema)
    changed = diff.changed()
    conflicts = [
        Conflict(entry.manager, format_path(path), entry.operation, entry.api_version,
                 entry.subresource)
        for key, entry in entries.items()
        if key != identity
        for path in sorted(entry.fields & changed)
    ]
    if conflicts and not force:
        conflicts.sort(key=lambda c: (c.describe_manager(), c.field))
        raise ApplyConflict(conflicts)
    for key, entry in entries.items():
        if key != identity:
            # Forced fields move to the applier; removed fields belong to nobody.
            entry.fields -= changed
            entry.fields -= diff.removed

    # An apply that changed nothing keeps its old timestamp, so no-op applies stay no-ops.
    if previous is not None and previous.fields == config_fields and not diff:
        entries[identity].time = previous.time
    _with_managed_fields(merged, _encode_entries(entries))
    return merged


def update(
    old: dict[str, JSON] | None,
    new: dict[str, JSON],
    *,
    manager: str,
    schema: dict[str, JSON] | None,
    now: str,
    api_version: str,
    subresource: str = "",
    operation: str = "Update",
) -> dict[str, JSON]:
    """Record an ordinary write (create, PUT, merge or JSON patch) from `manager`.

    The fields the write added or changed become `manager`'s and nobody else's; fields it
    removed belong to nobody. Returns `new` with fresh `metadata.managedFields`: the root and
    `metadata` are copied, deeper values are shared with `new`.
    """
    if not isinstance(new, dict):
        raise FieldManagerError("an object must be a JSON object")
    old_metadata = old.get("metadata") if isinstance(old, dict) else None
    new_metadata = new.get("metadata")
    if not isinstance(new_metadata, dict):
        new_metadata = {}
    old_managed = old_metadata.get("managedFields") if isinstance(old_metadata, dict) else None
    if "managedFields" in new_metadata and new_metadata["managedFields"] is not None and (
        new_metadata["managedFields"] != old_managed
    ):
        # The user rewrote managedFields: their list is the starting point for this write.
        entries = _decode_user_entries(new_metadata["managedFields"])
    else:
        entries = _decode_live_entries(old)

    diff = _diff_objects(old, new, schema)
    changed = diff.changed()
    identity = (manager, operation, subresource)
    for key, entry in entries.items():
        if key != identity:
            entry.fields -= changed
            entry.fields -= diff.removed
    own = entries.get(identity)
    if changed:
        if own is None:
            own = entries[identity] = _Entry(manager, operation, api_version, now, subresource,
                                             set())
        own.fields = (own.fields - diff.removed) | changed
        own.time = now
        own.api_version = api_version
    elif own is not None:
        own.fields -= diff.removed

    result = dict(new)
    result["metadata"] = dict(new_metadata)
    _with_managed_fields(result, _encode_entries(entries))
    return result


def owned_fields(
    obj: dict[str, JSON], manager: str, *, operation: str = "Apply", subresource: str = ""
) -> set[str]:
    """The fields `manager` owns in `obj`, rendered like `.spec.replicas`; for tests and tools."""
    entry = _decode_live_entries(obj).get((manager, operation, subresource))
    return {format_path(path) for path in entry.fields} if entry else set()
