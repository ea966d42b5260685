"""JSON merge patch (RFC 7386) and JSON patch (RFC 6902) as pure functions over plain JSON.

The API server accepts `application/merge-patch+json` (kubectl `--type=merge`, client-side apply
of custom kinds, kopf, the python client's default) and `application/json-patch+json` (kubectl
`--type=json`, kopf's finalizer edits guarded by a `test` on `/metadata/resourceVersion`). Both
are written here rather than taken from a library for two reasons: the error messages must tell
a user which operation failed and why (the API returns them verbatim in a `Status`), and a failed
`test` must be a distinct error, because Kubernetes answers it with 422 where other malformed
patches get 400.

Every function takes and returns plain JSON data (dict, list, str, int, float, bool, None) and
never mutates its arguments. Results never share a mutable container with an argument, so the
caller may edit a result (to stamp a new resourceVersion, say) without touching the stored object.
That costs one copy of the document per patch, which is cheap next to the JSON decoding that
produced it, and it makes `json_patch` atomic for free: a failure part-way through leaves nothing
behind.

`clone_json` and `json_equal` are public because the field manager needs exactly the same notion
of copying and of equality (JSON equality, where `true` is not `1`).
"""

from __future__ import annotations

import json
from typing import Any, Final, TypeAlias

import orjson

# JSON data as decoded by orjson or json: nested dicts, lists and scalars.
JSON: TypeAlias = Any

OPERATIONS: Final = ("add", "remove", "replace", "move", "copy", "test")

# A message quotes at most this much of a value, so a failed test on a large subtree stays legible.
_MAX_QUOTED: Final = 200


class PatchError(ValueError):
    """The patch is malformed or does not apply to the document (the API answers 400 or 422)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class PatchTestFailed(PatchError):
    """A JSON patch `test` operation found a different value (the API answers 422, like Kubernetes)."""


# --------------------------------------------------------------------------------------------
# Shared JSON helpers.


def clone_json(value: JSON) -> JSON:
    """Return a deep copy of JSON data, many times faster than `copy.deepcopy`."""
    if not isinstance(value, (dict, list)):
        return value
    try:
        # A round trip through orjson copies in C, keeps key order, and floats survive exactly.
        return orjson.loads(orjson.dumps(value))
    except TypeError:
        # orjson refuses what JSON allows but it does not (integers beyond 64 bits).
        return _clone_slowly(value)


def _clone_slowly(value: JSON) -> JSON:
    if isinstance(value, dict):
        return {key: _clone_slowly(child) for key, child in value.items()}
    if isinstance(value, list):
        return [_clone_slowly(child) for child in value]
    return value


def json_equal(a: JSON, b: JSON) -> bool:
    """Compare two JSON values the way JSON does: numbers by value, but `true` is never `1`."""
    # Python says True == 1 and 1 == 1.0; JSON agrees with the second and not the first.
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, dict):
        if not isinstance(b, dict) or len(a) != len(b):
            return False
        for key, child in a.items():
            if key not in b or not json_equal(child, b[key]):
                return False
        return True
    if isinstance(a, list):
        if not isinstance(b, list) or len(a) != len(b):
            return False
        return all(json_equal(x, y) for x, y in zip(a, b, strict=False))
    if isinstance(b, (dict, list)):
        return False
    return bool(a == b)


def _quote(value: JSON) -> str:
    """Render a value for an error message as compact JSON, shortened when it is large."""
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    except (TypeError, ValueError):
        text = repr(value)
    if len(text) > _MAX_QUOTED:
        text = text[:_MAX_QUOTED] + "..."
    return text


def _type_name(value: JSON) -> str:
    """Name a JSON value's type the way a user reading JSON would."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (int, float)):
        return "number"
    return type(value).__name__


# --------------------------------------------------------------------------------------------
# RFC 7386 JSON merge patch.


def merge_patch(target: JSON, patch: JSON) -> JSON:
    """Apply an RFC 7386 merge patch: objects merge, `null` deletes, anything else replaces.

    Lists are values like any other, so a list in the patch replaces the target's list whole.
    """
    if not isinstance(patch, dict):
        return clone_json(patch)
    base = target if isinstance(target, dict) else {}
    result: dict[str, JSON] = {}
    # Keys keep the target's order; keys new to the target follow in the patch's order.
    for key, value in base.items():
        if key in patch:
            change = patch[key]
            if change is not None:
                result[key] = merge_patch(value, change)
        else:
            result[key] = clone_json(value)
    for key, change in patch.items():
        if key not in base and change is not None:
            result[key] = merge_patch(None, change)
    return result


