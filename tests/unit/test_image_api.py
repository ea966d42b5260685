"""The node agent's image routes and the API server's node proxy to them, without root.

An API server over a memory store with a cluster CA, a real agent endpoint on 127.0.0.1 over
TLS with a real image store, and requests sent the way clients send them: through the API
server's ASGI app (in-process, as the admin), with bodies in one piece or in several chunks
without a Content-Length (which the proxy relays chunked). Archives are built here with the
helpers of test_runtime_images, so every test knows which digest should come out and which
corruption it planted.
"""

from __future__ import annotations

import asyncio
import io
import json
import tarfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest

from hypermesh.api.app import APIServer
from hypermesh.client.aio import AsyncClient
from hypermesh.client.kinds import INSTANCES, NODES
from hypermesh.pki import CertificateAuthority, Identity
from hypermesh.runtime import endpoint, imageapi
from hypermesh.runtime.images import ImageStore
from hypermesh.runtime.supervisor import NodeServices
from hypermesh.store.memory import MemoryStore
from tests.unit.test_runtime_images import Spec, base_layer, oci_archive, sha256, top_layer

ADMIN = Identity("admin", ("system:masters",))
PROXY = "/apis/hypermesh.io/v1/nodes/n1/proxy"


@dataclass
class Node:
    server: APIServer
    admin: AsyncClient
    agent: endpoint.Endpoint
    store: ImageStore
    data_dir: Path


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    ca = CertificateAuthority.create(tmp_path / "pki")
    server = APIServer(MemoryStore(), pki_dir=tmp_path / "pki")
    await server.start()
    admin = AsyncClient.in_process(server, ADMIN)
    node_client = AsyncClient.in_process(server, Identity("system:node:n1", ("system:nodes",)))
    data_dir = tmp_path / "agent"
    store = ImageStore(data_dir / "images")
    services = NodeServices(
        client=node_client, node_name="n1", data_dir=data_dir, images=store,
        runtime=cast(Any, None), network=cast(Any, None), host_ip="127.0.0.1",
    )  # fmt: skip
    agent = await endpoint.start(services, lambda name, ns: None, client_ca_pem=ca.cert_pem, host="127.0.0.1")
    await admin.create(NODES, {"apiVersion": "hypermesh.io/v1", "kind": "Node", "metadata": {"name": "n1"}})
    await admin.update_status(NODES, "n1", None, {
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
        "daemonEndpoints": {"agentEndpoint": {"port": agent.port, "certificateHash": agent.serving.hash}},
    })  # fmt: skip
    try:
        yield Node(server, admin, agent, store, data_dir)
    finally:
        await agent.close()
        await admin.aclose()
        await server.stop()


async def call(
    app: Any,
    method: str,
    path: str,
    *,
    query: str = "",
    chunks: Sequence[bytes] = (),
    length: bool = True,
    disconnect_after: int | None = None,
) -> tuple[int, dict[str, Any]]:
    """One request to an ASGI app as the admin; the body arrives as `chunks`, one message each,
    announced with a Content-Length unless `length` is False; `disconnect_after` chunks, the
    client goes away."""
    headers = [(b"content-type", b"application/octet-stream")]
    if length:
        headers.append((b"content-length", str(sum(map(len, chunks))).encode()))
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "https", "path": path, "raw_path": path.encode(), "query_string": query.encode(),
        "root_path": "", "headers": headers, "client": None, "server": None,
        "hypermesh.identity": ADMIN,
    }  # fmt: skip
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": chunk, "more_body": index < len(chunks) - 1}
        for index, chunk in enumerate(chunks)
    ] or [{"type": "http.request", "body": b"", "more_body": False}]
    if disconnect_after is not None:
        messages = [{**m, "more_body": True} for m in messages[:disconnect_after]] + [{"type": "http.disconnect"}]
    answered = asyncio.Event()

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await answered.wait()
        return {"type": "http.disconnect"}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    answered.set()
    if not sent:
        return 0, {}
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return int(sent[0]["status"]), json.loads(body)


