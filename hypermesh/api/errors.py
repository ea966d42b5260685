"""API errors as Kubernetes `Status` objects.

Every failure a client can see leaves the server as a `Status` body with a machine-readable
`reason` and an HTTP code, because that is what kubectl prints ("Error from server (NotFound):
...") and what the client libraries turn into exceptions. Handlers raise `ApiError`; the app
turns it into the response, so no handler ever builds an error body by hand.
"""

from __future__ import annotations

from typing import Any

import orjson


class ApiError(Exception):
    """An error with everything needed to answer it as a `Status`."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        *,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details
        self.headers = headers or {}

    def status(self) -> dict[str, Any]:
        """The `Status` object of this error."""
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body

    def body(self) -> bytes:
        return orjson.dumps(self.status())


def _details(kind_plural: str, group: str, name: str | None) -> dict[str, Any]:
    details: dict[str, Any] = {"group": group, "kind": kind_plural}
    if name:
        details["name"] = name
    return details


def qualified(plural: str, group: str) -> str:
    """`workloads.hypermesh.io`, or just `namespaces` for the core group, as kubectl prints."""
    return f"{plural}.{group}" if group else plural


def not_found(plural: str, group: str, name: str) -> ApiError:
    return ApiError(
        404,
        "NotFound",
        f'{qualified(plural, group)} "{name}" not found',
        details=_details(plural, group, name),
    )


def already_exists(plural: str, group: str, name: str) -> ApiError:
    return ApiError(
        409,
        "AlreadyExists",
        f'{qualified(plural, group)} "{name}" already exists',
        details=_details(plural, group, name),
    )


def conflict(plural: str, group: str, name: str, why: str | None = None) -> ApiError:
    why = why or "the object has been modified; please apply your changes to the latest version and try again"
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {qualified(plural, group)} "{name}": {why}',
        details=_details(plural, group, name),
    )


def invalid(
    kind: str, group: str, name: str, causes: list[dict[str, str]]
) -> ApiError:
    """422 Invalid with one cause per field, in the wording kubectl shows."""
    parts = [
        f"{c['field']}: {c['message']}" if c.get("field") else c["message"] for c in causes
    ]
    listing = parts[0] if len(parts) == 1 else "[" + ", ".join(parts) + "]"
    details = {"name": name, "group": group, "kind": kind, "causes": [status_cause(c) for c in causes]}
    return ApiError(
        422, "Invalid", f'{kind}.{group or "core"} "{name}" is invalid: {listing}', details=details
    )


def status_cause(cause: dict[str, str]) -> dict[str, str]:
    """A cause as Kubernetes' StatusCause spells it: `reason`, `message`, `field`."""
    out = {"reason": cause.get("reason") or cause.get("type", ""), "message": cause.get("message", "")}
    if cause.get("field"):
        out["field"] = cause["field"]
    return out


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def expired(message: str) -> ApiError:
    return ApiError(410, "Expired", message)


def method_not_allowed(message: str = "the server does not allow this method on the requested resource") -> ApiError:
    return ApiError(405, "MethodNotAllowed", message)


def unauthorized() -> ApiError:
    return ApiError(401, "Unauthorized", "Unauthorized: a client certificate signed by the cluster CA is required")


def forbidden(message: str) -> ApiError:
    return ApiError(403, "Forbidden", message)


def unsupported_media_type(message: str) -> ApiError:
    return ApiError(415, "UnsupportedMediaType", message)


def too_large(limit: int) -> ApiError:
    return ApiError(413, "RequestEntityTooLarge", f"the request body is larger than the limit of {limit} bytes")


def not_acceptable(message: str) -> ApiError:
    return ApiError(406, "NotAcceptable", message)
