"""Compiled schema nodes: the tree the validator, pruner and defaulter walk.

`schema_compiler.compile_node` parses a schema once into `SchemaNode`s, attributes ready to use
(child nodes by property name, required names, list-map keys, rules). Each node then offers:
- `fast(value) -> bool`, a closure built by `finish()` that checks exact JSON types and the
  node's rules with no path strings and no allocations. Every valid object takes only this
  path, which is what keeps validation cheap. It may answer False when unsure (a float 1.0
  where an integer is expected), never True for an invalid value.
- `check(value, path, out)`, the precise walk that produces Kubernetes causes; it runs only
  when `fast` said False.
- `unknown`, `prune` and `apply_defaults`, the structural operations, which follow only the
  structural part of the schema (properties, items, additionalProperties), as Kubernetes does:
  keywords under allOf/anyOf/oneOf/not validate but never declare fields.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypermesh.resources import causes
from hypermesh.resources.causes import Cause
from hypermesh.resources.schema_rules import Check, Pred, check_unique
from hypermesh.resources.values import copy_json, json_key, json_type, render

# The fields of metav1.ObjectMeta. Metadata is validated by the API server itself (names,
# labels); the schema layer only knows which fields exist, for Strict validation and pruning.
OBJECT_META_FIELDS = frozenset(
    {
        "name",
        "generateName",
        "namespace",
        "uid",
        "resourceVersion",
        "generation",
        "labels",
        "annotations",
        "finalizers",
        "ownerReferences",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "managedFields",
        "selfLink",
    }
)

# The exact types a JSON decoder produces, for a fast type switch; anything else (subclasses,
# tuples) goes through `json_type`.
_KIND: dict[type, str] = {
    dict: "object",
    list: "array",
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    type(None): "null",
}

# Exact Python types the fast path accepts for each schema type.
_FAST_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
}


def _always(value: Any) -> bool:
    return True


def _never(value: Any) -> bool:
    return False


class SchemaNode:
    """One compiled schema node."""

    __slots__ = (
        "additional",
        "checks",
        "default_value",
        "defaulted",
        "fast",
        "has_default",
        "int_or_string",
        "items",
        "map_key_defaults",
        "map_keys",
        "meta",
        "nullable",
        "opaque",
        "open",
        "preds",
        "properties",
        "required",
        "set_list",
        "type",
        "type_label",
        "walk_object",
    )

    def __init__(self, type: str | None = None) -> None:
        self.type = type
        self.type_label = type or ""
        self.nullable = False
        self.int_or_string = False
        self.properties: dict[str, SchemaNode] | None = None
        self.required: tuple[str, ...] = ()
        self.additional: SchemaNode | None = None
        # Unknown fields are kept (preserve-unknown-fields or additionalProperties: true).
        self.open = False
        # An open object that declares nothing inside: nothing to walk at all.
        self.opaque = False
        # Values that are objects are walked field by field.
        self.walk_object = type == "object"
        # The ObjectMeta of a resource: fields checked against OBJECT_META_FIELDS only.
        self.meta = False
        self.items: SchemaNode | None = None
        self.map_keys: tuple[str, ...] = ()
        self.map_key_defaults: tuple[Any, ...] = ()
        self.set_list = False
        self.checks: tuple[Check, ...] = ()
        self.preds: tuple[Pred, ...] = ()
        self.has_default = False
        self.default_value: Any = None
        self.defaulted: tuple[tuple[str, SchemaNode], ...] = ()
        self.fast: Callable[[Any], bool] = _always

    # -- the fast path ----------------------------------------------------------------------

    def finish(self) -> None:
        """Builds `fast` from the node's attributes; call once the children are finished."""
        self.fast = self._build_fast()

    def plain_type(self) -> type | None:
        """The one exact Python type this node accepts, if that is all it checks."""
        if self.preds or self.nullable or self.walk_object or self.items is not None:
            return None
        if self.type in ("string", "integer", "boolean"):
            return _FAST_TYPES[self.type][0]
        return None

    def _build_fast(self) -> Callable[[Any], bool]:
        preds = self.preds
        # What the precise walk accepts for null: a nullable node, or an untyped one.
        null_ok = self.nullable or (self.type is None and not self.int_or_string)

        if self.walk_object:
            # A field whose whole check is "exactly this Python type" is stored as the type, so
            # the loop compares types instead of calling a function (most fields are like that).
            fields: dict[str, Any] = {
                name: node.plain_type() or node.fast
                for name, node in (self.properties or {}).items()
            }
            additional = self.additional.fast if self.additional is not None else None
            required = self.required
            walk = bool(fields) or additional is not None
            typed = self.type == "object"

            def fast_object(value: Any) -> bool:
                if type(value) is not dict:
                    if value is None:
                        return null_ok
                    if typed or isinstance(value, dict):
                        return False
                    # An untyped node only applies its rules to a value that is no object.
                    return all(pred(value) for pred in preds)
                for name in required:
                    if name not in value:
                        return False
                if walk:
                    for key, item in value.items():
                        child = fields.get(key)
                        if child is not None:
                            if child.__class__ is type:
                                if type(item) is not child:
                                    return False
                            elif not child(item):
                                return False
                        elif additional is not None and not additional(item):
                            return False
                for pred in preds:
                    if not pred(value):
                        return False
                return True

            return fast_object

        if self.items is not None and self.type != "array":
            # Items without `type: array` are not structural; leave them to the precise walk.
            return _never

        if self.type == "array":
            items = self.items.fast if self.items is not None else _always
            map_keys = self.map_keys
            single_key = map_keys[0] if len(map_keys) == 1 else None
            single_default = self.map_key_defaults[0] if len(map_keys) == 1 else None
            key_defaults = tuple(zip(map_keys, self.map_key_defaults, strict=False))
            set_list = self.set_list

            def fast_array(value: Any) -> bool:
                if type(value) is not list:
                    return value is None and null_ok
                for item in value:
                    if not items(item):
                        return False
                if single_key is not None:
                    # Items are valid objects here, so key values are hashable scalars; a
                    # collision (even a spurious one, 1 vs True) sends us to the precise walk.
                    if len({item.get(single_key, single_default) for item in value}) != len(value):
                        return False
                elif map_keys:
                    identities = {tuple(item.get(k, d) for k, d in key_defaults) for item in value}
                    if len(identities) != len(value):
                        return False
                elif set_list:
                    try:
                        if len(set(value)) != len(value):
                            return False
                    except TypeError:
                        return False
                for pred in preds:
                    if not pred(value):
                        return False
                return True

            return fast_array

        if self.type is not None:
            accepted = _FAST_TYPES.get(self.type, ())
        elif self.int_or_string:
            accepted = (int, str)
        else:
            accepted = ()

        if self.type is None and not self.int_or_string:
            # Untyped (preserve-unknown-fields, `{}`, pure value validations): any value goes,
            # subject to the rules.
            if not preds:
                return _always

            def fast_untyped(value: Any) -> bool:
                for pred in preds:
                    if not pred(value):
                        return False
                return True

            return fast_untyped

        if len(accepted) == 1:
            only = accepted[0]
            if not preds:
                if null_ok:
                    return lambda value: type(value) is only or value is None
                return lambda value: type(value) is only

            def fast_scalar(value: Any) -> bool:
                if type(value) is not only:
                    return value is None and null_ok
                for pred in preds:
                    if not pred(value):
                        return False
                return True

            return fast_scalar

        def fast_scalars(value: Any) -> bool:
            if type(value) not in accepted:
                return value is None and null_ok
            for pred in preds:
                if not pred(value):
                    return False
            return True

        return fast_scalars

    # -- the precise walk -------------------------------------------------------------------

    def check(self, value: Any, path: str, out: list[Cause]) -> None:
        kind = _KIND.get(type(value)) or json_type(value)
        expected = self.type
        if kind == "null":
            if not self.nullable and (expected is not None or self.int_or_string):
                out.append(causes.type_invalid(path, value, self.type_label, kind))
            return
        if expected is not None:
            if kind != expected and not (
                (expected == "number" and kind == "integer")
                or (expected == "integer" and kind == "number" and value.is_integer())
            ):
                out.append(causes.type_invalid(path, value, self.type_label, kind))
                return
        elif (
            self.int_or_string
            and kind != "integer"
            and kind != "string"
            and not (kind == "number" and value.is_integer())
        ):
            out.append(causes.type_invalid(path, value, self.type_label, kind))
            return
        if kind == "object":
            for name in self.required:
                if name not in value:
                    out.append(causes.required(f"{path}.{name}" if path else name))
            props = self.properties
            additional = self.additional
            if props:
                prefix = f"{path}." if path else ""
                for key, item in value.items():
                    child = props.get(key)
                    if child is not None:
                        child.check(item, f"{prefix}{key}", out)
                    elif additional is not None:
                        additional.check(item, f"{path}[{key}]", out)
            elif additional is not None:
                for key, item in value.items():
                    additional.check(item, f"{path}[{key}]", out)
        elif kind == "array":
            items = self.items
            if items is not None:
                for index, item in enumerate(value):
                    items.check(item, f"{path}[{index}]", out)
            if self.map_keys:
                self._check_map_keys(value, path, out)
            elif self.set_list:
                check_unique(value, path, out)
        for check in self.checks:
            check(value, kind, path, out)

    def _check_map_keys(self, value: Any, path: str, out: list[Cause]) -> None:
        # Items are identified by their key fields; a missing key field counts as its default,
        # because that is what it will be once defaulting has run.
        seen: set[tuple[Any, ...]] = set()
        key_defaults = tuple(zip(self.map_keys, self.map_key_defaults, strict=False))
        for index, item in enumerate(value):
            if not isinstance(item, dict):
                continue
            identity = tuple(json_key(item.get(key, default)) for key, default in key_defaults)
            if identity in seen:
                shown = {key: item.get(key, default) for key, default in key_defaults}
                out.append(causes.duplicate(f"{path}[{index}]", shown))
            else:
                seen.add(identity)

    # -- structural operations --------------------------------------------------------------

    def unknown(self, value: Any, path: str, out: list[str]) -> None:
        if self.opaque:
            return
        if self.walk_object and isinstance(value, dict):
            prefix = f"{path}." if path else ""
            if self.meta:
                out.extend(f"{prefix}{key}" for key in value if key not in OBJECT_META_FIELDS)
                return
            props = self.properties or {}
            additional = self.additional
            for key, item in value.items():
                child = props.get(key)
                if child is not None:
                    child.unknown(item, f"{prefix}{key}", out)
                elif additional is not None:
                    additional.unknown(item, f"{path}[{key}]", out)
                elif not self.open:
                    out.append(f"{prefix}{key}")
        elif self.items is not None and isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                self.items.unknown(item, f"{path}[{index}]", out)

    def prune(self, value: Any) -> Any:
        if not self.opaque and self.walk_object and isinstance(value, dict):
            if self.meta:
                return {k: copy_json(v) for k, v in value.items() if k in OBJECT_META_FIELDS}
            props = self.properties or {}
            additional = self.additional
            result: dict[Any, Any] = {}
            for key, item in value.items():
                child = props.get(key)
                if child is not None:
                    result[key] = child.prune(item)
                elif additional is not None:
                    result[key] = additional.prune(item)
                elif self.open:
                    result[key] = copy_json(item)
            return result
        if self.items is not None and isinstance(value, (list, tuple)):
            return [self.items.prune(item) for item in value]
        return copy_json(value)

    def apply_defaults(self, value: Any) -> Any:
        if not self.opaque and not self.meta and self.walk_object and isinstance(value, dict):
            props = self.properties or {}
            additional = self.additional
            result: dict[Any, Any] = {}
            for key, item in value.items():
                child = props.get(key)
                if child is None:
                    child = additional
                if child is None:
                    result[key] = copy_json(item)
                elif item is None and not child.nullable:
                    # Kubernetes drops a null the schema does not allow, or replaces it with the
                    # default, before validating: `replicas: null` means "the default".
                    if child.has_default and key in props:
                        result[key] = child.apply_defaults(child.default_value)
                else:
                    result[key] = child.apply_defaults(item)
            for key, child in self.defaulted:
                if key not in value:
                    result[key] = child.apply_defaults(child.default_value)
            return result
        if self.items is not None and isinstance(value, (list, tuple)):
            return [self.items.apply_defaults(item) for item in value]
        return copy_json(value)

    def __repr__(self) -> str:
        return f"SchemaNode(type={self.type!r}, properties={list(self.properties or ())})"


def describe_default_problem(node: SchemaNode) -> str | None:
    """Why a node's own default is unacceptable (invalid, or carrying unknown fields), if so."""
    value = node.default_value
    found: list[Cause] = []
    node.check(value, "", found)
    if found:
        return f"Invalid value: {render(value)}: {found[0]}"
    unknown: list[str] = []
    node.unknown(value, "", unknown)
    if unknown:
        return f'Invalid value: unknown field "{unknown[0]}"'
    return None
