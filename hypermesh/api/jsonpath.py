"""The JSONPath subset Kubernetes uses in printer columns and field lookups.

CRD `additionalPrinterColumns` (and `kubectl -o jsonpath`) use a small dialect: dotted fields,
indexes, `[*]`, and filters such as `[?(@.type=="Ready")]`. This evaluates that dialect over plain
JSON data; it never raises on data that does not match, it just finds nothing.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

_TOKEN = re.compile(
    r"""\.(?P<field>[A-Za-z0-9_\-$]+)
      | \[(?P<index>-?\d+)\]
      | \[(?P<star>\*)\]
      | \.\*(?P<dotstar>)
      | \[['"](?P<quoted>[^'"]+)['"]\]
      | \[\?\(@\.(?P<fpath>[A-Za-z0-9_.\-]+)\s*(?P<fop>==|!=)\s*(?P<fval>"[^"]*"|'[^']*'|[^)\s]+)\)\]
    """,
    re.VERBOSE,
)


class JSONPathError(ValueError):
    """The expression is outside the supported dialect."""


@lru_cache(maxsize=1024)
def compile_path(expr: str) -> tuple[tuple[str, Any], ...]:
    """Parse `.a.b[0]`, `{.a.b}` or `a.b` into steps."""
    text = expr.strip()
    if text.startswith("{") and text.endswith("}"):
        text = text[1:-1].strip()
    if text.startswith("$"):
        text = text[1:]
    if text and not text.startswith((".", "[")):
        text = "." + text
    steps: list[tuple[str, Any]] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise JSONPathError(f"unsupported JSONPath {expr!r} at position {pos}: {text[pos:]!r}")
        if match.group("field") is not None:
            steps.append(("field", match.group("field")))
        elif match.group("index") is not None:
            steps.append(("index", int(match.group("index"))))
        elif match.group("star") is not None or match.group("dotstar") is not None:
            steps.append(("star", None))
        elif match.group("quoted") is not None:
            steps.append(("field", match.group("quoted")))
        else:
            value = match.group("fval")
            if value[0] in "\"'":
                value = value[1:-1]
            steps.append(("filter", (tuple(match.group("fpath").split(".")), match.group("fop"), value)))
        pos = match.end()
    return tuple(steps)


def _lookup(obj: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(part)
    return obj


def find(obj: Any, expr: str) -> list[Any]:
    """Every value `expr` selects in `obj` (an empty list when nothing matches)."""
    current = [obj]
    for kind, arg in compile_path(expr):
        found: list[Any] = []
        for value in current:
            if kind == "field":
                if isinstance(value, dict) and arg in value:
                    found.append(value[arg])
            elif kind == "index":
                if isinstance(value, list) and -len(value) <= arg < len(value):
                    found.append(value[arg])
            elif kind == "star":
                if isinstance(value, list):
                    found.extend(value)
                elif isinstance(value, dict):
                    found.extend(value.values())
            else:
                path, op, wanted = arg
                if isinstance(value, list):
                    for item in value:
                        actual = _lookup(item, path)
                        text = actual if isinstance(actual, str) else ("" if actual is None else str(actual).lower() if isinstance(actual, bool) else str(actual))
                        if (text == wanted) == (op == "=="):
                            found.append(item)
        current = found
    return current


def find_one(obj: Any, expr: str) -> Any:
    """The first value `expr` selects, or None."""
    values = find(obj, expr)
    return values[0] if values else None
