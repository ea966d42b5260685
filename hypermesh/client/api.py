"""`Api`: the verbs of the Kubernetes API (get, list, create, apply, patch, ...) as methods.

Each method is one or a few requests through `Client`, with the query parameters and media
types Kubernetes expects, so callers think in objects and kinds rather than URLs and headers.
Objects stay plain dicts: the client is used for every kind, including CRDs it has no model
for, and the server is the one that validates.

`list` hides pagination (it follows `continue` tokens until the last page) and `watch`
returns a live stream of `{"type", "object"}` events, BOOKMARKs included (callers that do not
care skip them; a watch that is resumed later needs their resourceVersion).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import orjson

from hypermesh.client.errors import ClientError
from hypermesh.client.http import Client, EventStream
from hypermesh.client.resources import Discovery, Resource
from hypermesh.client.transports import StreamHandle

if TYPE_CHECKING:
    from hypermesh.client.websocket import WebSocket

TABLE_ACCEPT = "application/json;as=Table;v=v1;g=meta.k8s.io"
JSON = "application/json"
# Logs come as text; errors still come as a JSON Status.
LOG_ACCEPT = "text/plain, application/json"
PATCH_CONTENT_TYPES = {
    "merge": "application/merge-patch+json",
    "json": "application/json-patch+json",
    # Server-side apply takes YAML, and JSON is YAML.
    "apply": "application/apply-patch+yaml",
}
PatchType = Literal["merge", "json", "apply"]


@dataclass(frozen=True)
class ExecOutput:
    """What a command run with `Api.exec` did (the server's ExecResult, decoded)."""

    exit_code: int
    stdout: bytes
    stderr: bytes
    timed_out: bool = False

    @classmethod
    def from_result(cls, result: dict[str, Any]) -> ExecOutput:
        """Decode an ExecResult: `exitCode`, `stdout`/`stderr` as text or base64 (`encoding`)."""
        try:
            code = int(result["exitCode"])
            out, err = str(result.get("stdout", "")), str(result.get("stderr", ""))
            if result.get("encoding") == "base64":
                return cls(code, base64.b64decode(out), base64.b64decode(err), bool(result.get("timedOut")))
        except (KeyError, TypeError, ValueError, binascii.Error):
            raise ClientError(f"the server answered an exec with a malformed ExecResult: {str(result)[:200]}") from None
        return cls(code, out.encode(), err.encode(), bool(result.get("timedOut")))


class Api:
    """Create, read, update, delete and watch objects of any served kind."""

    def __init__(self, client: Client, discovery: Discovery | None = None) -> None:
        self.client = client
        self.discovery = discovery if discovery is not None else Discovery(client)

    # Reading

    def get(self, res: Resource, name: str, namespace: str | None) -> dict[str, Any]:
        """One object."""
        return _object(self.client.request("GET", res.path(_ns(res, namespace), name)).json())

    def list(
        self,
        res: Resource,
        namespace: str | None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        limit: int = 500,
        table: bool = False,
    ) -> dict[str, Any]:
        """Every matching object as one List (or one Table), following `continue` to the end."""
        query: list[tuple[str, str]] = []
        if label_selector:
            query.append(("labelSelector", label_selector))
        if field_selector:
            query.append(("fieldSelector", field_selector))
        if limit > 0:
            query.append(("limit", str(limit)))
        accept = f"{TABLE_ACCEPT},{JSON}" if table else JSON
        path = res.path(_ns(res, namespace))
        result: dict[str, Any] | None = None
        collected: list[Any] = []
        key = "items"
        token: str | None = None
        while True:
            page_query = query + ([("continue", token)] if token else [])
            page = _object(self.client.request("GET", path, query=page_query, accept=accept).json())
            if result is None:
                result = page
                key = "rows" if page.get("kind") == "Table" else "items"
            collected.extend(page.get(key) or [])
            metadata = page.get("metadata") or {}
            token = metadata.get("continue") or None
            if not token:
                break
        result[key] = collected
        metadata = result.setdefault("metadata", {})
        metadata.pop("continue", None)
        metadata.pop("remainingItemCount", None)
        return result

    def watch(
        self,
        res: Resource,
        namespace: str | None,
        *,
        resource_version: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        timeout_seconds: int | None = None,
        send_initial_events: bool = False,
        table: bool = False,
    ) -> EventStream:
        """A live stream of `{"type", "object"}` events (ADDED, MODIFIED, DELETED, BOOKMARK, ERROR).

        Without `resource_version` the stream starts with the current objects as ADDED. An ERROR
        event with a 410 Status means the revision is gone: list again and watch from there.
        Close the returned stream (or use it in a `with` block) to end the watch.
        """
        query: list[tuple[str, str]] = [("watch", "true"), ("allowWatchBookmarks", "true")]
        if resource_version is not None:
            query.append(("resourceVersion", resource_version))
        if label_selector:
            query.append(("labelSelector", label_selector))
        if field_selector:
            query.append(("fieldSelector", field_selector))
        if timeout_seconds is not None:
            query.append(("timeoutSeconds", str(timeout_seconds)))
        if send_initial_events:
            query += [("sendInitialEvents", "true"), ("resourceVersionMatch", "NotOlderThan")]
        accept = TABLE_ACCEPT if table else JSON
        return self.client.stream("GET", res.path(_ns(res, namespace)), query=query, accept=accept)

    # Instances' containers

    def logs(
        self,
        res: Resource,
        name: str,
        namespace: str,
        *,
        container: str | None = None,
        follow: bool = False,
        previous: bool = False,
        tail_lines: int | None = None,
        limit_bytes: int | None = None,
    ) -> StreamHandle:
        """A container's output from the `log` subresource; iterate `chunks()` as it arrives
        and `close()` to stop following. stdout comes before stderr (the node keeps them
        apart, so their interleaving is unknown)."""
        query = log_query(
            container=container,
            follow=follow,
            previous=previous,
            tail_lines=tail_lines,
            limit_bytes=limit_bytes,
        )
        path = res.path(_ns(res, namespace), name, "log")
        return self.client.open("GET", path, query=query, accept=LOG_ACCEPT)

    def exec(
        self,
        res: Resource,
        name: str,
        namespace: str,
        command: Sequence[str],
        *,
        container: str | None = None,
        timeout_seconds: int | None = None,
    ) -> ExecOutput:
        """Run `command` in the container (no input, no terminal) and return what it did."""
        query = exec_query(command, container=container, timeout_seconds=timeout_seconds)
        path = res.path(_ns(res, namespace), name, "exec")
        return ExecOutput.from_result(_object(self.client.request("POST", path, query=query).json()))

    def exec_session(
        self,
        res: Resource,
        name: str,
        namespace: str,
        command: Sequence[str],
        *,
        container: str | None = None,
        stdin: bool = False,
        tty: bool = False,
    ) -> WebSocket:
        """Open an interactive exec: a WebSocket speaking Kubernetes' remote command protocol
        (`remotecommand`), v5 if the server has it. Always over TCP (HTTP/3 has no upgrade)."""
        from hypermesh.client import remotecommand, websocket

        query = session_query(command, container=container, stdin=stdin, tty=tty)
        path = res.path(_ns(res, namespace), name, "exec")
        return websocket.connect(
            self.client.config, path, query,
            subprotocols=remotecommand.SUBPROTOCOLS, timeout=self.client.timeout, user_agent=self.client.user_agent,
        )  # fmt: skip

    # Writing

    def create(
        self,
        res: Resource,
        obj: dict[str, Any],
        namespace: str | None,
        *,
        dry_run: bool = False,
        field_manager: str = "nexus",
    ) -> dict[str, Any]:
        """Create `obj` (409 AlreadyExists if it does)."""
        query = [("fieldManager", field_manager), *_dry_run(dry_run)]
        path = res.path(_ns(res, _target_namespace(res, obj, namespace)))
        return _object(self.client.request("POST", path, query=query, body=obj).json())

    def apply(
        self,
        res: Resource,
        obj: dict[str, Any],
        namespace: str | None,
        *,
        field_manager: str = "nexus",
        force: bool = False,
        dry_run: bool = False,
    ) -> tuple[dict[str, Any], int]:
        """Server-side apply `obj`; returns the object and the status (201 created, else 200).

        A field owned by another manager gives ApiError 409 naming that manager, unless `force`.
        """
        query = [("fieldManager", field_manager), ("fieldValidation", "Strict")]
        if force:
            query.append(("force", "true"))
        query += _dry_run(dry_run)
        path = res.path(_target_namespace(res, obj, namespace), _name(obj))
        response = self.client.request(
            "PATCH",
            path,
            query=query,
            body=orjson.dumps(obj),
            content_type=PATCH_CONTENT_TYPES["apply"],
        )
        return _object(response.json()), response.status

    def patch(
        self,
        res: Resource,
        name: str,
        namespace: str | None,
        body: Any,
        *,
        patch_type: PatchType = "merge",
        subresource: str | None = None,
        field_manager: str = "nexus",
    ) -> dict[str, Any]:
        """Patch one object (or its subresource, such as `status`)."""
        content_type = PATCH_CONTENT_TYPES[patch_type]
        data = body if isinstance(body, bytes) else orjson.dumps(body)
        path = res.path(_ns(res, namespace), name, subresource)
        query = [("fieldManager", field_manager)]
        response = self.client.request(
            "PATCH", path, query=query, body=data, content_type=content_type
        )
        return _object(response.json())

    def replace(self, res: Resource, obj: dict[str, Any], namespace: str | None) -> dict[str, Any]:
        """Replace `obj` (PUT); its resourceVersion must be current or the server answers 409."""
        path = res.path(_target_namespace(res, obj, namespace), _name(obj))
        return _object(self.client.request("PUT", path, body=obj).json())

    def delete(
        self,
        res: Resource,
        name: str,
        namespace: str | None,
        *,
        propagation: str | None = None,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """Delete one object; returns what the server returns (the object, or a Status)."""
        body: dict[str, Any] | None = None
        if propagation is not None:
            body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation}
        path = res.path(_ns(res, namespace), name)
        return _object(
            self.client.request("DELETE", path, query=_dry_run(dry_run), body=body).json()
        )

    # The server itself

    def server_version(self) -> dict[str, Any]:
        """`/version`: gitVersion, major, minor, platform."""
        return _object(self.client.request("GET", "/version").json())


def log_query(
    *,
    container: str | None = None,
    follow: bool = False,
    previous: bool = False,
    tail_lines: int | None = None,
    limit_bytes: int | None = None,
) -> list[tuple[str, str]]:
    """The query of a `log` subresource request, with Kubernetes' PodLogOptions names."""
    query: list[tuple[str, str]] = []
    if container:
        query.append(("container", container))
    if follow:
        query.append(("follow", "true"))
    if previous:
        query.append(("previous", "true"))
    if tail_lines is not None:
        query.append(("tailLines", str(tail_lines)))
    if limit_bytes is not None:
        query.append(("limitBytes", str(limit_bytes)))
    return query


def exec_query(
    command: Sequence[str], *, container: str | None = None, timeout_seconds: int | None = None
) -> list[tuple[str, str]]:
    """The query of an `exec` subresource request: one `command` per argument, as kubectl."""
    if not command:
        raise ValueError("exec needs a command")
    query = [("command", arg) for arg in command]
    if container:
        query.append(("container", container))
    if timeout_seconds is not None:
        query.append(("timeoutSeconds", str(timeout_seconds)))
    return query


def session_query(
    command: Sequence[str], *, container: str | None = None, stdin: bool = False, tty: bool = False
) -> list[tuple[str, str]]:
    """The query of an interactive exec: the command, and which streams to join (with a
    terminal there is no separate stderr, as with kubectl)."""
    if not command:
        raise ValueError("exec needs a command")
    query = [("command", arg) for arg in command]
    if container:
        query.append(("container", container))
    query += [("stdin", _bool(stdin)), ("stdout", "true"), ("stderr", _bool(not tty)), ("tty", _bool(tty))]
    return query


def _bool(value: bool) -> str:
    return "true" if value else "false"


def _ns(res: Resource, namespace: str | None) -> str | None:
    """The namespace to put in a path: none at all for cluster-scoped kinds."""
    return namespace if res.namespaced else None


def _target_namespace(res: Resource, obj: dict[str, Any], namespace: str | None) -> str | None:
    """Where `obj` goes: the explicit namespace, else the one it names itself."""
    if not res.namespaced:
        return None
    if namespace is not None:
        return namespace
    named = (obj.get("metadata") or {}).get("namespace")
    if not named:
        raise ValueError(
            f'{res.qualified_name} "{_name(obj)}" needs a namespace: set metadata.namespace '
            "or pass one"
        )
    return str(named)


def _name(obj: dict[str, Any]) -> str:
    name = (obj.get("metadata") or {}).get("name")
    if not name:
        raise ValueError("the object has no metadata.name")
    return str(name)


def _dry_run(enabled: bool) -> list[tuple[str, str]]:
    return [("dryRun", "All")] if enabled else []


def _object(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ClientError(f"expected a JSON object from the server, got {type(value).__name__}")
    return value
