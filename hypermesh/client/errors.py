"""The client's errors: a small hierarchy a caller can act on.

Two things go wrong when talking to a server, and a user fixes them differently:

- `ClientError`: no HTTP answer at all (connection refused, TLS failure, timeout). The message
  names the server URL and says what to check, because the fix is on the user's side (is the
  server running, is the kubeconfig right).
- `ApiError`: the server answered with a failure `Status` (404, 409, 422, ...). It carries the
  status code, the machine-readable `reason` and the server's own message, which is already
  written for people ("workloads.hypermesh.io "web" not found"), so `str()` is exactly that.
"""

from __future__ import annotations

from typing import Any

import orjson


class ClientError(Exception):
    """The request got no HTTP answer (or could not be made); the message says what to check."""


class ApiError(ClientError):
    """The server answered with an error `Status`; `str()` is the server's message."""

    def __init__(self, status: int, reason: str, message: str, status_body: dict[str, Any]) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.status_body = status_body

    def __str__(self) -> str:
        return self.message

    @classmethod
    def from_response(cls, status: int, body: bytes, *, url: str = "") -> ApiError:
        """Build the error from a response body, a `Status` when the server is Kubernetes-like."""
        try:
            parsed = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            parsed = None
        if isinstance(parsed, dict) and parsed.get("kind") == "Status":
            message = str(parsed.get("message") or "") or _generic(status, body, url)
            reason = str(parsed.get("reason") or "") or _reason(status)
            return cls(status, reason, message, parsed)
        message = _generic(status, body, url)
        reason = _reason(status)
        synthetic = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": status,
        }
        return cls(status, reason, message, synthetic)


# Kubernetes' StatusReason for the codes a client sees without a Status body.
_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    406: "NotAcceptable",
    409: "Conflict",
    410: "Expired",
    413: "RequestEntityTooLarge",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


def _reason(status: int) -> str:
    return _REASONS.get(status, "Unknown")


def _generic(status: int, body: bytes, url: str) -> str:
    text = body[:300].decode("utf-8", "replace").strip()
    where = f" from {url}" if url else ""
    detail = f": {text}" if text else ""
    return f"the server answered HTTP {status}{where}{detail}"
