"""Server-side validation of objects against structural OpenAPI v3 schemas.

This is what answers `kubectl apply`: kubectl sends `fieldValidation=Strict` and, once the
server publishes OpenAPI, validates nothing itself. So the rules are those of Kubernetes'
apiextensions validation rather than generic JSON Schema: the same keywords and vendor
extensions (`x-kubernetes-int-or-string`, `x-kubernetes-preserve-unknown-fields`,
`x-kubernetes-list-type`, ...), the same cause reasons (`FieldValueRequired`, ...), the same
field paths (`spec.template.spec.containers[0].image`) and the same message wording.

A write goes through four operations, all of them here:
- `unknown_fields` lists undeclared fields (Strict: an error; Warn: a warning header);
- `prune` drops them (Ignore, the default, and after Warn);
- `apply_defaults` fills in structural `default:`s;
- `validate` reports every violation as a `Cause`.

A schema is compiled once (`compile_schema`, or `ResourceType.validator`) into a tree of nodes
with a fast path that every valid object takes (see `schema_nodes`); the module-level functions
accept either a compiled schema or a raw one, compiling and memoising the latter. Compiling
refuses a malformed schema with `CRDError`; after that, no JSON input makes these functions
raise.
"""

from __future__ import annotations

from typing import Any

from hypermesh.resources.causes import (
    DUPLICATE,
    INVALID,
    NOT_SUPPORTED,
    REQUIRED,
    TOO_LONG,
    TOO_MANY,
    TYPE_INVALID,
    Cause,
)
from hypermesh.resources.schema_compiler import compile_node
from hypermesh.resources.schema_nodes import OBJECT_META_FIELDS, SchemaNode

__all__ = [
    "DUPLICATE",
    "INVALID",
    "NOT_SUPPORTED",
    "OBJECT_META_FIELDS",
    "REQUIRED",
    "TOO_LONG",
    "TOO_MANY",
    "TYPE_INVALID",
    "Cause",
    "CompiledSchema",
    "apply_defaults",
    "compile_schema",
    "prune",
    "unknown_fields",
    "validate",
]


class CompiledSchema:
    """A structural schema compiled for repeated use; cheap to call, safe on any JSON input."""

    __slots__ = ("_root", "schema")

    def __init__(self, schema: dict[str, Any], root: SchemaNode) -> None:
        self.schema = schema
        self._root = root

    def validate(self, obj: Any) -> list[Cause]:
        """Every way `obj` breaks the schema; an empty list means it is valid."""
        root = self._root
        if root.fast(obj):
            return []
        causes: list[Cause] = []
        root.check(obj, "", causes)
        return causes

    def is_valid(self, obj: Any) -> bool:
        """Whether `obj` satisfies the schema (no causes)."""
        return not self.validate(obj)

    def unknown_fields(self, obj: Any) -> list[str]:
        """Paths of the fields the schema does not declare (what Strict validation refuses)."""
        paths: list[str] = []
        self._root.unknown(obj, "", paths)
        return paths

    def prune(self, obj: Any) -> Any:
        """A copy of `obj` without the fields the schema does not declare."""
        return self._root.prune(obj)

    def apply_defaults(self, obj: Any) -> Any:
        """A copy of `obj` with structural defaults filled in and disallowed nulls dropped.

        Defaults apply inside objects and list items that exist; a missing object is created
        only when it has a default of its own (like Workload's `strategy: {}`).
        """
        return self._root.apply_defaults(obj)


def compile_schema(
    schema: dict[str, Any], *, resource: bool = True, where: str = "openAPIV3Schema"
) -> CompiledSchema:
    """Compiles a structural schema, raising `CRDError` if it is malformed.

    With `resource=True` (the default) the schema describes a whole object: `apiVersion`,
    `kind` and `metadata` are implied, and `metadata` is checked against ObjectMeta's fields.
    `where` prefixes the field paths of compile errors.
    """
    return CompiledSchema(schema, compile_node(schema, where, resource=resource))


# The function forms compile on demand. Schemas are treated as immutable, so a compiled schema
# is remembered by the identity of the dict it came from; the dict is kept alive in the memo,
# so its id cannot be reused while the entry exists. The memo is small and bounded: callers
# on a hot path hold a CompiledSchema instead.
_MEMO: dict[int, tuple[dict[str, Any], CompiledSchema]] = {}
_MEMO_SIZE = 64


def _compiled(schema: dict[str, Any] | CompiledSchema) -> CompiledSchema:
    if isinstance(schema, CompiledSchema):
        return schema
    hit = _MEMO.get(id(schema))
    if hit is not None and hit[0] is schema:
        return hit[1]
    compiled = compile_schema(schema)
    if len(_MEMO) >= _MEMO_SIZE:
        _MEMO.pop(next(iter(_MEMO)))
    _MEMO[id(schema)] = (schema, compiled)
    return compiled


def validate(obj: Any, schema: dict[str, Any] | CompiledSchema) -> list[Cause]:
    """Validates a whole object against a resource schema (see `CompiledSchema.validate`)."""
    return _compiled(schema).validate(obj)


def unknown_fields(obj: Any, schema: dict[str, Any] | CompiledSchema) -> list[str]:
    """Paths of undeclared fields (see `CompiledSchema.unknown_fields`)."""
    return _compiled(schema).unknown_fields(obj)


def prune(obj: Any, schema: dict[str, Any] | CompiledSchema) -> Any:
    """A copy of `obj` without undeclared fields (see `CompiledSchema.prune`)."""
    return _compiled(schema).prune(obj)


def apply_defaults(obj: Any, schema: dict[str, Any] | CompiledSchema) -> Any:
    """A copy of `obj` with defaults applied (see `CompiledSchema.apply_defaults`)."""
    return _compiled(schema).apply_defaults(obj)
