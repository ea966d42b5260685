"""Compiles a structural OpenAPI v3 schema into `SchemaNode`s, refusing malformed schemas.

This is the only place that reads schema keywords. Everything a CRD author can get wrong is
caught here with a `CRDError` that names the keyword's path (`openAPIV3Schema.properties[spec]
.properties[replicas].minimum`), in the spirit of Kubernetes' structural-schema rules: unknown
or JSON-Schema-only keywords (`$ref`, `patternProperties`) are refused, `properties` and
`additionalProperties` exclude each other, arrays need `items`, list-map keys must be scalar
fields that are required or defaulted, and every `default` must itself validate. A schema
that compiles can be applied to any JSON value without raising.
"""

from __future__ import annotations

import re
from typing import Any

from hypermesh.resources import formats
from hypermesh.resources import schema_rules as rules
from hypermesh.resources.errors import CRDError
from hypermesh.resources.schema_nodes import SchemaNode, describe_default_problem
from hypermesh.resources.values import render

_TYPES = ("array", "boolean", "integer", "number", "object", "string")

_KEYWORDS = frozenset(
    {
        "type",
        "format",
        "title",
        "description",
        "default",
        "example",
        "externalDocs",
        "nullable",
        "enum",
        "maximum",
        "exclusiveMaximum",
        "minimum",
        "exclusiveMinimum",
        "multipleOf",
        "maxLength",
        "minLength",
        "pattern",
        "maxItems",
        "minItems",
        "uniqueItems",
        "maxProperties",
        "minProperties",
        "required",
        "items",
        "properties",
        "additionalProperties",
        "allOf",
        "anyOf",
        "oneOf",
        "not",
        "x-kubernetes-preserve-unknown-fields",
        "x-kubernetes-embedded-resource",
        "x-kubernetes-int-or-string",
        "x-kubernetes-list-type",
        "x-kubernetes-list-map-keys",
        "x-kubernetes-map-type",
        "x-kubernetes-validations",
    }
)

# JSON Schema keywords that CRD schemas may not use; naming them beats "unknown field".
_FORBIDDEN = frozenset(
    {"$ref", "$schema", "id", "definitions", "patternProperties", "dependencies", "additionalItems"}
)


def compile_node(schema: Any, where: str, *, resource: bool) -> SchemaNode:
    """Compiles one schema (and everything under it) into a finished `SchemaNode`.

    With `resource=True` the schema describes a whole object: `apiVersion` and `kind` are
    implied, and `metadata` is treated as ObjectMeta. `where` prefixes error paths.
    """
    if not isinstance(schema, dict):
        raise CRDError(where, f"Invalid value: {render(schema)}: must be a schema object")
    for key in schema:
        if key in _FORBIDDEN:
            raise CRDError(f"{where}.{key}", "Forbidden: not allowed in a structural schema")
        if key not in _KEYWORDS:
            raise CRDError(where, f'unknown field "{key}"')

    declared_type = schema.get("type")
    if declared_type is not None and declared_type not in _TYPES:
        supported = ", ".join(f'"{t}"' for t in _TYPES)
        raise CRDError(
            f"{where}.type",
            f"Unsupported value: {render(declared_type)}: supported values: {supported}",
        )
    node = SchemaNode(declared_type)
    node.nullable = _flag(schema, "nullable", where)
    node.int_or_string = _flag(schema, "x-kubernetes-int-or-string", where)
    if node.int_or_string:
        if declared_type is not None:
            raise CRDError(
                f"{where}.type",
                "Invalid value: must be empty when x-kubernetes-int-or-string is true",
            )
        node.type_label = "integer,string"
    preserve = _flag(schema, "x-kubernetes-preserve-unknown-fields", where)
    embedded = _flag(schema, "x-kubernetes-embedded-resource", where)
    if embedded and declared_type != "object":
        raise CRDError(
            f"{where}.type",
            'Required value: must be "object" if x-kubernetes-embedded-resource is true',
        )

    _compile_object(node, schema, where, resource=resource or embedded, preserve=preserve)
    _compile_array(node, schema, where)
    compiled_rules = _compile_rules(schema, where)
    node.checks = tuple(check for check, _ in compiled_rules)
    node.preds = tuple(pred for _, pred in compiled_rules)
    node.finish()

    if "default" in schema:
        node.has_default = True
        node.default_value = schema["default"]
        problem = describe_default_problem(node)
        if problem is not None:
            raise CRDError(f"{where}.default", problem)
    return node


