"""`nexus explain KIND[.field...]`: documentation for a kind's fields, from the server's OpenAPI.

The server publishes one OpenAPI v3 document per group-version (listed at `/openapi/v3`); the
kind's component schema is the one whose `x-kubernetes-group-version-kind` names it. A dotted
path walks `properties`, following `$ref`, `allOf` and array `items` on the way.
"""

from __future__ import annotations

import argparse
import textwrap
from typing import Any

from hypermesh.cli.nexus.errors import CliError
from hypermesh.cli.nexus.session import Session

MAX_DEPTH = 8


def _resolve(schema: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    """Follow `$ref` and single-entry `allOf` (how metadata is wrapped) to a concrete schema."""
    for _ in range(MAX_DEPTH):
        ref = schema.get("$ref")
        if isinstance(ref, str):
            schema = {**components.get(ref.rpartition("/")[2], {}), **{k: v for k, v in schema.items() if k != "$ref"}}
            continue
        all_of = schema.get("allOf")
        if isinstance(all_of, list) and len(all_of) == 1 and isinstance(all_of[0], dict):
            schema = {**_resolve(all_of[0], components), **{k: v for k, v in schema.items() if k != "allOf"}}
            continue
        break
    return schema


def type_name(schema: dict[str, Any], components: dict[str, Any]) -> str:
    """`<string>`, `<[]Object>`, `<map[string]string>` as kubectl explain writes types."""
    schema = _resolve(schema, components)
    kind = schema.get("type")
    if kind == "array":
        return "[]" + type_name(schema.get("items") or {}, components)
    if kind == "object" or "properties" in schema:
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict) and "properties" not in schema:
            return f"map[string]{type_name(extra, components)}"
        return "Object"
    if schema.get("x-kubernetes-int-or-string"):
        return "IntOrString"
    return str(kind or "Object")


def _walk(schema: dict[str, Any], path: list[str], components: dict[str, Any]) -> dict[str, Any]:
    for i, part in enumerate(path):
        schema = _resolve(schema, components)
        while schema.get("type") == "array":
            schema = _resolve(schema.get("items") or {}, components)
        props = schema.get("properties") or {}
        if part not in props:
            raise CliError(f'field "{part}" does not exist (at .{".".join(path[:i + 1])})')
        schema = props[part]
    return _resolve(schema, components)


def _fields(schema: dict[str, Any], components: dict[str, Any], *, indent: int, recursive: bool, depth: int = 0) -> list[str]:
    node = _resolve(schema, components)
    while node.get("type") == "array":
        node = _resolve(node.get("items") or {}, components)
    props = node.get("properties") or {}
    required = set(node.get("required") or [])
    lines: list[str] = []
    for name in sorted(props):
        mark = " -required-" if name in required else ""
        lines.append(" " * indent + f"{name}\t<{type_name(props[name], components)}>{mark}")
        if recursive and depth < MAX_DEPTH:
            lines += _fields(props[name], components, indent=indent + 2, recursive=True, depth=depth + 1)
        elif not recursive:
            text = str(_resolve(props[name], components).get("description") or "").strip()
            if text:
                lines += textwrap.wrap(text, 76, initial_indent=" " * (indent + 2), subsequent_indent=" " * (indent + 2))
                lines.append("")
    return lines


def run(args: argparse.Namespace, session: Session) -> int:
    """Print the kind's (or field's) description and its fields."""
    kind, *path = args.target.split(".")
    resource = session.resolve(kind)
    index = session.client.request("GET", "/openapi/v3").json()
    gv = f"apis/{resource.group}/{resource.version}" if resource.group else f"api/{resource.version}"
    entry = (index.get("paths") or {}).get(gv) or {}
    url = entry.get("serverRelativeURL") or f"/openapi/v3/{gv}"
    document = session.client.request("GET", url).json()
    components: dict[str, Any] = (document.get("components") or {}).get("schemas") or {}
    wanted = {"group": resource.group, "version": resource.version, "kind": resource.kind}
    schema = next((s for s in components.values() if wanted in (s.get("x-kubernetes-group-version-kind") or [])), None)
    if schema is None:
        raise CliError(f"the server publishes no schema for {resource.kind} in {resource.api_version}")
    target = _walk(schema, path, components)
    lines = [f"GROUP:      {resource.group}" if resource.group else "", f"KIND:       {resource.kind}", f"VERSION:    {resource.version}", ""]
    lines = [line for i, line in enumerate(lines) if line or i == 3]
    if path:
        lines += [f"FIELD: {path[-1]} <{type_name(target, components)}>", ""]
    description = str(target.get("description") or "<empty>").strip()
    lines += ["DESCRIPTION:", *textwrap.wrap(description, 76, initial_indent="    ", subsequent_indent="    "), ""]
    fields = _fields(target, components, indent=2, recursive=bool(args.recursive))
    if fields:
        lines += ["FIELDS:", *fields]
    session.out("\n".join(lines).rstrip("\n") + "\n")
    return 0
