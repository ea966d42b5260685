"""Finishing a graceful deletion: the DELETE sent once nothing of the object runs any more.

An Instance deleted while bound stays, Terminating, until whoever runs it (its node agent, the
node simulator) has stopped it and says so with a second DELETE carrying
`gracePeriodSeconds: 0` (or until the Instance collector gives up on a lost node). That DELETE
names the object's uid as a precondition: by the time it is sent, the Instance may be gone and
a new one of the same name made (a StatefulSet-like controller, a user's re-create), and that
one must not be deleted in its place. The async client's `delete` has no DeleteOptions beyond
the propagation policy, so the body is sent here.
"""

from __future__ import annotations

from typing import Any

from hypermesh.client.aio import AsyncClient
from hypermesh.client.errors import ApiError
from hypermesh.client.resources import Resource


def force_options(uid: str | None) -> dict[str, Any]:
    """DeleteOptions that remove the object now (finalizers still hold it), if it is `uid`."""
    options: dict[str, Any] = {
        "kind": "DeleteOptions",
        "apiVersion": "v1",
        "gracePeriodSeconds": 0,
        "propagationPolicy": "Background",
    }
    if uid:
        options["preconditions"] = {"uid": uid}
    return options


async def delete_now(client: AsyncClient, resource: Resource, obj: dict[str, Any]) -> bool:
    """Delete `obj` with no grace period; True if this call removed (or marked) it, False if
    it was already gone or replaced by another object of the same name (404 or 409)."""
    meta = obj["metadata"]
    path = resource.path(meta.get("namespace") if resource.namespaced else None, meta["name"])
    try:
        await client.request("DELETE", path, body=force_options(meta.get("uid")))
    except ApiError as exc:
        if exc.status in (404, 409):
            return False
        raise
    return True