def _compile_object(
    node: SchemaNode, schema: dict[str, Any], where: str, *, resource: bool, preserve: bool
) -> None:
    raw_properties = schema.get("properties")
    properties: dict[str, SchemaNode] | None = None
    if raw_properties is not None:
        if not isinstance(raw_properties, dict):
            raise CRDError(f"{where}.properties", "Invalid value: must be a map of schemas")
        properties = {}
        for name, sub in raw_properties.items():
            if not isinstance(name, str):
                raise CRDError(f"{where}.properties", f"Invalid value: {name!r}: must be a string")
            properties[name] = compile_node(sub, f"{where}.properties[{name}]", resource=False)
    if resource:
        # Every resource carries apiVersion, kind and ObjectMeta whatever its schema declares.
        properties = dict(properties or {})
        for name in ("apiVersion", "kind"):
            if name not in properties:
                implicit = SchemaNode("string")
                implicit.finish()
                properties[name] = implicit
        meta = properties.get("metadata")
        if meta is None:
            meta = SchemaNode("object")
            meta.finish()
            properties["metadata"] = meta
        meta.meta = True
        meta.walk_object = True
        meta.opaque = False
    node.properties = properties

    additional = schema.get("additionalProperties")
    if additional is not None:
        if raw_properties is not None and additional is not False:
            raise CRDError(
                f"{where}.additionalProperties",
                "Forbidden: additionalProperties and properties are mutual exclusive",
            )
        if isinstance(additional, dict):
            node.additional = compile_node(
                additional, f"{where}.additionalProperties", resource=False
            )
        elif additional is True:
            node.open = True
        elif additional is not False:
            raise CRDError(
                f"{where}.additionalProperties", "Invalid value: must be a boolean or a schema"
            )
    node.open = node.open or preserve

    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        raise CRDError(f"{where}.required", "Invalid value: must be a list of field names")
    node.required = tuple(dict.fromkeys(required))

    node.walk_object = node.type == "object" or (
        node.type is None and (properties is not None or node.additional is not None)
    )
    node.opaque = node.open and properties is None and node.additional is None
    if properties:
        node.defaulted = tuple((name, sub) for name, sub in properties.items() if sub.has_default)


def _compile_array(node: SchemaNode, schema: dict[str, Any], where: str) -> None:
    if "items" in schema:
        items = schema["items"]
        if isinstance(items, list):
            raise CRDError(f"{where}.items", "Forbidden: items must be a schema, not a list")
        node.items = compile_node(items, f"{where}.items", resource=False)
    elif node.type == "array":
        raise CRDError(f"{where}.items", "Required value: must be specified for arrays")

    list_type = schema.get("x-kubernetes-list-type")
    map_keys = schema.get("x-kubernetes-list-map-keys")
    if map_keys is not None and list_type != "map":
        raise CRDError(
            f"{where}.x-kubernetes-list-map-keys",
            'Forbidden: only allowed if x-kubernetes-list-type is "map"',
        )
    if list_type is None:
        return
    if list_type not in ("atomic", "set", "map"):
        raise CRDError(
            f"{where}.x-kubernetes-list-type",
            f'Unsupported value: {render(list_type)}: supported values: "atomic", "set", "map"',
        )
    if node.type != "array":
        raise CRDError(
            f"{where}.type", 'Invalid value: must be "array" with x-kubernetes-list-type'
        )
    node.set_list = list_type == "set"
    if list_type != "map":
        return
    if (
        not isinstance(map_keys, list)
        or not map_keys
        or not all(isinstance(k, str) for k in map_keys)
    ):
        raise CRDError(
            f"{where}.x-kubernetes-list-map-keys",
            'Required value: a non-empty list of field names when x-kubernetes-list-type is "map"',
        )
    items = node.items
    if items is None or items.type != "object" or not items.properties:
        raise CRDError(
            f"{where}.items.type", 'Invalid value: must be "object" with properties for a list map'
        )
    defaults = []
    for key in map_keys:
        field = items.properties.get(key)
        if field is None:
            raise CRDError(
                f"{where}.x-kubernetes-list-map-keys",
                f'Invalid value: "{key}": must be a property of the items',
            )
        if field.type not in ("string", "integer", "number", "boolean") and not field.int_or_string:
            raise CRDError(
                f"{where}.items.properties[{key}].type",
                "Invalid value: a list map key must be a scalar",
            )
        if key not in items.required and not field.has_default:
            raise CRDError(
                f"{where}.items.properties[{key}]",
                "Invalid value: a list map key must be required or have a default",
            )
        defaults.append(field.default_value)
    node.map_keys = tuple(map_keys)
    node.map_key_defaults = tuple(defaults)


