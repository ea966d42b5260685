"""Nodes' `proxy` subresource: `.../nodes/NAME/proxy/PATH` relays to that node's agent.

(Placeholder: the relay is being written; every request answers 404 until then.)
"""

from __future__ import annotations

from hypermesh.api import errors
from hypermesh.api.http import Request, Send
from hypermesh.api.proxy import AgentProxy
from hypermesh.resources.registry import ResourceType


def proxied(rtype: ResourceType) -> bool:
    """Only Nodes have an agent to relay to."""
    return rtype.group == "hypermesh.io" and rtype.kind == "Node"


async def serve(agents: AgentProxy, req: Request, send: Send, rtype: ResourceType, node: str, path: str) -> None:
    raise errors.ApiError(404, "NotFound", f"the node agent has no path /{path}")
