"""The thin HTTP layer between ASGI and the handlers.

The API server speaks raw ASGI instead of going through a web framework: the hot paths (get,
list, create, watch fan-out) are a handful of dict lookups plus one JSON encode, and a
framework's routing and request objects would cost more than the work itself. This module is
all the HTTP the handlers need: a parsed `Request` and functions that send a response.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote

import orjson

from hypermesh.api import errors

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

# Kubernetes caps request bodies at 3 MiB; larger bodies are refused before parsing.
MAX_BODY = 3 * 1024 * 1024

JSON = b"application/json"


@dataclass(slots=True)
class Request:
    """One request, parsed once."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    identity: Any  # hypermesh.pki.Identity or None
    receive: Receive
    _body: bytes | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_scope(cls, scope: dict[str, Any], receive: Receive) -> Request:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        raw_query = scope.get("query_string", b"").decode("latin-1")
        query = dict(parse_qsl(raw_query, keep_blank_values=True)) if raw_query else {}
        return cls(
            method=scope["method"],
            path=unquote(scope["path"]),
            query=query,
            headers=headers,
            identity=scope.get("hypermesh.identity"),
            receive=receive,
        )

    @property
    def content_type(self) -> str:
        """The media type without parameters; a missing header means JSON (the python client
        sends POST and PUT without one)."""
        value = self.headers.get("content-type", "")
        return value.split(";", 1)[0].strip().lower() or "application/json"

    @property
    def accept(self) -> str:
        return self.headers.get("accept", "")

    async def body(self) -> bytes:
        """The whole body; 413 past MAX_BODY, without buffering more than the limit."""
        if self._body is not None:
            return self._body
        declared = self.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_BODY:
            raise errors.too_large(MAX_BODY)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY:
                raise errors.too_large(MAX_BODY)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        self._body = b"".join(chunks)
        return self._body

    def flag(self, name: str) -> bool:
        """A boolean query parameter (`watch=true`, `watch=1`)."""
        return self.query.get(name, "").lower() in ("true", "1")


async def send_bytes(
    send: Send,
    status: int,
    body: bytes,
    *,
    content_type: bytes = JSON,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    raw_headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    if headers:
        raw_headers.extend(headers)
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


async def send_json(send: Send, status: int, obj: Any, **kwargs: Any) -> None:
    await send_bytes(send, status, orjson.dumps(obj), **kwargs)


async def send_error(send: Send, error: errors.ApiError) -> None:
    headers = [(k.encode(), v.encode()) for k, v in error.headers.items()]
    await send_bytes(send, error.code, error.body(), headers=headers)


def parse_json(body: bytes, what: str = "request body") -> Any:
    """Decode JSON with an error that says where it broke."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise errors.bad_request(f"the {what} is not valid JSON: {exc}") from None