def context_tar(files: dict[str, bytes], *, modes: dict[str, int] | None = None) -> bytes:
    """A tar of a build directory's contents, as `nexus image build` packs one."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for directory in sorted({name.rpartition("/")[0] for name in files} - {""}):
            info = tarfile.TarInfo(directory)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1_700_000_000
            tar.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime, info.uid = len(data), (modes or {}).get(name, 0o644), 1_700_000_000, 1000
            tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


def split(data: bytes, parts: int) -> list[bytes]:
    step = len(data) // parts + 1
    return [data[i : i + step] for i in range(0, len(data), step)]


SITE = {"run.sh": b"#!/bin/sh\nexec httpd -f\n", "www/index.html": b"<h1>hi</h1>\n"}
BUILD_QUERY = "tag=site:v1&entrypoint=/run.sh&entrypoint=-v&env=PORT=8080&workdir=/www&filename=site/"


# Through the API server


async def test_a_build_streams_through_the_proxy_and_lists(node: Node) -> None:
    tar = context_tar(SITE, modes={"run.sh": 0o755})
    status, answer = await call(node.server, "POST", f"{PROXY}/images/build", query=BUILD_QUERY, chunks=split(tar, 3), length=False)
    assert status == 201, answer
    [item] = answer["items"]
    assert (answer["kind"], item["node"], item["name"]) == ("ImageList", "n1", "site:v1")
    assert item["config"] == {"entrypoint": ["/run.sh", "-v"], "cmd": [], "env": ["PORT=8080"], "workingDir": "/www", "user": ""}
    assert "created" not in item and len(item["layers"]) == 1
    [root] = node.store.resolve("site:v1").layers
    assert (root / "www" / "index.html").read_bytes() == b"<h1>hi</h1>\n"
    assert (root / "run.sh").stat().st_mode & 0o777 == 0o755

    # The same tar builds to the same image, whether it comes in pieces or whole.
    query = BUILD_QUERY.replace("site:v1", "site:v2")
    status, again = await call(node.server, "POST", f"{PROXY}/images/build", query=query, chunks=[tar])
    assert (status, again["items"][0]["digest"]) == (201, item["digest"])
    _, _, body = await node.admin.request("GET", f"{PROXY}/images")
    assert [(i["name"], i["digest"]) for i in json.loads(body)["items"]] == [("site:v1", item["digest"]), ("site:v2", item["digest"])]


async def test_an_oci_archive_imports_through_the_proxy(node: Node, tmp_path: Path) -> None:
    spec = Spec([base_layer(), top_layer()], entrypoint=["/bin/sh", "-c"])
    archive = oci_archive(tmp_path / "demo.tar", {"1.0": spec}).read_bytes()
    status, answer = await call(node.server, "POST", f"{PROXY}/images/import", query="filename=/home/me/demo.tar", chunks=split(archive, 4))
    assert status == 201, answer
    [item] = answer["items"]
    assert (item["name"], item["digest"]) == ("demo:1.0", sha256(spec.manifest()))
    assert item["layers"] == [layer.diff_id for layer in spec.layers]
    assert item["sizeBytes"] == len(spec.manifest()) + len(spec.config()) + sum(len(layer.blob) for layer in spec.layers)
    _, _, body = await node.admin.request("GET", f"{PROXY}/images/demo:1.0")
    assert json.loads(body)["items"] == [item]
    # Nothing of the upload is left in the agent's data directory.
    assert not list((node.data_dir / "uploads").iterdir())


async def test_a_corrupt_archive_is_refused_precisely_and_changes_nothing(node: Node, tmp_path: Path) -> None:
    await node.admin.request("POST", f"{PROXY}/images/build", query=[("tag", "keep:1")], body=context_tar(SITE), content_type="application/octet-stream")
    before = sorted(p.relative_to(node.store.root) for p in node.store.root.rglob("*") if ".lock" not in p.name)
    spec = Spec([base_layer(), top_layer()])
    bad = spec.layers[1].digest
    archive = oci_archive(tmp_path / "demo.tar", {"1": spec}, tamper=bad).read_bytes()
    status, answer = await call(node.server, "POST", f"{PROXY}/images/import", query="filename=demo.tar", chunks=[archive])
    assert (status, answer["reason"]) == (400, "BadRequest")
    assert answer["message"].startswith(f"demo.tar: blobs/sha256/{bad[7:]}: content has digest sha256:")
    assert f"but {bad} was expected" in answer["message"]
    after = sorted(p.relative_to(node.store.root) for p in node.store.root.rglob("*") if ".lock" not in p.name)
    assert after == before
    assert [image.name for image in node.store.list()] == ["keep:1"]


async def test_bad_requests_say_what_is_wrong(node: Node) -> None:
    tar = context_tar(SITE)

    async def refused(method: str, path: str, query: str = "", body: bytes = tar) -> tuple[int, str]:
        status, answer = await call(node.server, method, path, query=query, chunks=[body] if body else [])
        return status, answer.get("message", "")

    assert await refused("POST", f"{PROXY}/images/build") == (400, "a build needs exactly one tag=NAME (the name to file the image under)")
    status, message = await refused("POST", f"{PROXY}/images/build", "tag=Bad:1")
    assert status == 400 and "'Bad' is not a valid name component" in message
    assert await refused("POST", f"{PROXY}/images/build", "tag=x&env=NOVALUE") == (400, "env='NOVALUE' is not KEY=VALUE")
    assert await refused("POST", f"{PROXY}/images/build", "tag=x&workdir=www") == (400, "workdir='www' must be an absolute path")
    status, message = await refused("POST", f"{PROXY}/images/import", "x=1")
    assert (status, message) == (400, "unknown parameter 'x': this request takes filename")
    assert (await refused("POST", f"{PROXY}/images/import", body=b""))[0] == 400
    status, message = await refused("POST", f"{PROXY}/images/build", "tag=x&filename=ctx/", body=context_tar({"etc/.wh.passwd": b""}))
    assert status == 400 and message.startswith("ctx: etc/.wh.passwd: names starting with '.wh.' are OCI whiteout markers")
    status, message = await refused("POST", f"{PROXY}/images/import", "filename=junk.tar", body=b"not a tar at all" * 100)
    assert status == 400 and message.startswith("junk.tar: not a tar archive")
    assert (await refused("GET", f"{PROXY}/images/import"))[0] == 405
    status, message = await refused("PUT", f"{PROXY}/images")
    assert status == 405 and "not PUT" in message
    status, message = await refused("GET", f"{PROXY}/configz")
    assert status == 404 and message.startswith('the node proxy relays only images/... to the node agent, not "/configz"')
    status, message = await refused("GET", "/apis/hypermesh.io/v1/nodes/nope/proxy/images")
    assert (status, message) == (404, 'nodes.hypermesh.io "nope" not found')
    status, message = await refused("DELETE", f"{PROXY}/images/nope:1")
    assert (status, message) == (404, "no image 'nope:1' in this node's store (known: none)")


async def test_removal_refuses_what_an_instance_needs_then_frees_it(node: Node) -> None:
    for tag in ("site:v1", "site:v2"):
        await node.admin.request("POST", f"{PROXY}/images/build", query=[("tag", tag)], body=context_tar(SITE), content_type="application/octet-stream")
    image = node.store.resolve("site:v1")
    await node.admin.create(INSTANCES, {
        "apiVersion": "hypermesh.io/v1", "kind": "Instance", "metadata": {"name": "web", "namespace": "default"},
        "spec": {"nodeName": "n1", "containers": [{"name": "main", "image": "site:v2"}]},
    })  # fmt: skip

    # Another name stays, and nobody asks for this one: only the name goes.
    status, answer = await call(node.server, "DELETE", f"{PROXY}/images/site:v1")
    assert (status, answer["names"], answer["digest"], answer["freedBytes"]) == (200, ["site:v1"], image.digest, 0)
    status, answer = await call(node.server, "DELETE", f"{PROXY}/images/{image.digest}")
    assert (status, answer["reason"]) == (409, "Conflict")
    assert answer["message"] == (
        f"image '{image.digest}' ({image.digest}) is in use on node 'n1' by instance default/web (container main): "
        "delete those first"
    )
    # A finished Instance needs its image no more.
    await node.admin.update_status(INSTANCES, "web", "default", {"phase": "Succeeded"})
    status, answer = await call(node.server, "DELETE", f"{PROXY}/images/site:v2")
    assert (status, answer["kind"], answer["names"]) == (200, "ImageRemoval", ["site:v2"])
    assert answer["freedBytes"] > 0
    assert not image.layers[0].exists()
    assert not list((node.store.root / "blobs" / "sha256").iterdir())


# At the agent


async def test_uploads_are_capped_and_a_vanished_client_leaves_nothing(node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    app = node.agent.app
    monkeypatch.setattr(imageapi, "MAX_UPLOAD", 1000)
    status, answer = await call(app, "POST", "/images/import", chunks=[b"x" * 2000])
    assert (status, answer["reason"]) == (413, "RequestEntityTooLarge")
    assert answer["message"].startswith("the upload announces 2000 bytes; a node accepts at most 1000 bytes")
    status, answer = await call(app, "POST", "/images/import", chunks=[b"x" * 600] * 3, length=False)
    assert (status, answer["message"][:34]) == (413, "the upload passed 1000 bytes; a no")
    status, answer = await call(app, "POST", "/images/import", chunks=[b"x" * 300] * 3, length=False, disconnect_after=2)
    assert (status, answer["message"]) == (400, "the client went away after 600 bytes of the upload")
    assert not list((node.data_dir / "uploads").iterdir())
    assert not list((node.store.root / "tmp").iterdir())


def test_mounted_root_filesystems_are_matched_by_their_layers(tmp_path: Path) -> None:
    layers = (tmp_path / "images/layers/aa", tmp_path / "images/layers/bb")
    lower = f"{layers[1]}:{layers[0]}"
    rootfs = tmp_path / "instances/uid-1/main/rootfs"
    lines = [
        f"55 27 0:48 / {rootfs} rw,relatime - overlay overlay rw,lowerdir={lower},upperdir=/u,workdir=/w,uuid=on\n",
        # A read-only rootfs: the image's layers, then an empty directory.
        f"56 27 0:49 / {tmp_path}/instances/uid-2/side/rootfs ro - overlay overlay ro,lowerdir={lower}:/e\n",
        # Another image on top of these layers is not this image.
        f"57 27 0:50 / {tmp_path}/instances/uid-3/main/rootfs rw - overlay overlay rw,lowerdir=/x:{lower}\n",
        f"58 27 0:51 / /elsewhere rw - overlay overlay rw,lowerdir={lower}\n",
        "22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n",
    ]
    assert imageapi.overlay_users(lines, tmp_path, layers) == [("uid-1", "main"), ("uid-2", "side")]
