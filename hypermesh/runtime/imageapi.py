"""The node agent's image routes: `/images...` on its endpoint.

(Placeholder: the routes are being written; every request answers 404 until then.)
"""

from __future__ import annotations

from hypermesh.pki.identity import Identity
from hypermesh.runtime.supervisor import NodeServices
from hypermesh.transport.asgi import Receive, Scope, Send


class ImageRouteError(Exception):
    """An answer other than success: HTTP code, Kubernetes Status reason, message."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message


async def serve(services: NodeServices, scope: Scope, receive: Receive, send: Send, identity: Identity, path: str) -> None:
    """Answer one request under `/images` (`path` is what follows `/images`)."""
    raise ImageRouteError(404, "NotFound", f"unknown image path /images{path}")