def merge_diff(source: JSON, target: JSON) -> JSON:
    """Compute a merge patch that turns `source` into `target`.

    `merge_patch(source, merge_diff(source, target)) == target` holds whenever `target` has no
    `null` inside an object, because a merge patch cannot express "set this key to null".
    """
    if not (isinstance(source, dict) and isinstance(target, dict)):
        return clone_json(target)
    patch: dict[str, JSON] = {}
    for key in source:
        if key not in target:
            patch[key] = None
    for key, wanted in target.items():
        if key not in source:
            patch[key] = clone_json(wanted)
            continue
        current = source[key]
        if json_equal(current, wanted):
            continue
        if isinstance(current, dict) and isinstance(wanted, dict):
            patch[key] = merge_diff(current, wanted)
        else:
            patch[key] = clone_json(wanted)
    return patch


# --------------------------------------------------------------------------------------------
# RFC 6901 JSON pointer.


def parse_pointer(pointer: str) -> list[str]:
    """Split a JSON pointer into unescaped reference tokens; `""` is the whole document.

    Raises `ValueError` with the reason when the pointer is malformed.
    """
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise ValueError('a JSON pointer must be empty or start with "/"')
    tokens = pointer[1:].split("/")
    if "~" not in pointer:
        return tokens
    unescaped = []
    for token in tokens:
        # Only "~0" and "~1" are escapes; a lone "~" or "~2" is an error, not a literal.
        position = token.find("~")
        while position != -1:
            if position + 1 >= len(token) or token[position + 1] not in "01":
                raise ValueError(f'"~" must be followed by "0" or "1" (in token {token!r})')
            position = token.find("~", position + 2)
        # "~1" first, then "~0", so that "~01" becomes "~1" and not "/".
        unescaped.append(token.replace("~1", "/").replace("~0", "~"))
    return unescaped


def format_pointer(tokens: list[str]) -> str:
    """Join reference tokens back into a JSON pointer, escaping "~" and "/"."""
    return "".join("/" + token.replace("~", "~0").replace("/", "~1") for token in tokens)


# --------------------------------------------------------------------------------------------
# RFC 6902 JSON patch.


class _OpFailed(Exception):
    """Internal: an operation did not apply; the caller prefixes the operation's index and name."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def json_patch(doc: JSON, ops: JSON) -> JSON:
    """Apply an RFC 6902 JSON patch and return the patched copy of `doc`.

    Operations are numbered from 0 in error messages, like the indexes of the patch array.
    A failed `test` raises `PatchTestFailed`; every other problem raises `PatchError`.
    """
    if not isinstance(ops, list):
        raise PatchError(f"a JSON patch must be an array of operations, got {_type_name(ops)}")
    # One private copy, edited in place: the caller's document is never touched, so a failure
    # part-way through needs no rollback.
    result = clone_json(doc)
    for index, op in enumerate(ops):
        result = _apply_operation(result, op, index)
    return result


def _apply_operation(doc: JSON, op: JSON, index: int) -> JSON:
    """Validate one operation's shape and apply it to `doc` (which it may edit in place)."""
    if not isinstance(op, dict):
        raise PatchError(f"operation {index}: must be an object, got {_type_name(op)}")
    name = op.get("op")
    if name is None:
        raise PatchError(f'operation {index}: missing "op" (one of {", ".join(OPERATIONS)})')
    if name not in OPERATIONS:
        raise PatchError(
            f"operation {index}: unknown op {_quote(name)} (allowed: {', '.join(OPERATIONS)})"
        )
    where = f"operation {index} ({name})"
    path, tokens = _pointer_member(op, "path", where)
    if name in ("add", "replace", "test") and "value" not in op:
        raise PatchError(f'{where}: missing "value"')
    source: list[str] = []
    source_text = ""
    if name in ("move", "copy"):
        source_text, source = _pointer_member(op, "from", where)

    if name == "test":
        _test(doc, tokens, path, op["value"])
        return doc
    try:
        if name == "add":
            return _add(doc, tokens, path, clone_json(op["value"]))
        if name == "remove":
            if not tokens:
                raise _OpFailed("cannot remove the whole document")
            _remove(doc, tokens, path)
            return doc
        if name == "replace":
            if not tokens:
                return clone_json(op["value"])
            parent, last = _parent(doc, tokens, path)
            _existing(parent, last, path)
            _store(parent, last, op["value"], path, replace=True)
            return doc
        if name == "move":
            if source == tokens:
                _get(doc, source, source_text)
                return doc
            if source == tokens[: len(source)]:
                raise _OpFailed(f"cannot move {_show(source_text)} into its own child {path}")
            value = _remove(doc, source, source_text)
            return _add(doc, tokens, path, value)
        # copy
        value = clone_json(_get(doc, source, source_text))
        return _add(doc, tokens, path, value)
    except _OpFailed as failure:
        raise PatchError(f"{where}: {failure.detail}") from None


