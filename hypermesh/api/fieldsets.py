"""Field sets: the paths of an object that a write sets, in FieldsV1 form.

Server-side apply (`fieldmanager`) reasons about sets of field paths. This module turns objects
into such sets and back: which nodes an object or an apply configuration sets, how two objects
differ, and how a set is written as a Kubernetes FieldsV1 trie. A path is a tuple of FieldsV1
elements (`"f:spec"`, `'k:{"name":"web"}'`, `'v:"a"'`), because set algebra on tuples is what
the semantics are made of and it runs in C.

How a list or map contributes comes from the object's OpenAPI v3 structural schema (a CRD's
`openAPIV3Schema`): lists are atomic unless marked `x-kubernetes-list-type: map` (items keyed
by `x-kubernetes-list-map-keys`) or `set`; maps are granular unless marked
`x-kubernetes-map-type: atomic`. `metadata` follows built-in rules whatever the schema says.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias

import orjson

from hypermesh.api import patching

JSON: TypeAlias = Any
Path: TypeAlias = tuple[str, ...]
FieldSet: TypeAlias = set[Path]

# Fields the server sets; nobody owns them and apply never removes them.
SERVER_OWNED_METADATA: Final = frozenset(
    {
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "managedFields",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "selfLink",
    }
)
# Top-level fields that identify the kind rather than hold state, so nobody owns them either.
UNTRACKED_ROOT_FIELDS: Final = frozenset({"apiVersion", "kind"})

# Like Kubernetes, at most this many Update entries are kept; older ones fold into one bucket.
MAX_UPDATE_MANAGERS: Final = 10
ANCIENT_CHANGES_MANAGER: Final = "ancient-changes"
# Kubernetes' name for the owner of an object's fields that were never tracked before an apply.
BEFORE_FIRST_APPLY_MANAGER: Final = "before-first-apply"

_METADATA: Final[Path] = ("f:metadata",)
_STRING_MAP: Final = {"type": "object", "additionalProperties": {"type": "string"}}
# Built-in merge rules for metadata, as in Kubernetes' ObjectMeta.
_METADATA_SCHEMA: Final[dict[str, JSON]] = {
    "type": "object",
    "properties": {
        "labels": _STRING_MAP,
        "annotations": _STRING_MAP,
        "finalizers": {
            "type": "array",
            "items": {"type": "string"},
            "x-kubernetes-list-type": "set",
        },
        "ownerReferences": {
            "type": "array",
            "items": {"type": "object"},
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["uid"],
        },
    },
}


class FieldManagerError(ValueError):
    """The object or its managedFields cannot be tracked as given (the API answers 422)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# --------------------------------------------------------------------------------------------
# Schema rules.


def _child_schema(schema: JSON, path: Path, key: str) -> JSON:
    """The schema of member `key` of the object at `path`; metadata always gets built-in rules."""
    if not path and key == "metadata":
        return _METADATA_SCHEMA
    if schema is None:
        return None
    properties = schema.get("properties")
    if properties is not None:
        sub = properties.get(key)
        if sub is not None:
            return sub
    extra = schema.get("additionalProperties")
    return extra if isinstance(extra, dict) else None


def _is_map_entry(schema: JSON, key: str) -> bool:
    """True when `key` is an entry of a string-keyed map rather than a declared property."""
    if schema is None or not isinstance(schema.get("additionalProperties"), dict):
        return False
    properties = schema.get("properties")
    return properties is None or key not in properties


def _map_is_atomic(schema: JSON) -> bool:
    return schema is not None and schema.get("x-kubernetes-map-type") == "atomic"


def _list_rule(schema: JSON) -> tuple[str, tuple[str, ...]]:
    """Return ("atomic" | "map" | "set", list-map-keys) for a list with this schema."""
    if schema is None:
        return "atomic", ()
    kind = schema.get("x-kubernetes-list-type")
    if kind == "map":
        keys = schema.get("x-kubernetes-list-map-keys") or ()
        if keys:
            return "map", tuple(keys)
    elif kind == "set":
        return "set", ()
    return "atomic", ()


def _untracked(path: Path, key: str) -> bool:
    """True for the fields nobody owns: apiVersion, kind and the server's metadata."""
    if not path:
        return key in UNTRACKED_ROOT_FIELDS
    return path == _METADATA and key in SERVER_OWNED_METADATA


def _ownable(path: Path) -> bool:
    """The root and `metadata` itself always exist, so nobody owns those nodes."""
    return len(path) > 1 or (len(path) == 1 and path != _METADATA)


# --------------------------------------------------------------------------------------------
# Path elements.