def _compile_rules(schema: dict[str, Any], where: str) -> list[rules.Rule]:
    compiled: list[rules.Rule] = []
    if "enum" in schema:
        values = schema["enum"]
        if not isinstance(values, list) or not values:
            raise CRDError(f"{where}.enum", "Invalid value: must be a non-empty list")
        compiled.append(rules.enum(values))

    exclusive_minimum, minimum = _exclusive(schema, "exclusiveMinimum", "minimum", where)
    exclusive_maximum, maximum = _exclusive(schema, "exclusiveMaximum", "maximum", where)
    multiple_of = _number(schema, "multipleOf", where)
    if multiple_of is not None and multiple_of <= 0:
        raise CRDError(f"{where}.multipleOf", "Invalid value: must be greater than 0")
    if minimum is not None or maximum is not None or multiple_of is not None:
        compiled.append(
            rules.number(minimum, exclusive_minimum, maximum, exclusive_maximum, multiple_of)
        )

    min_length = _count(schema, "minLength", where)
    max_length = _count(schema, "maxLength", where)
    pattern = None
    if "pattern" in schema:
        source = schema["pattern"]
        if not isinstance(source, str):
            raise CRDError(f"{where}.pattern", "Invalid value: must be a string")
        try:
            pattern = re.compile(source)
        except re.error as error:
            raise CRDError(
                f"{where}.pattern", f"Invalid value: {render(source)}: {error}"
            ) from None
    format_name = schema.get("format")
    if format_name is not None and not isinstance(format_name, str):
        raise CRDError(f"{where}.format", "Invalid value: must be a string")
    # Formats the validator does not know (int32, password, ...) are documentation only.
    checked_format = format_name if format_name and formats.format_checker(format_name) else None
    if min_length is not None or max_length is not None or pattern or checked_format:
        compiled.append(rules.string(min_length, max_length, pattern, checked_format))

    min_items = _count(schema, "minItems", where)
    max_items = _count(schema, "maxItems", where)
    if min_items is not None or max_items is not None:
        compiled.append(rules.count("array", "items", min_items, max_items))
    if _flag(schema, "uniqueItems", where):
        compiled.append(rules.unique())
    min_properties = _count(schema, "minProperties", where)
    max_properties = _count(schema, "maxProperties", where)
    if min_properties is not None or max_properties is not None:
        compiled.append(rules.count("object", "properties", min_properties, max_properties))

    map_type = schema.get("x-kubernetes-map-type")
    if map_type is not None and map_type not in ("granular", "atomic"):
        raise CRDError(
            f"{where}.x-kubernetes-map-type",
            f'Unsupported value: {render(map_type)}: supported values: "granular", "atomic"',
        )
    # CEL rules are accepted and not evaluated; only their container is checked.
    if not isinstance(schema.get("x-kubernetes-validations", []), list):
        raise CRDError(f"{where}.x-kubernetes-validations", "Invalid value: must be a list")
    for key in ("description", "title"):
        if key in schema and not isinstance(schema[key], str):
            raise CRDError(f"{where}.{key}", "Invalid value: must be a string")

    if all_of := _subschemas(schema, "allOf", where):
        compiled.append(rules.all_of(all_of))
    if any_of := _subschemas(schema, "anyOf", where):
        compiled.append(rules.any_of(any_of))
    if one_of := _subschemas(schema, "oneOf", where):
        compiled.append(rules.one_of(one_of))
    if "not" in schema:
        compiled.append(rules.not_(compile_node(schema["not"], f"{where}.not", resource=False)))
    return compiled


# -- keyword readers --------------------------------------------------------------------------


def _flag(schema: dict[str, Any], key: str, where: str) -> bool:
    value = schema.get(key, False)
    if not isinstance(value, bool):
        raise CRDError(f"{where}.{key}", f"Invalid value: {render(value)}: must be a boolean")
    return value


def _number(schema: dict[str, Any], key: str, where: str) -> float | None:
    value = schema.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CRDError(f"{where}.{key}", f"Invalid value: {render(value)}: must be a number")
    return value


def _count(schema: dict[str, Any], key: str, where: str) -> int | None:
    value = schema.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        detail = f"Invalid value: {render(value)}: must be a non-negative integer"
        raise CRDError(f"{where}.{key}", detail)
    return value


def _exclusive(
    schema: dict[str, Any], key: str, bound: str, where: str
) -> tuple[bool, float | None]:
    """Reads exclusiveMinimum/Maximum: a boolean in OpenAPI 3.0, a number in newer JSON Schema."""
    value = schema.get(key, False)
    if isinstance(value, bool):
        return value, _number(schema, bound, where)
    if isinstance(value, (int, float)):
        return True, value
    raise CRDError(f"{where}.{key}", f"Invalid value: {render(value)}: must be a boolean")


def _subschemas(schema: dict[str, Any], key: str, where: str) -> list[SchemaNode]:
    value = schema.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not value:
        raise CRDError(f"{where}.{key}", "Invalid value: must be a non-empty list of schemas")
    return [
        compile_node(item, f"{where}.{key}[{index}]", resource=False)
        for index, item in enumerate(value)
    ]
