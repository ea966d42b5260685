"""The node agent's image routes: `/images...` on its endpoint, over this node's image store.

Images are per node (there is no registry), so users manage each node's store through the API
server, which relays `.../nodes/NAME/proxy/images...` here (`hypermesh/api/nodeproxy.py`); the
endpoint has authenticated the caller (the API server or an administrator) before `serve` runs.

The contract:

- `GET /images` answers an `ImageList`:
  `{"apiVersion": "hypermesh.io/v1", "kind": "ImageList", "items": [ITEM...]}`, items sorted by
  name, one per name (two names of one image are two items with the same digest). An ITEM is
  `{"node", "name", "digest", "sizeBytes", "created"?, "layers": [diff_id...],
  "config": {"entrypoint", "cmd", "env", "workingDir", "user"}}`; `created` is the image's own
  claim and absent when it makes none (builds make none, so a directory always builds to the
  same digest). `GET /images/REF` answers the same list with the one image REF resolves to.
- `POST /images/import?filename=NAME` with an OCI image layout or `docker save` tarball (plain
  or gzip) as the body answers 201 and an `ImageList` of what was imported. `filename` is the
  name of the user's file: messages name it, and an image the archive leaves unnamed is filed
  under it (`web.tar` -> `web:latest`).
- `POST /images/build?tag=NAME[&entrypoint=ARG...][&cmd=ARG...][&env=K=V...][&workdir=DIR]
  [&user=U][&filename=NAME]` with a tar of a directory's contents (plain or gzip) as the body
  answers 201 and an `ImageList` of the one image built, as `ImageStore.build` builds it: one
  layer, owned by root. Repeated parameters are list items in order.
- `DELETE /images/REF` drops the name REF (for a digest, every name of that image), collects
  what nothing needs any more, and answers an `ImageRemoval`: `{"apiVersion":
  "hypermesh.io/v1", "kind": "ImageRemoval", "node", "names", "digest", "freedBytes"}`.
  It answers 409 instead if an Instance on this node still needs what would go: a container
  whose `image` is a dropped name, or (when no name of the image is left) whose image or
  running root filesystem is that image (Instances that finished do not count). The Instances
  come from the API server; if it cannot list them, nothing is removed (503). The check and
  the removal are two steps, so an Instance created between them is not protected; its
  container then waits in ImageNotFound.
- Errors are Kubernetes `Status` objects (the endpoint renders `ImageRouteError`): 400 for a
  bad parameter or a bad archive (naming the member and what is wrong; the store is left as it
  was), 404 for an unknown image, 405 for a wrong method, 409 as above, 413 past the upload
  cap, 503 as above, 507 when the node's disk cannot take the upload.

Uploads are streamed to an unnamed temporary file (O_TMPFILE) in the agent's data directory,
never held in memory, and vanish even if the agent dies mid-way. They are capped at
`MAX_UPLOAD` (8 GiB: bigger than any image these nodes run, small enough that one upload
cannot fill a node's disk by surprise); an upload needs about twice its size free on the disk
(the archive, then its blobs and unpacked layers), and one announcing more is refused before
a byte is read. All disk work runs in threads, never on the agent's event loop.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any, Literal, TypeVar
from urllib.parse import parse_qsl

import orjson

from hypermesh.client.errors import ClientError
from hypermesh.client.kinds import INSTANCES
from hypermesh.pki.identity import Identity
from hypermesh.resources.meta import Model
from hypermesh.runtime import imageformat, images, rootfs
from hypermesh.runtime.supervisor import NodeServices
from hypermesh.transport.asgi import Receive, Scope, Send

log = logging.getLogger(__name__)

# Largest archive or build context accepted in one request.
MAX_UPLOAD = 8 << 30
# Uploads are written to disk in pieces of about this size (one thread hop each).
_WRITE_BATCH = 1 << 20
# Where uploads wait, under the agent's data directory.
_UPLOAD_DIR = "uploads"
_TERMINAL_PHASES = ("Succeeded", "Failed")
_IMPORT_PARAMS = ("filename",)
_BUILD_PARAMS = ("tag", "entrypoint", "cmd", "env", "workdir", "user", "filename")
_T = TypeVar("_T")


class ImageRouteError(Exception):
    """An answer other than success: HTTP code, Kubernetes Status reason, message."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message


# The wire format


class ImageRunConfig(Model):
    """How a container of the image runs unless its spec says otherwise."""

    entrypoint: list[str]
    cmd: list[str]
    env: list[str]
    working_dir: str
    user: str


