"""Helpers for decoded JSON values: type names, rendering, equality keys and copying.

The schema layer works on whatever a JSON decoder produced (dicts, lists, str, int, float,
bool, None) and must never crash on it, however odd. These helpers give every such value a
Kubernetes-style type name and printed form (`"abc"`, `5`, `true`, `null`, because kubectl shows
the server's messages verbatim), a hashable key with JSON's notion of equality, and a deep copy
that does not recurse (a deeply nested document cannot exhaust the Python stack).
"""

from __future__ import annotations

import json
from typing import Any


def json_type(value: Any) -> str:
    """The JSON type name of a decoded value, as Kubernetes messages name it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, (list, tuple)):
        return "array"
    return type(value).__name__


def render(value: Any, limit: int = 120) -> str:
    """A value as a Kubernetes field error prints it: strings quoted, JSON for the rest."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        # Go prints 1.0 as 1; keep that so messages match what users see from Kubernetes.
        if value.is_integer() and abs(value) < 1e21:
            return str(int(value))
        return repr(value)
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
    else:
        try:
            text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=repr)
        except (TypeError, ValueError, RecursionError):
            text = repr(type(value).__name__)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


def json_key(value: Any) -> Any:
    """A hashable identity with JSON equality: 1 == 1.0, but True != 1 and "1" != 1."""
    if type(value) is str:
        return value
    kind = json_type(value)
    if kind == "string":
        return str(value)
    if kind in ("integer", "number"):
        return ("n", value)
    if kind in ("boolean", "null"):
        return (kind, value)
    try:
        return ("j", json.dumps(value, sort_keys=True, separators=(",", ":"), default=repr))
    except (TypeError, ValueError, RecursionError):
        # Unrenderable values are only ever equal to themselves.
        return ("id", id(value))


def copy_json(value: Any) -> Any:
    """A deep copy of a JSON value; tuples and mapping subclasses come back as lists and dicts."""
    if not isinstance(value, (dict, list, tuple)):
        return value
    top: Any = {} if isinstance(value, dict) else []
    stack: list[tuple[Any, Any]] = [(value, top)]
    while stack:
        source, target = stack.pop()
        if isinstance(source, dict):
            for key, item in source.items():
                if isinstance(item, (dict, list, tuple)):
                    shell: Any = {} if isinstance(item, dict) else []
                    target[key] = shell
                    stack.append((item, shell))
                else:
                    target[key] = item
        else:
            for item in source:
                if isinstance(item, (dict, list, tuple)):
                    shell = {} if isinstance(item, dict) else []
                    target.append(shell)
                    stack.append((item, shell))
                else:
                    target.append(item)
    return top
