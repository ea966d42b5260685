"""The value constraints of a schema node (enum, bounds, lengths, patterns, combinators).

Each constraint compiles into a `Rule`: a pair of functions over the same compiled parameters.
- `check(value, kind, path, out)` appends precise `Cause`s; it runs only on the slow path, when
  an object is already known to be invalid (or to be odd, e.g. a float where an int is expected).
- `pred(value)` answers "certainly fine?" with no allocation, for the fast path that every valid
  object takes. It may say False when unsure; it must never say True for a bad value.
Each function guards its own value kind, so a rule never raises on a value of another type.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from hypermesh.resources import causes, formats
from hypermesh.resources.causes import Cause, in_body
from hypermesh.resources.values import json_key, render

if TYPE_CHECKING:
    from hypermesh.resources.schema_nodes import SchemaNode

Check = Callable[[Any, str, str, list[Cause]], None]
Pred = Callable[[Any], bool]
Rule = tuple[Check, Pred]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def enum(values: Sequence[Any]) -> Rule:
    allowed = {json_key(v) for v in values}
    strings = {v for v in values if type(v) is str}
    supported = ", ".join(render(v) for v in values)

    def check(value: Any, kind: str, path: str, out: list[Cause]) -> None:
        if json_key(value) not in allowed:
            out.append(causes.not_supported(path, value, supported))

    def pred(value: Any) -> bool:
        if type(value) is str:
            return value in strings
        return json_key(value) in allowed

    return check, pred


def number(
    minimum: float | None,
    exclusive_minimum: bool,
    maximum: float | None,
    exclusive_maximum: bool,
    multiple_of: float | None,
) -> Rule:
    def is_multiple(value: Any) -> bool:
        if multiple_of is None:
            return True
        if isinstance(value, int) and isinstance(multiple_of, int):
            return value % multiple_of == 0
        try:
            quotient = value / multiple_of
        except (OverflowError, ValueError, ZeroDivisionError):
            return False
        # NaN and infinities are multiples of nothing.
        return math.isfinite(quotient) and abs(quotient - round(quotient)) < 1e-9

    def check(value: Any, kind: str, path: str, out: list[Cause]) -> None:
        if kind != "integer" and kind != "number":
            return
        subject = in_body(path)
        if minimum is not None:
            if exclusive_minimum and value <= minimum:
                detail = f"{subject} should be greater than {render(minimum)}"
                out.append(causes.invalid(path, value, detail))
            elif value < minimum:
                detail = f"{subject} should be greater than or equal to {render(minimum)}"
                out.append(causes.invalid(path, value, detail))
        if maximum is not None:
            if exclusive_maximum and value >= maximum:
                detail = f"{subject} should be less than {render(maximum)}"
                out.append(causes.invalid(path, value, detail))
            elif value > maximum:
                detail = f"{subject} should be less than or equal to {render(maximum)}"
                out.append(causes.invalid(path, value, detail))
        if not is_multiple(value):
            detail = f"{subject} should be a multiple of {render(multiple_of)}"
            out.append(causes.invalid(path, value, detail))

    def pred(value: Any) -> bool:
        if not _is_number(value):
            return True
        if minimum is not None and (value <= minimum if exclusive_minimum else value < minimum):
            return False
        if maximum is not None and (value >= maximum if exclusive_maximum else value > maximum):
            return False
        return is_multiple(value)

    return check, pred


def string(
    min_length: int | None,
    max_length: int | None,
    pattern: re.Pattern[str] | None,
    format_name: str | None,
) -> Rule:
    is_valid_format = formats.format_checker(format_name) if format_name else None

    def check(value: Any, kind: str, path: str, out: list[Cause]) -> None:
        if kind != "string":
            return
        if max_length is not None and len(value) > max_length:
            out.append(causes.too_long(path, max_length))
        if min_length is not None and len(value) < min_length:
            detail = f"{in_body(path)} should be at least {min_length} chars long"
            out.append(causes.invalid(path, value, detail))
        if pattern is not None and pattern.search(value) is None:
            detail = f"{in_body(path)} should match '{pattern.pattern}'"
            out.append(causes.invalid(path, value, detail))
        if is_valid_format is not None and not is_valid_format(value):
            detail = f"{in_body(path)} must be of type {format_name}: {render(value)}"
            out.append(causes.invalid(path, value, detail))

    def pred(value: Any) -> bool:
        if not isinstance(value, str):
            return True
        if max_length is not None and len(value) > max_length:
            return False
        if min_length is not None and len(value) < min_length:
            return False
        if pattern is not None and pattern.search(value) is None:
            return False
        return is_valid_format is None or is_valid_format(value)

    return check, pred


def count(kind_name: str, unit: str, minimum: int | None, maximum: int | None) -> Rule:
    """minItems/maxItems (kind "array") or minProperties/maxProperties (kind "object")."""
    container = dict if kind_name == "object" else (list, tuple)

    def check(value: Any, kind: str, path: str, out: list[Cause]) -> None:
        if kind != kind_name:
            return
        size = len(value)
        if maximum is not None and size > maximum:
            out.append(causes.too_many(path, size, maximum, unit))
        if minimum is not None and size < minimum:
            detail = f"{in_body(path)} should have at least {minimum} {unit}"
            out.append(causes.invalid(path, value, detail))

    def pred(value: Any) -> bool:
        if not isinstance(value, container):
            return True
        size = len(value)
        return (maximum is None or size <= maximum) and (minimum is None or size >= minimum)

    return check, pred


def check_unique(value: Any, path: str, out: list[Cause]) -> None:
    """Reports every item equal to an earlier one (list-type set, uniqueItems)."""
    seen: set[Any] = set()
    for index, item in enumerate(value):
        identity = json_key(item)
        if identity in seen:
            out.append(causes.duplicate(f"{path}[{index}]", item))
        else:
            seen.add(identity)


def unique() -> Rule:
    def check(value: Any, kind: str, path: str, out: list[Cause]) -> None:
        if kind == "array":
            check_unique(value, path, out)

    def pred(value: Any) -> bool:
        if not isinstance(value, (list, tuple)):
            return True
        return len({json_key(item) for item in value}) == len(value)

    return check, pred


def _passes(node: SchemaNode, value: Any) -> bool:
    found: list[Cause] = []
    node.check(value, "", found)
    return not found


def all_of(nodes: list[SchemaNode]) -> Rule:
    def check(value: Any, kind: str, path: str, out: list[Cause]) -> None:
        for node in nodes:
            node.check(value, path, out)

    def pred(value: Any) -> bool:
        return all(node.fast(value) for node in nodes)

    return check, pred


def any_of(nodes: list[SchemaNode]) -> Rule:
    def check(value: Any, kind: str, path: str, out: list[Cause]) -> None:
        first: list[Cause] | None = None
        for node in nodes:
            found: list[Cause] = []
            node.check(value, path, found)
            if not found:
                return
            if first is None:
                first = found
        detail = f"{in_body(path)} must validate at least one schema (anyOf)"
        out.append(causes.invalid(path, value, detail))
        out.extend(first or ())

    def pred(value: Any) -> bool:
        return any(node.fast(value) for node in nodes)

    return check, pred


def one_of(nodes: list[SchemaNode]) -> Rule:
    def check(value: Any, kind: str, path: str, out: list[Cause]) -> None:
        passed = 0
        first: list[Cause] | None = None
        for node in nodes:
            found: list[Cause] = []
            node.check(value, path, found)
            if not found:
                passed += 1
            elif first is None:
                first = found
        if passed != 1:
            detail = f"{in_body(path)} must validate one and only one schema (oneOf)"
            out.append(causes.invalid(path, value, detail))
            if passed == 0:
                out.extend(first or ())

    def pred(value: Any) -> bool:
        # The fast path may not say False for "fails here" reliably enough to count, so it
        # counts with the precise validator.
        return sum(_passes(node, value) for node in nodes) == 1

    return check, pred


def not_(node: SchemaNode) -> Rule:
    def check(value: Any, kind: str, path: str, out: list[Cause]) -> None:
        if _passes(node, value):
            detail = f"{in_body(path)} must not validate the schema (not)"
            out.append(causes.invalid(path, value, detail))

    def pred(value: Any) -> bool:
        return not _passes(node, value)

    return check, pred