class ImageItem(Model):
    """One name of one image in a node's store."""

    node: str
    name: str
    digest: str
    size_bytes: int
    created: str | None = None
    layers: list[str]
    config: ImageRunConfig

    @classmethod
    def of(cls, node: str, image: images.Image) -> ImageItem:
        """The wire form of a stored image."""
        config = image.config
        return cls(
            node=node,
            name=image.name,
            digest=image.digest,
            size_bytes=image.size,
            created=image.created,
            layers=list(image.layer_digests),
            config=ImageRunConfig(
                entrypoint=list(config.entrypoint),
                cmd=list(config.cmd),
                env=list(config.env),
                working_dir=config.working_dir,
                user=config.user,
            ),
        )


class ImageList(Model):
    """The answer to a listing, an import or a build."""

    api_version: Literal["hypermesh.io/v1"] = "hypermesh.io/v1"
    kind: Literal["ImageList"] = "ImageList"
    items: list[ImageItem]


class ImageRemoval(Model):
    """The answer to a DELETE: which names went, from which image, and the bytes freed."""

    api_version: Literal["hypermesh.io/v1"] = "hypermesh.io/v1"
    kind: Literal["ImageRemoval"] = "ImageRemoval"
    node: str
    names: list[str]
    digest: str
    freed_bytes: int


# Routing


async def serve(
    services: NodeServices, scope: Scope, receive: Receive, send: Send, identity: Identity, path: str
) -> None:
    """Answer one request under `/images` (`path` is what follows `/images`)."""
    method = scope["method"]
    query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
    rest = path.strip("/")
    if rest in ("import", "build"):
        if method != "POST":
            raise _method(f"/images/{rest} takes POST with the archive as the body")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if rest == "import":
            answer = await _import(services, receive, headers, query, identity)
        else:
            answer = await _build(services, receive, headers, query, identity)
        await _send_json(send, 201, answer.to_dict())
        return
    if not rest:
        if method != "GET":
            raise _method("/images is read with GET; import with POST /images/import")
        found = await _in_thread(services.images.list)
        await _send_json(send, 200, _listing(services, found).to_dict())
        return
    if method == "GET":
        image = await _in_thread(services.images.resolve, rest)
        await _send_json(send, 200, _listing(services, [image]).to_dict())
    elif method == "DELETE":
        removal = await _remove(services, rest, identity)
        await _send_json(send, 200, removal.to_dict())
    else:
        raise _method(f"an image is read with GET and removed with DELETE, not {method}")


def _listing(services: NodeServices, found: list[images.Image]) -> ImageList:
    return ImageList(items=[ImageItem.of(services.node_name, image) for image in found])


# Import and build


async def _import(
    services: NodeServices,
    receive: Receive,
    headers: dict[str, str],
    query: list[tuple[str, str]],
    identity: Identity,
) -> ImageList:
    params = _params(query, _IMPORT_PARAMS)
    label = _label(params, "upload.tar")
    upload = await _receive_upload(services, receive, headers)
    try:
        found = await _in_thread(services.images.import_file, upload, label=label)
    finally:
        await asyncio.to_thread(upload.close)
    log.info("imported %s for %s: %s", label, identity.user, ", ".join(i.name for i in found))
    return _listing(services, found)


async def _build(
    services: NodeServices,
    receive: Receive,
    headers: dict[str, str],
    query: list[tuple[str, str]],
    identity: Identity,
) -> ImageList:
    params = _params(query, _BUILD_PARAMS)
    tags = params.get("tag") or []
    if len(tags) != 1 or not tags[0]:
        raise _bad_request("a build needs exactly one tag=NAME (the name to file the image under)")
    tag = tags[0]
    label = _label(params, "build context")
    env = params.get("env", [])
    working_dir = _single(params, "workdir") or "/"
    # Checked before the upload, so a typo costs no transfer.
    try:
        imageformat.checked_name(tag, "tag")
    except imageformat.ImageError as exc:
        raise _bad_request(str(exc)) from None
    for entry in env:
        if "=" not in entry or entry.startswith("="):
            raise _bad_request(f"env={entry!r} is not KEY=VALUE")
    if not working_dir.startswith("/"):
        raise _bad_request(f"workdir={working_dir!r} must be an absolute path")
    upload = await _receive_upload(services, receive, headers)
    try:
        image = await _in_thread(
            services.images.build_from_tar,
            upload,
            tag,
            label=label,
            entrypoint=params.get("entrypoint", []),
            cmd=params.get("cmd", []),
            env=env,
            working_dir=working_dir,
            user=_single(params, "user") or "",
        )
    finally:
        await asyncio.to_thread(upload.close)
    log.info("built %s (%s) for %s", image.name, image.digest, identity.user)
    return _listing(services, [image])


