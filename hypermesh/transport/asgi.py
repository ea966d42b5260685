"""What both listeners promise the ASGI application, in one place.

The API server authorizes every request by the client certificate of the connection it came
on. Both listeners (HTTP/1.1 over TLS, HTTP/3 over QUIC) verify that certificate during or
right after the handshake and put the result in the request scope under `IDENTITY_SCOPE_KEY`:
an `Identity`, or None for a client that presented no certificate (the app answers 401). A
connection whose certificate fails verification never reaches the app at all.

They also fill the standard ASGI TLS extension (`scope["extensions"]["tls"]`) with what is
cheap to know, for middleware that expects it.

WebSocket scopes (interactive exec, HTTP/1.1 listener only) carry the same identity. They also
carry an `asyncio.Event` under `DISCONNECTED_SCOPE_KEY`, set the moment the connection is lost:
ASGI reports a disconnect only through `receive()`, behind any message not yet read, and a
session that stopped reading because its command does not read its input would otherwise never
learn that its client went away.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from hypermesh.pki.identity import Identity, identity_from_cert

IDENTITY_SCOPE_KEY = "hypermesh.identity"
DISCONNECTED_SCOPE_KEY = "hypermesh.disconnected"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

TLS_VERSIONS = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}


def tls_extension(cert: x509.Certificate | None, tls_version: int | None) -> dict[str, Any]:
    """Build the ASGI `tls` scope extension for a connection whose client sent `cert`."""
    return {
        "server_cert": None,
        "client_cert_chain": (
            [cert.public_bytes(serialization.Encoding.PEM).decode("ascii")] if cert else []
        ),
        "client_cert_name": cert.subject.rfc4514_string() if cert else None,
        "client_cert_error": None,
        "tls_version": tls_version,
        "cipher_suite": None,
    }


def identity_or_none(cert: x509.Certificate | None) -> Identity | None:
    """The identity of an already verified certificate; None when there is none or no user."""
    if cert is None:
        return None
    try:
        return identity_from_cert(cert)
    except ValueError:
        return None


async def deny_websocket(
    send: Callable[[Any], Awaitable[None]], status: int, body: bytes, content_type: bytes = b"application/json"
) -> None:
    """Refuse a WebSocket upgrade with an HTTP answer (the ASGI "websocket.http.response"
    extension), so the client reads a Status rather than a bare 403."""
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
    await send({"type": "websocket.http.response.body", "body": body})