def _dumps(value: JSON) -> str:
    """Compact JSON with sorted keys: the canonical spelling inside "k:" and "v:" elements."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError:
        # orjson refuses integers beyond 64 bits; the standard library does not.
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _item_element(item: JSON, kind: str, keys: tuple[str, ...], item_schema: JSON) -> str | None:
    """The path element naming a list item, or None when the item lacks a scalar key."""
    if kind == "set":
        return "v:" + _dumps(item)
    if not isinstance(item, dict):
        return None
    parts: dict[str, JSON] = {}
    for key in keys:
        if key in item:
            value = item[key]
        else:
            # A key field with a schema default (a port's protocol, say) counts as present.
            default = _child_schema(item_schema, ("item",), key)
            if default is None or "default" not in default:
                return None
            value = default["default"]
        if isinstance(value, (dict, list)):
            return None
        parts[key] = value
    return "k:" + _dumps(parts)


def _index_items(
    items: list[JSON], kind: str, keys: tuple[str, ...], item_schema: JSON
) -> dict[str, JSON] | None:
    """Map each item's element to the item, or None if any item is unkeyed or duplicated."""
    index: dict[str, JSON] = {}
    for item in items:
        element = _item_element(item, kind, keys, item_schema)
        if element is None or element in index:
            return None
        index[element] = item
    return index


def format_path(path: Iterable[str]) -> str:
    """Render a path like Kubernetes does: `.spec.containers[name="web"].image`."""
    parts = []
    for element in path:
        kind, body = element[:2], element[2:]
        if kind == "f:":
            parts.append("." + body)
        elif kind == "k:":
            try:
                keys = json.loads(body)
                parts.append(
                    "[" + ",".join(f"{k}={_dumps(keys[k])}" for k in sorted(keys)) + "]"
                )
            except (ValueError, TypeError, AttributeError):
                parts.append("[" + body + "]")
        elif kind == "v:":
            parts.append("[=" + body + "]")
        else:
            parts.append("[" + body + "]")
    return "".join(parts)


# --------------------------------------------------------------------------------------------
# Field sets of objects.


def _config_fields(config: dict[str, JSON], schema: JSON) -> FieldSet:
    """The fields an apply configuration sets: leaves, list items and map entries."""
    out: FieldSet = set()
    _collect_config(config, schema, (), out)
    return out


def _collect_config(value: JSON, schema: JSON, path: Path, out: FieldSet) -> None:
    """Add the field set of `value` (found at `path`) to `out`, validating associative lists."""
    if isinstance(value, dict):
        if _map_is_atomic(schema) or not value:
            if _ownable(path):
                out.add(path)
            return
        for key, child in value.items():
            if not isinstance(key, str):
                # YAML allows keys JSON does not; say so rather than fail obscurely later.
                raise FieldManagerError(f"{format_path(path) or '.'}: key {key!r} is not a string")
            if len(path) < 2 and _untracked(path, key):
                continue
            child_path = path + ("f:" + key,)
            _collect_config(child, _child_schema(schema, path, key), child_path, out)
            # An entry of a real map is owned as a whole, as in Kubernetes.
            if _is_map_entry(schema, key):
                out.add(child_path)
        return
    if isinstance(value, list):
        kind, keys = _list_rule(schema)
        if kind == "atomic" or not value:
            if _ownable(path):
                out.add(path)
            return
        item_schema = schema.get("items")
        seen: set[str] = set()
        for position, item in enumerate(value):
            element = _item_element(item, kind, keys, item_schema)
            if element is None:
                raise FieldManagerError(
                    f"{format_path(path)}[{position}]: an item of this list must be an object "
                    f"with the key field{'s' if len(keys) != 1 else ''} "
                    f"{', '.join(json.dumps(k) for k in keys)} set to scalar values"
                )
            if element in seen:
                raise FieldManagerError(
                    f"{format_path(path)}: duplicate entries for "
                    f"{format_path((element,))}; each item may appear only once"
                )
            seen.add(element)
            item_path = path + (element,)
            out.add(item_path)
            if kind == "map":
                _collect_config(item, item_schema, item_path, out)
        return
    if _ownable(path):
        out.add(path)


def _all_nodes(value: JSON, schema: JSON, path: Path, out: FieldSet) -> None:
    """Add `path` and every granular node below it: what a write that creates `value` sets."""
    if _ownable(path):
        out.add(path)
    if isinstance(value, dict):
        if _map_is_atomic(schema):
            return
        for key, child in value.items():
            if len(path) < 2 and _untracked(path, key):
                continue
            _all_nodes(child, _child_schema(schema, path, key), path + ("f:" + key,), out)
    elif isinstance(value, list) and value:
        kind, keys = _list_rule(schema)
        if kind == "atomic":
            return
        item_schema = schema.get("items")
        index = _index_items(value, kind, keys, item_schema)
        if index is None:
            return
        for element, item in index.items():
            item_path = path + (element,)
            if kind == "map":
                _all_nodes(item, item_schema, item_path, out)
            else:
                out.add(item_path)


@dataclass(slots=True)
class _Diff:
    """What a write changed: nodes that appeared, leaves whose value changed, nodes that went."""

    added: FieldSet = field(default_factory=set)
    modified: FieldSet = field(default_factory=set)
    removed: FieldSet = field(default_factory=set)

    def changed(self) -> FieldSet:
        return self.added | self.modified

    def __bool__(self) -> bool:
        return bool(self.added or self.modified or self.removed)