def _pointer_member(op: dict[str, JSON], member: str, where: str) -> tuple[str, list[str]]:
    """Read and parse the pointer stored under `member` ("path" or "from")."""
    if member not in op:
        raise PatchError(f'{where}: missing "{member}"')
    text = op[member]
    if not isinstance(text, str):
        raise PatchError(f'{where}: "{member}" must be a string, got {_type_name(text)}')
    try:
        return text, parse_pointer(text)
    except ValueError as bad:
        raise PatchError(f'{where}: "{member}" {_quote(text)} is not a JSON pointer: {bad}') from None


def _show(pointer: str) -> str:
    """Name a pointer in a message; the empty pointer gets words, since it prints as nothing."""
    return pointer if pointer else '"" (the whole document)'


def _array_index(token: str, size: int, path: str, *, allow_end: bool) -> int:
    """Turn a reference token into an index of an array of `size` items."""
    if token == "-":
        if allow_end:
            return size
        raise _OpFailed(f'path {path} does not exist ("-" names the position after the last item)')
    # RFC 6901: digits without leading zeros; anything else is not an index.
    if not token.isdigit() or not token.isascii() or (len(token) > 1 and token[0] == "0"):
        raise _OpFailed(f"path {path}: {token!r} is not a valid array index")
    index = int(token)
    limit = size if allow_end else size - 1
    if index > limit:
        raise _OpFailed(
            f"path {path} does not exist: index {index} is out of range "
            f"(the array has {size} item{'s' if size != 1 else ''})"
        )
    return index


def _get(doc: JSON, tokens: list[str], path: str) -> JSON:
    """Return the value at `tokens`, or fail naming the path."""
    node = doc
    for token in tokens:
        if isinstance(node, dict):
            if token not in node:
                raise _OpFailed(f"path {_show(path)} does not exist")
            node = node[token]
        elif isinstance(node, list):
            node = node[_array_index(token, len(node), path, allow_end=False)]
        else:
            raise _OpFailed(f"path {_show(path)} does not exist")
    return node


def _parent(doc: JSON, tokens: list[str], path: str) -> tuple[JSON, str]:
    """Return the container holding the target of a non-empty pointer, and the last token."""
    parent = _get(doc, tokens[:-1], path)
    if not isinstance(parent, (dict, list)):
        raise _OpFailed(f"path {path} does not exist: its parent is a {_type_name(parent)}")
    return parent, tokens[-1]


def _existing(parent: JSON, last: str, path: str) -> None:
    """Fail unless the member `last` of `parent` exists."""
    if isinstance(parent, dict):
        if last not in parent:
            raise _OpFailed(f"path {path} does not exist")
    else:
        _array_index(last, len(parent), path, allow_end=False)


def _store(parent: JSON, last: str, value: JSON, path: str, *, replace: bool) -> None:
    """Set (replace=True) or insert (replace=False) `value` at member `last` of `parent`."""
    if isinstance(parent, dict):
        parent[last] = value
    elif replace:
        parent[_array_index(last, len(parent), path, allow_end=False)] = value
    else:
        parent.insert(_array_index(last, len(parent), path, allow_end=True), value)


def _add(doc: JSON, tokens: list[str], path: str, value: JSON) -> JSON:
    """RFC 6902 add: insert into arrays, set on objects, replace the root when the path is ""."""
    if not tokens:
        return value
    parent, last = _parent(doc, tokens, path)
    _store(parent, last, value, path, replace=False)
    return doc


def _remove(doc: JSON, tokens: list[str], path: str) -> JSON:
    """Remove and return the value at a non-empty pointer."""
    parent, last = _parent(doc, tokens, path)
    if isinstance(parent, dict):
        if last not in parent:
            raise _OpFailed(f"path {path} does not exist")
        return parent.pop(last)
    return parent.pop(_array_index(last, len(parent), path, allow_end=False))


def _test(doc: JSON, tokens: list[str], path: str, expected: JSON) -> None:
    """RFC 6902 test: raise `PatchTestFailed` unless the value at `path` equals `expected`."""
    try:
        actual = _get(doc, tokens, path)
    except _OpFailed:
        raise PatchTestFailed(
            f"the test operation at {_show(path)} failed: the path does not exist, "
            f"expected {_quote(expected)}"
        ) from None
    if not json_equal(actual, expected):
        raise PatchTestFailed(
            f"the test operation at {_show(path)} failed: value is {_quote(actual)}, "
            f"expected {_quote(expected)}"
        )
