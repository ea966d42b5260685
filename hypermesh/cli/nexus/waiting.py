"""Waiting for one object to reach a state, by watching it rather than polling.

`nexus wait` and `nexus delete --wait` both need "tell me when this object looks like X or is
gone". Reading the object once and then watching from its resourceVersion (narrowed to its name
with a field selector) sees every change without a busy loop; the watch's own timeout is set to
what is left of the deadline, so the wait ends on time even if nothing happens.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from hypermesh.api import jsonpath
from hypermesh.cli.nexus.errors import CliError

if TYPE_CHECKING:
    from hypermesh.cli.nexus.session import Session
    from hypermesh.client import Resource

# Given the object (None once it is gone), whether the wait is over.
Predicate = Callable[[dict[str, Any] | None], bool]


class WaitTimeout(CliError):
    """The deadline passed before the condition held."""


def parse_condition(text: str) -> tuple[Predicate, bool]:
    """`--for` as a predicate, and whether it is the delete condition (raises CliError)."""
    if text == "delete":
        return (lambda obj: obj is None), True
    kind, sep, rest = text.partition("=")
    if kind == "condition" and sep and rest:
        cond_type, eq, wanted = rest.partition("=")
        expected = (wanted or "true").lower() if eq else "true"

        def has_condition(obj: dict[str, Any] | None) -> bool:
            for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
                if isinstance(cond, dict) and str(cond.get("type", "")).lower() == cond_type.lower():
                    return str(cond.get("status", "")).lower() == expected
            return False

        return has_condition, False
    if kind == "jsonpath" and sep and rest:
        expr, value = _split_jsonpath(rest)
        try:
            jsonpath.compile_path(expr)
        except jsonpath.JSONPathError as exc:
            raise CliError(f"invalid --for jsonpath {expr!r}: {exc}") from None

        def matches(obj: dict[str, Any] | None) -> bool:
            if obj is None:
                return False
            found = jsonpath.find(obj, expr)
            if value is None:
                return any(v not in (None, "", [], {}) for v in found)
            return any(_text(v) == value for v in found)

        return matches, False
    raise CliError(f"unrecognized condition: {text!r} (use condition=NAME[=VALUE], delete or jsonpath='{{.path}}'=VALUE)")


def _split_jsonpath(rest: str) -> tuple[str, str | None]:
    # `{.status.phase}=Running` or `{.status.phase}` alone (any non-empty value).
    if rest.startswith("{"):
        close = rest.find("}")
        if close == -1:
            raise CliError(f"invalid --for jsonpath {rest!r}: missing }}")
        tail = rest[close + 1:]
        return rest[: close + 1], (tail[1:] if tail.startswith("=") else None)
    expr, eq, value = rest.partition("=")
    return expr, (value if eq else None)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def wait_for(session: Session, resource: Resource, name: str, ns: str | None, predicate: Predicate, *, timeout: float, missing_ok: bool) -> dict[str, Any] | None:
    """Block until `predicate` holds for the object; returns its last state (None when gone).

    Raises WaitTimeout after `timeout` seconds, and the server's NotFound when the object does not
    exist and `missing_ok` is false.
    """
    from hypermesh.client import ApiError

    deadline = time.monotonic() + timeout
    while True:
        try:
            obj: dict[str, Any] | None = session.api.get(resource, name, ns)
        except ApiError as exc:
            if exc.status != 404 or not missing_ok:
                raise
            obj = None
        if predicate(obj):
            return obj
        if obj is None:
            # Gone, and that is not what we wait for: nothing will ever change.
            raise WaitTimeout(f"timed out waiting for the condition on {resource.plural}/{name}")
        version = str(obj.get("metadata", {}).get("resourceVersion", ""))
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise WaitTimeout(f"timed out waiting for the condition on {resource.plural}/{name}")
        events = session.api.watch(
            resource, ns, resource_version=version or None, field_selector=f"metadata.name={name}",
            timeout_seconds=max(1, math.ceil(remaining)),
        )
        try:
            for event in events:
                kind = event.get("type")
                if kind == "BOOKMARK":
                    continue
                if kind == "ERROR":
                    # Usually 410 Gone: the history moved on; read the object again and re-watch.
                    break
                current = None if kind == "DELETED" else event.get("object")
                if predicate(current):
                    return current
                if time.monotonic() >= deadline:
                    break
        finally:
            close = getattr(events, "close", None)
            if close is not None:
                close()
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out waiting for the condition on {resource.plural}/{name}")