def _identical(old: JSON, new: JSON) -> bool:
    """A fast, conservative equality test: True only if both serialise to the same bytes.

    orjson runs in C and, unlike Python's `==`, tells `true` from `1`; a False here (keys in
    another order, an integer too big for orjson) only means the slow walk decides.
    """
    try:
        return orjson.dumps(old) == orjson.dumps(new)
    except TypeError:
        return False


def _compare(old: JSON, new: JSON, schema: JSON, path: Path, diff: _Diff) -> None:
    """Record in `diff` how the value at `path` changed from `old` to `new` (both present)."""
    # Most of an object is untouched by a write; skipping equal subtrees whole is the big win.
    if isinstance(old, (dict, list)) and type(old) is type(new) and _identical(old, new):
        return
    if isinstance(old, dict) and isinstance(new, dict):
        if _map_is_atomic(schema):
            if not patching.json_equal(old, new):
                diff.modified.add(path)
            return
        for key, value in new.items():
            if len(path) < 2 and _untracked(path, key):
                continue
            child_schema = _child_schema(schema, path, key)
            child_path = path + ("f:" + key,)
            if key in old:
                _compare(old[key], value, child_schema, child_path, diff)
            else:
                _all_nodes(value, child_schema, child_path, diff.added)
        for key, value in old.items():
            if key not in new and not (len(path) < 2 and _untracked(path, key)):
                _all_nodes(value, _child_schema(schema, path, key), path + ("f:" + key,),
                           diff.removed)
        return
    if isinstance(old, list) and isinstance(new, list):
        kind, keys = _list_rule(schema)
        if kind != "atomic":
            item_schema = schema.get("items")
            old_index = _index_items(old, kind, keys, item_schema)
            new_index = _index_items(new, kind, keys, item_schema)
            if old_index is not None and new_index is not None:
                for element, item in new_index.items():
                    item_path = path + (element,)
                    if element not in old_index:
                        _all_nodes(item, item_schema, item_path, diff.added)
                    elif kind == "map":
                        _compare(old_index[element], item, item_schema, item_path, diff)
                for element, item in old_index.items():
                    if element not in new_index:
                        _all_nodes(item, item_schema, path + (element,), diff.removed)
                return
    if patching.json_equal(old, new):
        return
    # A leaf changed, or a node changed shape (a map became a string, a keyed list lost its
    # keys): the node itself is modified and whatever hung below the old value is gone.
    if _ownable(path):
        diff.modified.add(path)
    if isinstance(old, (dict, list)):
        _all_nodes(old, schema, path, diff.removed)
        diff.removed.discard(path)
    if isinstance(new, (dict, list)):
        _all_nodes(new, schema, path, diff.added)
        diff.added.discard(path)


def _diff_objects(old: JSON, new: JSON, schema: JSON) -> _Diff:
    diff = _Diff()
    _compare(old if isinstance(old, dict) else {}, new, schema, (), diff)
    return diff


# --------------------------------------------------------------------------------------------
# FieldsV1 encoding.


def _decode_fields(trie: JSON, prefix: Path, out: FieldSet, *, strict: bool, where: str) -> None:
    """Decode a FieldsV1 trie into paths. `strict` validates (and canonicalises) user input."""
    if not isinstance(trie, dict):
        if strict:
            raise FieldManagerError(f"{where}: must be an object, got {json.dumps(trie)[:80]}")
        return
    for element, child in trie.items():
        if element == ".":
            continue
        if strict:
            element = _canonical_element(element, where)
            if not isinstance(child, dict):
                raise FieldManagerError(
                    f"{where}: the value of {json.dumps(element)} must be an object"
                )
        elif not isinstance(child, dict):
            continue
        path = prefix + (element,)
        if not child or "." in child:
            out.add(path)
        if child:
            _decode_fields(child, path, out, strict=strict, where=where)


def _canonical_element(element: str, where: str) -> str:
    """Check a FieldsV1 key and respell its JSON part the way this module writes it."""
    kind, body = element[:2], element[2:]
    if kind == "f:":
        return element
    if kind == "i:" and body.isdigit():
        return element
    if kind in ("k:", "v:"):
        try:
            value = json.loads(body)
        except ValueError:
            value = ...
        if kind == "v:" and value is not ...:
            return "v:" + _dumps(value)
        if kind == "k:" and isinstance(value, dict):
            return "k:" + _dumps(value)
    raise FieldManagerError(
        f"{where}: {json.dumps(element)} is not a FieldsV1 key; keys are \".\", "
        '"f:<field>", "k:<json object>", "v:<json value>" or "i:<index>"'
    )


def _encode_fields(paths: FieldSet) -> dict[str, JSON]:
    """Encode paths as a FieldsV1 trie; a member node with children gets a "." child."""
    root: dict[str, JSON] = {}
    # Sorted order visits a path before its descendants, so when a node receives its first
    # child we already know whether the node itself is a member.
    for path in sorted(paths):
        node = root
        for depth, element in enumerate(path):
            child = node.get(element)
            if child is None:
                if not node and depth and path[:depth] in paths:
                    node["."] = {}
                child = node[element] = {}
            node = child
    return root
