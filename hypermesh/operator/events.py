"""Core v1 Events: what a controller did to an object, visible in `describe`.

Events are for people, so repeats are folded as Kubernetes' recorder folds them: the same
(object, type, reason, message) bumps `count` and `lastTimestamp` of the existing Event instead
of creating one more. The recorder remembers the Events it wrote (a bounded map), so folding
costs one patch; when the Event is gone (expired, deleted) a fresh one is created.

Recording never raises: a controller must not fail a reconcile because an Event could not be
written. Failures are logged.
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any, Literal

from hypermesh.client.aio import AsyncClient
from hypermesh.client.errors import ApiError, ClientError
from hypermesh.client.resources import Resource

log = logging.getLogger(__name__)

EVENTS = Resource(
    group="", version="v1", kind="Event", plural="events", singular="event", namespaced=True
)
EventType = Literal["Normal", "Warning"]
_REMEMBERED = 4096


def _time() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _micro_time() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class EventRecorder:
    """Writes Events as `component` (the `source.component` and `reportingComponent`)."""

    def __init__(self, client: AsyncClient, component: str, *, host: str | None = None) -> None:
        self.client = client
        self.component = component
        self.host = host or os.uname().nodename
        # (uid or key, type, reason, message) -> (event namespace, event name, count)
        self._seen: OrderedDict[tuple[str, ...], tuple[str, str, int]] = OrderedDict()

    async def record(
        self,
        obj: dict[str, Any],
        reason: str,
        message: str,
        type: EventType = "Normal",
    ) -> dict[str, Any] | None:
        """Record an Event about `obj`; returns the Event, or None if it could not be written."""
        try:
            return await self._record(obj, reason, message, type)
        except ClientError as exc:
            log.warning("could not record event %s on %s: %s", reason, _name(obj), exc)
            return None

    async def _record(
        self, obj: dict[str, Any], reason: str, message: str, type: EventType
    ) -> dict[str, Any]:
        meta = obj.get("metadata") or {}
        namespace = meta.get("namespace") or "default"
        identity = (meta.get("uid") or f"{namespace}/{meta.get('name')}", type, reason, message)
        now = _time()
        seen = self._seen.get(identity)
        if seen is not None:
            event_ns, event_name, count = seen
            try:
                event = await self.client.patch(
                    EVENTS,
                    event_name,
                    event_ns,
                    {"count": count + 1, "lastTimestamp": now},
                    field_manager=self.component,
                )
            except ApiError as exc:
                if exc.status != 404:
                    raise
            else:
                self._remember(identity, event_ns, event_name, count + 1)
                return event
        involved = {
            "kind": obj.get("kind", ""),
            "apiVersion": obj.get("apiVersion", ""),
            "name": meta.get("name", ""),
            "namespace": meta.get("namespace", ""),
            "uid": meta.get("uid", ""),
            "resourceVersion": meta.get("resourceVersion", ""),
        }
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{meta.get('name', 'object')}.{time.time_ns():x}",
                "namespace": namespace,
            },
            "involvedObject": {k: v for k, v in involved.items() if v},
            "reason": reason,
            "message": message,
            "type": type,
            "count": 1,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "eventTime": _micro_time(),
            "source": {"component": self.component, "host": self.host},
            "reportingComponent": self.component,
            "reportingInstance": self.host,
            "action": reason,
        }
        event = await self.client.create(EVENTS, body, namespace, field_manager=self.component)
        self._remember(identity, namespace, event["metadata"]["name"], 1)
        return event

    def _remember(self, identity: tuple[str, ...], namespace: str, name: str, count: int) -> None:
        self._seen[identity] = (namespace, name, count)
        self._seen.move_to_end(identity)
        while len(self._seen) > _REMEMBERED:
            self._seen.popitem(last=False)


def _name(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"
