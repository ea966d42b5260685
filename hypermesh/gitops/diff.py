"""What an apply would change: the field paths where two versions of an object differ.

Drift is found by asking the server what the object would look like after the apply (a
server-side dry run) and comparing that with the live object: the server's defaulting and
normalisation (quantities, `stringData`) happen on both sides, so only real differences are
left. The paths are what a drift Event names (`spec.replicas`, `data.password`,
`metadata.labels[app.kubernetes.io/name]`); values are never reported, because some are secret.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import orjson

__all__ = ["changed_paths", "comparable", "digest", "format_paths"]

# Metadata the server changes on every write.
_VOLATILE = ("resourceVersion", "managedFields", "generation", "creationTimestamp", "uid", "selfLink")
# An absent key, which differs from one set to null.
_MISSING = object()
_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


def comparable(obj: dict[str, Any]) -> dict[str, Any]:
    """`obj` without status and the bookkeeping metadata that every write moves."""
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k not in _VOLATILE}
    return {**{k: v for k, v in obj.items() if k != "status"}, "metadata": meta}


def changed_paths(before: Any, after: Any, prefix: str = "") -> list[str]:
    """Every field path whose value differs between `before` and `after` (sorted)."""
    found: list[str] = []
    _walk(before, after, prefix, found)
    return sorted(found)


def _walk(before: Any, after: Any, path: str, found: list[str]) -> None:
    if isinstance(before, dict) and isinstance(after, dict):
        for key in sorted(set(before) | set(after)):
            _walk(before.get(key, _MISSING), after.get(key, _MISSING), _join(path, str(key)), found)
        return
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        for index, (old, new) in enumerate(zip(before, after, strict=True)):
            _walk(old, new, f"{path}[{index}]", found)
        return
    if before != after:
        found.append(path or ".")


def _join(path: str, key: str) -> str:
    if _PLAIN_KEY.match(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{key}]"


def format_paths(paths: list[str], limit: int = 12) -> str:
    """`a, b, c` or `a, b, ... and 3 more`."""
    shown = ", ".join(paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def digest(obj: dict[str, Any]) -> str:
    """A short, stable hash of an object's configuration (keys sorted)."""
    encoded = orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(encoded).hexdigest()[:32]
