"""Binding Instances to Nodes: the scheduler's write, kept as cheap as a write can be.

Kubernetes' scheduler does not PATCH a pod; it POSTs a `Binding` to the pod's `binding`
subresource, and the API server sets `spec.nodeName` in one guarded step. HyperMesh does the
same for Instances (`POST .../instances/NAME/binding`), for the same reasons:

- it is a compare-and-swap on "not yet bound": binding an Instance that already has a node is
  409 Conflict, whoever asked, so two schedulers can never both win;
- it skips everything a general update pays for (patch merging, schema validation, defaulting,
  managedFields) because it changes one field whose value is checked here. Like Kubernetes,
  a binding leaves managedFields and `metadata.generation` alone: placement is not a change of
  the user's intent;
- the answer is a short `Status`, not the whole object.

The scheduler binds thousands of Instances a second, so there is also a batch form, a
HyperMesh extension: `POST /apis/hypermesh.io/v1/bindings` with a `BindingList`. Each item is
decided on its own (one failing item fails only itself) and the answer lists one Status per
item. The items' store writes are submitted together, so the state engine's group commit
turns a batch into a few transactions instead of one per Instance.
"""

from __future__ import annotations

import asyncio
from typing import Any

from hypermesh.api import errors
from hypermesh.api.storage import ObjectStorage
from hypermesh.resources.registry import Registry, ResourceType

# The batch endpoint (not a resource: it is not listed in discovery).
BATCH_PATH = "/apis/hypermesh.io/v1/bindings"
MAX_BATCH = 5000


def bindable(rtype: ResourceType) -> bool:
    """Only Instances have a binding subresource."""
    return rtype.group == "hypermesh.io" and rtype.kind == "Instance"


class Binder:
    """Applies Bindings to the stored Instances."""

    def __init__(self, storage: ObjectStorage, registry: Registry) -> None:
        self.storage = storage
        self.registry = registry

    def instance_type(self) -> ResourceType:
        rtype = self.registry.by_plural("hypermesh.io", "v1", "instances")
        if rtype is None:  # pragma: no cover - the kind is installed at startup
            raise errors.ApiError(503, "ServiceUnavailable", "the Instance kind is not installed yet")
        return rtype

    async def bind(self, rtype: ResourceType, namespace: str, name: str, body: Any) -> dict[str, Any]:
        """One Binding from the subresource URL; returns the Status to send (201)."""
        node, rv, uid = _parse(body, "", name_in_url=name)
        await self._bind(rtype, namespace, name, node, rv, uid)
        return _success(rtype, name)

    async def bind_many(self, body: Any) -> dict[str, Any]:
        """A BindingList; returns a BindingList of per-item Status answers, in order."""
        if not isinstance(body, dict) or body.get("kind") != "BindingList":
            raise errors.bad_request('the body must be a BindingList: {"kind": "BindingList", "items": [...]}')
        items = body.get("items")
        if not isinstance(items, list):
            raise errors.bad_request("BindingList.items must be a list of Bindings")
        if len(items) > MAX_BATCH:
            raise errors.bad_request(f"BindingList.items has {len(items)} Bindings; at most {MAX_BATCH} are allowed")
        rtype = self.instance_type()
        results = await asyncio.gather(*(self._item(rtype, i, item) for i, item in enumerate(items)))
        return {"apiVersion": "hypermesh.io/v1", "kind": "BindingList", "items": results}

    async def _item(self, rtype: ResourceType, index: int, item: Any) -> dict[str, Any]:
        name = namespace = ""
        try:
            if not isinstance(item, dict):
                raise errors.bad_request(f"items[{index}]: a Binding must be an object, not {type(item).__name__}")
            meta = item.get("metadata")
            if not isinstance(meta, dict):
                raise errors.bad_request(f"items[{index}].metadata: required")
            given_name, given_namespace = meta.get("name"), meta.get("namespace")
            if not isinstance(given_name, str) or not given_name or not isinstance(given_namespace, str) or not given_namespace:
                raise errors.bad_request(f"items[{index}].metadata: name and namespace are required strings")
            name, namespace = given_name, given_namespace
            node, rv, uid = _parse(item, f"items[{index}].", name_in_url=name)
            await self._bind(rtype, namespace, name, node, rv, uid)
        except errors.ApiError as exc:
            status = exc.status()
            status["details"] = {**(status.get("details") or {}), "name": name, "namespace": namespace}
            return status
        return _success(rtype, name, namespace)

    async def _bind(self, rtype: ResourceType, namespace: str, name: str, node: str, rv: int | None, uid: str | None) -> None:
        obj = await self.storage.get_required(rtype, namespace, name)
        meta = obj["metadata"]
        current = int(meta["resourceVersion"])
        if rv is not None and rv != current:
            raise errors.conflict(rtype.plural, rtype.group, name)
        if uid is not None and uid != meta.get("uid"):
            raise errors.conflict(rtype.plural, rtype.group, name, f"the UID in the binding ({uid}) does not match the object's ({meta.get('uid')})")
        spec = obj.get("spec")
        if not isinstance(spec, dict):
            spec = obj["spec"] = {}
        bound = spec.get("nodeName")
        if bound:
            raise errors.conflict(rtype.plural, rtype.group, name, f"instance {name} is already assigned to node {bound!r}")
        if meta.get("deletionTimestamp"):
            raise errors.conflict(rtype.plural, rtype.group, name, f"instance {name} is being deleted, cannot be assigned to a node")
        spec["nodeName"] = node
        await self.storage.update(rtype, obj, current)


def _parse(body: Any, where: str, *, name_in_url: str) -> tuple[str, int | None, str | None]:
    """The target node, and the optional resourceVersion and uid preconditions."""
    if not isinstance(body, dict):
        raise errors.bad_request(f"{where or 'the body'}: a Binding must be a JSON object")
    kind = body.get("kind")
    if kind not in (None, "Binding"):
        raise errors.bad_request(f"{where}kind: {kind!r} is not Binding")
    meta = body.get("metadata") or {}
    if not isinstance(meta, dict):
        raise errors.bad_request(f"{where}metadata: must be an object")
    name = meta.get("name")
    if name not in (None, "", name_in_url):
        raise errors.bad_request(f"{where}metadata.name: {name!r} does not match the Instance {name_in_url!r} of the URL")
    target = body.get("target")
    if not isinstance(target, dict):
        raise errors.bad_request(f'{where}target: required, e.g. {{"kind": "Node", "name": "node-1"}}')
    if target.get("kind") not in (None, "", "Node"):
        raise errors.bad_request(f"{where}target.kind: {target.get('kind')!r}; only Node is allowed")
    node = target.get("name")
    if not isinstance(node, str) or not node:
        raise errors.bad_request(f"{where}target.name: required, the name of a Node")
    rv_text = meta.get("resourceVersion")
    rv: int | None = None
    if rv_text not in (None, ""):
        if not isinstance(rv_text, str) or not rv_text.isdigit():
            raise errors.bad_request(f"{where}metadata.resourceVersion: {rv_text!r} is not a resourceVersion")
        rv = int(rv_text)
    uid = meta.get("uid")
    if uid is not None and not isinstance(uid, str):
        raise errors.bad_request(f"{where}metadata.uid: must be a string")
    return node, rv, uid or None


def _success(rtype: ResourceType, name: str, namespace: str | None = None) -> dict[str, Any]:
    details: dict[str, Any] = {"name": name, "group": rtype.group, "kind": rtype.plural}
    if namespace:
        details["namespace"] = namespace
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201, "details": details}
