"""Validation causes, worded the way Kubernetes words them.

`kubectl` prints an Invalid response as `The Workload "web" is invalid: spec.replicas: Invalid
value: "abc": spec.replicas in body must be of type integer: "string"`, straight from the
server's causes. Keeping the same reasons and phrases means users (and tools that match on
them) meet familiar errors, so every message is built here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hypermesh.resources.values import render

REQUIRED = "FieldValueRequired"
INVALID = "FieldValueInvalid"
NOT_SUPPORTED = "FieldValueNotSupported"
TYPE_INVALID = "FieldValueTypeInvalid"
TOO_LONG = "FieldValueTooLong"
TOO_MANY = "FieldValueTooMany"
DUPLICATE = "FieldValueDuplicate"


@dataclass(frozen=True, slots=True)
class Cause:
    """One validation failure, shaped like a Kubernetes `StatusCause`.

    `type` is the Kubernetes reason (`FieldValueInvalid`, ...), `field` the path of the
    offending value and `message` the text kubectl shows after the field path.
    """

    type: str
    field: str
    message: str

    def as_status_cause(self) -> dict[str, str]:
        """The cause as it appears in a `Status.details.causes` entry."""
        return {"reason": self.type, "message": self.message, "field": self.field}

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


def in_body(path: str) -> str:
    """The subject of a schema message: `spec.replicas in body`, or `body` for the root."""
    return f"{path} in body" if path else "body"


def required(path: str) -> Cause:
    return Cause(REQUIRED, path, "Required value")


def invalid(path: str, value: Any, detail: str) -> Cause:
    return Cause(INVALID, path, f"Invalid value: {render(value)}: {detail}")


def type_invalid(path: str, value: Any, expected: str, actual: str) -> Cause:
    detail = f'{in_body(path)} must be of type {expected}: "{actual}"'
    return Cause(TYPE_INVALID, path, f"Invalid value: {render(value)}: {detail}")


def not_supported(path: str, value: Any, supported: str) -> Cause:
    message = f"Unsupported value: {render(value)}: supported values: {supported}"
    return Cause(NOT_SUPPORTED, path, message)


def too_long(path: str, maximum: int) -> Cause:
    return Cause(TOO_LONG, path, f"Too long: may not be more than {maximum} bytes")


def too_many(path: str, count: int, maximum: int, unit: str) -> Cause:
    return Cause(TOO_MANY, path, f"Too many: {count}: must have at most {maximum} {unit}")


def duplicate(path: str, value: Any) -> Cause:
    return Cause(DUPLICATE, path, f"Duplicate value: {render(value)}")