async def _receive_upload(
    services: NodeServices, receive: Receive, headers: dict[str, str]
) -> IO[bytes]:
    """The request body in an unnamed temporary file, rewound; refuses what is too big."""
    directory = services.data_dir / _UPLOAD_DIR
    declared = _content_length(headers)
    if declared is not None and declared > MAX_UPLOAD:
        raise _too_large(f"the upload announces {declared} bytes")
    await asyncio.to_thread(directory.mkdir, mode=0o700, parents=True, exist_ok=True)
    if declared is not None:
        free = (await asyncio.to_thread(shutil.disk_usage, directory)).free
        if free < 2 * declared:
            raise _no_space(
                services, f"{declared} bytes announced need about {2 * declared} free, but {free} are"
            )
    upload: IO[bytes] = await asyncio.to_thread(tempfile.TemporaryFile, dir=directory)
    try:
        size = 0
        batch: list[bytes] = []
        batched = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _bad_request(f"the client went away after {size} bytes of the upload")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_UPLOAD:
                raise _too_large(f"the upload passed {MAX_UPLOAD} bytes")
            if chunk:
                batch.append(chunk)
                batched += len(chunk)
            more = bool(message.get("more_body", False))
            if batched >= _WRITE_BATCH or (batch and not more):
                await _write(services, upload, b"".join(batch))
                batch, batched = [], 0
            if not more:
                break
        if size == 0:
            raise _bad_request("the request has no body: send the archive (or the tar of the directory) as the body")
        await asyncio.to_thread(upload.seek, 0)
    except BaseException:
        await asyncio.to_thread(upload.close)
        raise
    return upload


async def _write(services: NodeServices, upload: IO[bytes], data: bytes) -> None:
    try:
        await asyncio.to_thread(upload.write, data)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _no_space(services, "the disk filled up while the upload was written") from None
        raise


# Removal


async def _remove(services: NodeServices, reference: str, identity: Identity) -> ImageRemoval:
    store = services.images
    try:
        parsed = imageformat.parse_reference(reference)
    except imageformat.ImageError as exc:
        raise _bad_request(str(exc)) from None
    names = await _in_thread(store.names)
    if parsed.digest is not None:
        doomed = {name for name, digest in names.items() if digest == parsed.digest}
    else:
        doomed = {parsed.name} if parsed.name in names else set()
    if doomed:
        digest = names[next(iter(doomed))]
        orphaned = not any(d == digest and n not in doomed for n, d in names.items())
        users = await _users(services, doomed, digest, orphaned=orphaned)
        if users:
            raise ImageRouteError(
                409, "Conflict",
                f"image {reference!r} ({digest}) is in use on node {services.node_name!r} by "
                f"{'; '.join(users)}: delete those first",
            )  # fmt: skip
    # A reference with no name goes to the store anyway, whose ImageNotFound lists what is known.
    removal = await _in_thread(store.remove, reference)
    log.info("removed %s (%s) for %s, %d bytes freed", ", ".join(removal.names), removal.digest, identity.user, removal.freed)
    return ImageRemoval(
        node=services.node_name, names=list(removal.names), digest=removal.digest, freed_bytes=removal.freed
    )


async def _users(services: NodeServices, doomed: set[str], digest: str, *, orphaned: bool) -> list[str]:
    """Who on this node needs what removing `doomed` (names of `digest`) takes away."""
    users: dict[str, str] = {}
    try:
        listed = await services.client.list(INSTANCES, None, field_selector=f"spec.nodeName={services.node_name}")
    except (ClientError, OSError) as exc:
        # Removing what may be in use cannot be undone; refusing for now can.
        raise ImageRouteError(
            503, "ServiceUnavailable",
            f"cannot tell whether an Instance on node {services.node_name!r} uses the image "
            f"(listing them failed: {exc}); nothing was removed, try again",
        ) from None  # fmt: skip
    for instance in listed.get("items") or []:
        if (instance.get("status") or {}).get("phase") in _TERMINAL_PHASES:
            continue
        meta = instance.get("metadata") or {}
        running = {
            status.get("name"): status.get("imageID")
            for status in (instance.get("status") or {}).get("containerStatuses") or []
        }
        for container in (instance.get("spec") or {}).get("containers") or []:
            if _needs(str(container.get("image", "")), running.get(container.get("name")), doomed, digest, orphaned):
                key = str(meta.get("uid", ""))
                users[key] = f"instance {meta.get('namespace')}/{meta.get('name')} (container {container.get('name')})"
    # A container whose Instance is already gone (a forced deletion) may still be running
    # until the agent notices; its root filesystem says which image it runs. (Layers idmapped
    # for a user namespace are mounted under the container's own directory, so such a root
    # filesystem is not recognised here; its Instance, while it exists, is.)
    if orphaned:
        try:
            image = await asyncio.to_thread(services.images.resolve, digest)
        except (images.ImageNotFound, imageformat.ImageError):
            # A damaged image mounts nowhere; removing it is the cure.
            return sorted(users.values())
        for uid, container in await asyncio.to_thread(_mounted_users, services.data_dir, image.layers):
            users.setdefault(uid, f"a running container of instance uid {uid} (container {container})")
    return sorted(users.values())


def _needs(reference: str, image_id: str | None, doomed: set[str], digest: str, orphaned: bool) -> bool:
    """Whether a container asking for `reference` (running `image_id`) loses its image."""
    try:
        parsed = imageformat.parse_reference(reference)
    except imageformat.ImageError:
        return False
    if parsed.digest is None and parsed.name in doomed:
        return True
    return orphaned and digest in (parsed.digest, image_id)


def _mounted_users(data_dir: Path, layers: tuple[Path, ...]) -> list[tuple[str, str]]:
    """(Instance uid, container) of every root filesystem under `data_dir` mounted from
    exactly `layers`, read from this process's mount table."""
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as mountinfo:
        return overlay_users(mountinfo, data_dir, layers)


def overlay_users(mountinfo: Iterable[str], data_dir: Path, layers: tuple[Path, ...]) -> list[tuple[str, str]]:
    """(Instance uid, container) of every overlay in `mountinfo` lines mounted at
    `<data_dir>/instances/<uid>/<container>/rootfs` whose lower layers are `layers`.

    `rootfs.mount_rootfs` lists the layers top-most first, and a read-only rootfs of one layer
    adds an empty directory below them, so the image's layers are a prefix of `lowerdir`.
    """
    wanted = [str(layer) for layer in reversed(layers)]
    instances = str(data_dir.absolute() / "instances") + "/"
    found: list[tuple[str, str]] = []
    for line in mountinfo:
        fields, _, tail = line.rstrip("\n").partition(" - ")
        parts, extra = fields.split(" "), tail.split(" ")
        if len(parts) < 5 or len(extra) < 3 or extra[0] != "overlay":
            continue
        point = rootfs.unescape_mountinfo(parts[4])
        options = dict(option.partition("=")[::2] for option in extra[2].split(","))
        lower = [rootfs.unescape_mountinfo(path) for path in options.get("lowerdir", "").split(":")]
        if not point.startswith(instances) or lower[: len(wanted)] != wanted:
            continue
        uid, _, rest = point[len(instances) :].partition("/")
        found.append((uid, rest.partition("/")[0]))
    return found


# Parameters and answers


def _params(query: list[tuple[str, str]], allowed: tuple[str, ...]) -> dict[str, list[str]]:
    params: dict[str, list[str]] = {}
    for key, value in query:
        if key not in allowed:
            raise _bad_request(f"unknown parameter {key!r}: this request takes {', '.join(allowed)}")
        params.setdefault(key, []).append(value)
    return params


def _single(params: dict[str, list[str]], name: str) -> str | None:
    values = params.get(name) or []
    if len(values) > 1:
        raise _bad_request(f"{name} is given {len(values)} times; give it once")
    return values[0] if values else None


def _label(params: dict[str, list[str]], default: str) -> str:
    """The user's file name for messages: the last path component, printable, short."""
    name = (_single(params, "filename") or "").replace("\\", "/").rstrip("/").rpartition("/")[2]
    name = "".join(ch for ch in name if ch.isprintable())[:200]
    return name or default


def _content_length(headers: dict[str, str]) -> int | None:
    value = headers.get("content-length")
    if value is None:
        return None
    if not value.strip().isdigit():
        raise _bad_request(f"Content-Length {value!r} is not a byte count")
    return int(value)


async def _in_thread(call: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    """Run store work in a thread, its errors as the Status a user can act on."""
    try:
        return await asyncio.to_thread(call, *args, **kwargs)
    except images.ImageNotFound as exc:
        raise ImageRouteError(404, "NotFound", str(exc).removeprefix("ImageNotFound: ")) from None
    except imageformat.ImageError as exc:
        raise _bad_request(str(exc)) from None
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ImageRouteError(507, "InsufficientStorage", f"the node's image store is out of space: {exc}") from None
        raise


async def _send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    data = orjson.dumps(body)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


def _bad_request(message: str) -> ImageRouteError:
    return ImageRouteError(400, "BadRequest", message)


def _method(message: str) -> ImageRouteError:
    return ImageRouteError(405, "MethodNotAllowed", message)


def _too_large(what: str) -> ImageRouteError:
    return ImageRouteError(
        413, "RequestEntityTooLarge",
        f"{what}; a node accepts at most {MAX_UPLOAD} bytes ({MAX_UPLOAD >> 30} GiB) in one upload",
    )  # fmt: skip


def _no_space(services: NodeServices, why: str) -> ImageRouteError:
    return ImageRouteError(
        507, "InsufficientStorage", f"node {services.node_name!r} has too little disk for this upload: {why}"
    )

