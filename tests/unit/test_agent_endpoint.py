"""The node agent's logs and exec endpoint and the API server's proxy to it, without root.

The log reader is tested on plain files (history, tails across streams and rotated files,
follows that see appends, rotations and the end of the run). The trust model is tested on
real TLS: an API server over a memory store with a cluster CA, an agent endpoint on 127.0.0.1
with a fake container runtime, and the requests going through the proxy as clients send them.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import ssl
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest

from hypermesh.api import proxy
from hypermesh.api.app import APIServer
from hypermesh.client.aio import AsyncClient
from hypermesh.client.errors import ApiError
from hypermesh.client.kinds import INSTANCES, NODES
from hypermesh.pki import CertificateAuthority, Identity
from hypermesh.runtime import endpoint, logfiles, runc
from hypermesh.runtime.supervisor import NodeServices
from hypermesh.store.memory import MemoryStore

ADMIN = Identity("admin", ("system:masters",))


# -- certificate pinning ------------------------------------------------------------------------


def test_a_pin_accepts_only_the_certificate_it_names(tmp_path: Path) -> None:
    serving = endpoint.ensure_serving_certificate(tmp_path, node_name="n1", addresses=["127.0.0.1"])
    assert serving.hash == "sha256:" + hashlib.sha256(serving.der).hexdigest()
    proxy.check_pin(serving.der, serving.hash)

    other = endpoint.ensure_serving_certificate(tmp_path / "other", node_name="n1")
    with pytest.raises(proxy.PinMismatch, match="presented a certificate with sha256:"):
        proxy.check_pin(other.der, serving.hash)
    with pytest.raises(proxy.PinMismatch, match="publishes no certificate hash"):
        proxy.check_pin(serving.der, None)
    with pytest.raises(proxy.PinMismatch, match="not sha256:<64 hex digits>"):
        proxy.check_pin(serving.der, serving.hash.upper())
    with pytest.raises(proxy.PinMismatch, match="no certificate"):
        proxy.check_pin(None, serving.hash)


def test_the_serving_certificate_survives_restarts_and_is_replaced_when_broken(tmp_path: Path) -> None:
    first = endpoint.ensure_serving_certificate(tmp_path, node_name="n1")
    assert endpoint.ensure_serving_certificate(tmp_path, node_name="n1").hash == first.hash
    assert (tmp_path / "serving.key").stat().st_mode & 0o777 == 0o600
    (tmp_path / "serving.key").write_bytes(b"garbage")
    assert endpoint.ensure_serving_certificate(tmp_path, node_name="n1").hash != first.hash


def test_only_the_api_server_and_administrators_may_call_the_endpoint() -> None:
    assert endpoint.allowed(Identity("system:apiserver"))
    assert endpoint.allowed(Identity("alice", ("system:masters",)))
    assert not endpoint.allowed(Identity("system:node:n2", ("system:nodes",)))
    assert not endpoint.allowed(None)


# -- reading logs -------------------------------------------------------------------------------


def write(workdir: Path, stream: str, data: bytes, *, suffix: str = "") -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    with (workdir / f"{stream}.log{suffix}").open("ab") as handle:
        handle.write(data)


async def collect(workdir: Path, options: endpoint.LogOptions) -> bytes:
    return b"".join([chunk async for chunk in endpoint.read_logs(workdir, options, stop=asyncio.Event())])


async def test_history_is_stdout_then_stderr_and_tail_counts_lines_of_both(tmp_path: Path) -> None:
    write(tmp_path, "stdout", b"a\nb\nc")  # a last line without its newline
    write(tmp_path, "stderr", b"x\ny\n")
    assert await collect(tmp_path, endpoint.LogOptions()) == b"a\nb\nc\nx\ny\n"
    assert await collect(tmp_path, endpoint.LogOptions(tail_lines=3)) == b"c\nx\ny\n"
    assert await collect(tmp_path, endpoint.LogOptions(tail_lines=0)) == b""
    assert await collect(tmp_path, endpoint.LogOptions(tail_lines=50)) == b"a\nb\nc\nx\ny\n"
    assert await collect(tmp_path, endpoint.LogOptions(streams=("stdout",), tail_lines=1)) == b"c"
    assert await collect(tmp_path, endpoint.LogOptions(limit_bytes=3)) == b"a\nb"


async def test_a_run_spans_its_rotated_file_and_previous_reads_the_run_before(tmp_path: Path) -> None:
    write(tmp_path, "stdout", b"1\n2\n3")
    write(tmp_path, "stdout", b"\n4\n")
    assert logfiles.rotate(tmp_path / "stdout.log", limit=4)
    write(tmp_path, "stdout", b"5\n")
    assert await collect(tmp_path, endpoint.LogOptions()) == b"1\n2\n3\n4\n5\n"
    assert await collect(tmp_path, endpoint.LogOptions(tail_lines=4)) == b"2\n3\n4\n5\n"

    write(tmp_path, "stderr", b"")
    assert logfiles.keep_previous(tmp_path)
    write(tmp_path, "stdout", b"new run\n")
    assert await collect(tmp_path, endpoint.LogOptions(previous=True, tail_lines=2)) == b"4\n5\n"
    assert await collect(tmp_path, endpoint.LogOptions()) == b"new run\n"


async def test_a_follow_sends_whole_new_lines_across_a_rotation_and_ends_with_the_run(tmp_path: Path) -> None:
    write(tmp_path, "stdout", b"old\n")
    write(tmp_path, "stderr", b"")
    received: list[bytes] = []
    stop = asyncio.Event()

    async def follow() -> None:
        options = endpoint.LogOptions(follow=True, tail_lines=1)
        async for chunk in endpoint.read_logs(tmp_path, options, stop=stop, poll=0.02):
            received.append(chunk)

    task = asyncio.create_task(follow())
    await asyncio.sleep(0.1)
    write(tmp_path, "stdout", b"one\ntw")
    write(tmp_path, "stderr", b"warn\n")
    await asyncio.sleep(0.1)
    # Only whole lines go out: "tw" waits for the rest of its line.
    assert b"".join(received) in (b"old\none\nwarn\n", b"old\nwarn\none\n")
    write(tmp_path, "stdout", b"o\n" + b"x" * 100 + b"\n")
    assert logfiles.rotate(tmp_path / "stdout.log", limit=10)
    write(tmp_path, "stdout", b"after rotation\nlast words")
    await asyncio.sleep(0.1)
    (tmp_path / "exit").write_text("code=0\n")
    await asyncio.wait_for(task, 5)
    text = b"".join(received)
    assert text.count(b"two\n") == 1 and text.count(b"x" * 100) == 1
    assert text.endswith(b"after rotation\nlast words")


async def test_a_follow_loses_and_repeats_nothing_while_the_file_rotates_under_it(tmp_path: Path) -> None:
    write(tmp_path, "stdout", b"")
    write(tmp_path, "stderr", b"")

    def writer() -> None:
        # Appends and rotations from one thread, so rotation itself loses nothing here.
        for i in range(300):
            write(tmp_path, "stdout", f"line {i}\n".encode())
            if i % 40 == 39:
                assert logfiles.rotate(tmp_path / "stdout.log", limit=100)
            time.sleep(0.002)
        (tmp_path / "exit").write_text("code=0\n")

    options = endpoint.LogOptions(follow=True)
    thread = threading.Thread(target=writer)
    thread.start()
    try:
        chunks = [c async for c in endpoint.read_logs(tmp_path, options, stop=asyncio.Event(), poll=0.005)]
    finally:
        thread.join()
    assert b"".join(chunks).decode().splitlines() == [f"line {i}" for i in range(300)]


async def test_a_follow_ends_when_asked_or_when_the_file_moves_away(tmp_path: Path) -> None:
    write(tmp_path, "stdout", b"")
    write(tmp_path, "stderr", b"")
    stop = asyncio.Event()
    chunks = endpoint.read_logs(tmp_path, endpoint.LogOptions(follow=True), stop=stop, poll=0.02)
    stop.set()
    assert [c async for c in chunks] == []

    write(tmp_path, "stdout", b"first run\n")
    moved = endpoint.read_logs(tmp_path, endpoint.LogOptions(follow=True), stop=asyncio.Event(), poll=0.02)
    assert await anext(moved) == b"first run\n"
    assert logfiles.keep_previous(tmp_path)  # the container starts again
    assert [c async for c in moved] == []


def test_log_options_refuse_what_the_files_cannot_answer() -> None:
    assert endpoint.log_options({"tailLines": "-1", "follow": "true"}) == endpoint.LogOptions(follow=True)
    assert endpoint.log_options({"stream": "Stderr", "timestamps": "false"}).streams == ("stderr",)
    for query, message in (
        ({"timestamps": "true"}, "not timestamped"),
        ({"sinceSeconds": "10"}, "not timestamped"),
        ({"stream": "both"}, "use All, Stdout or Stderr"),
        ({"tailLines": "x"}, "not a whole number"),
        ({"limitBytes": "0"}, "must be at least 1"),
    ):
        with pytest.raises(endpoint.EndpointError, match=message):
            endpoint.log_options(query)


def test_exec_output_is_text_when_it_can_be_and_base64_when_not() -> None:
    text = endpoint.ExecResult.of(runc.ExecResult(0, b"hi\n", b""))
    assert text.to_dict() == {
        "apiVersion": "hypermesh.io/v1", "kind": "ExecResult", "exitCode": 0,
        "stdout": "hi\n", "stderr": "", "encoding": "text", "timedOut": False,
    }
    binary = endpoint.ExecResult.of(runc.ExecResult(3, b"\xff", b"e", timed_out=True)).to_dict()
    assert (binary["encoding"], binary["stdout"], binary["stderr"], binary["timedOut"]) == ("base64", "/w==", "ZQ==", True)


# -- through the API server, over TLS -----------------------------------------------------------


@dataclass
class FakeRuntime:
    """Just enough of OciRuntime for exec: every container runs, commands echo themselves."""

    calls: list[list[str]] = field(default_factory=list)

    async def state(self, container_id: str) -> runc.ContainerState:
        return runc.ContainerState(container_id, "running", 1, Path("/"))

    async def exec(self, container_id: str, argv: list[str], *, timeout: float) -> runc.ExecResult:
        self.calls.append(argv)
        if argv[0] == "missing":
            raise runc.CommandError(["runc", "--root", "r", "exec", *argv], 255, "executable file not found")
        return runc.ExecResult(len(argv), " ".join(argv).encode(), b"\xfe")


@dataclass
class Cluster:
    server: APIServer
    admin: AsyncClient
    agent: endpoint.Endpoint
    runtime: FakeRuntime
    workdir: Path
    ca: CertificateAuthority


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    ca = CertificateAuthority.create(tmp_path / "pki")
    server = APIServer(MemoryStore(), pki_dir=tmp_path / "pki")
    await server.start()
    assert server.cluster_ca_pem == ca.cert_pem
    admin = AsyncClient.in_process(server, ADMIN)
    node_client = AsyncClient.in_process(server, Identity("system:node:n1", ("system:nodes",)))
    assert node_client.ca_pem == ca.cert_pem
    runtime = FakeRuntime()
    services = NodeServices(
        client=node_client, node_name="n1", data_dir=tmp_path / "agent", images=cast(Any, None),
        runtime=cast(Any, runtime), network=cast(Any, None), host_ip="127.0.0.1",
    )
    instances: dict[tuple[str, str], dict[str, Any]] = {}
    agent = await endpoint.start(
        services, lambda name, ns: instances.get((ns, name)), client_ca_pem=ca.cert_pem, host="127.0.0.1"
    )
    await admin.create(NODES, {"apiVersion": "hypermesh.io/v1", "kind": "Node", "metadata": {"name": "n1"}})
    await admin.update_status(NODES, "n1", None, {
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
        "daemonEndpoints": {"agentEndpoint": {"port": agent.port, "certificateHash": agent.serving.hash}},
    })
    created = await admin.create(INSTANCES, {
        "apiVersion": "hypermesh.io/v1", "kind": "Instance",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"nodeName": "n1", "containers": [{"name": "main", "image": "busybox"}]},
    })
    instances[("default", "web")] = created
    workdir = services.data_dir / "instances" / created["metadata"]["uid"] / "main"
    write(workdir, "stdout", b"hello\nworld\n")
    write(workdir, "stderr", b"careful\n")
    try:
        yield Cluster(server, admin, agent, runtime, workdir, ca)
    finally:
        await agent.close()
        await admin.aclose()
        await server.stop()


async def read(chunks: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in chunks])


async def refused(call: Any) -> ApiError:
    with pytest.raises(ApiError) as caught:
        await call
    return caught.value


async def test_logs_come_through_the_proxy(cluster: Cluster) -> None:
    assert await read(cluster.admin.logs(INSTANCES, "web", "default")) == b"hello\nworld\ncareful\n"
    assert await read(cluster.admin.logs(INSTANCES, "web", "default", tail_lines=2, container="main")) == b"world\ncareful\n"
    error = await refused(read(cluster.admin.logs(INSTANCES, "web", "default", container="sidecar")))
    assert (error.status, error.reason) == (400, "BadRequest")
    assert 'container "sidecar" is not valid for instance "web"' in error.message
    error = await refused(read(cluster.admin.logs(INSTANCES, "web", "default", previous=True)))
    assert error.message == 'previous terminated container "main" in instance "web" not found'


async def test_a_followed_log_streams_through_the_proxy_until_the_run_ends(cluster: Cluster) -> None:
    chunks = cluster.admin.logs(INSTANCES, "web", "default", follow=True, tail_lines=1)
    assert await asyncio.wait_for(anext(chunks), 5) == b"careful\n"
    write(cluster.workdir, "stdout", b"more\n")
    assert await asyncio.wait_for(anext(chunks), 5) == b"more\n"
    (cluster.workdir / "exit").write_text("code=0\n")
    assert await asyncio.wait_for(read(chunks), 5) == b""


async def test_exec_comes_through_the_proxy_with_every_argument(cluster: Cluster) -> None:
    result = await cluster.admin.exec(INSTANCES, "web", "default", ["sh", "-c", "echo a b"])
    assert cluster.runtime.calls == [["sh", "-c", "echo a b"]]
    assert (result["exitCode"], result["encoding"]) == (3, "base64")
    error = await refused(cluster.admin.exec(INSTANCES, "web", "default", ["missing"]))
    assert (error.status, error.reason) == (400, "BadRequest")
    assert "executable file not found" in error.message
    tty = [("command", "sh"), ("tty", "true")]
    error = await refused(cluster.admin.request("POST", INSTANCES.path("default", "web", "exec"), query=tty))
    assert error.message == "tty=true is not supported: exec runs commands without input or a terminal"


async def test_a_node_whose_published_hash_does_not_match_is_refused(cluster: Cluster) -> None:
    await cluster.admin.update_status(NODES, "n1", None, {
        "daemonEndpoints": {"agentEndpoint": {"port": cluster.agent.port, "certificateHash": "sha256:" + "ab" * 32}},
    })
    error = await refused(read(cluster.admin.logs(INSTANCES, "web", "default")))
    assert (error.status, error.reason) == (502, "BadGateway")
    assert "refusing the connection" in error.message and cluster.agent.serving.hash in error.message


async def test_an_unbound_instance_or_a_silent_node_gets_a_clear_error(cluster: Cluster) -> None:
    await cluster.admin.create(INSTANCES, {
        "apiVersion": "hypermesh.io/v1", "kind": "Instance",
        "metadata": {"name": "pending", "namespace": "default"},
        "spec": {"containers": [{"name": "a", "image": "busybox"}, {"name": "b", "image": "busybox"}]},
    })
    error = await refused(read(cluster.admin.logs(INSTANCES, "pending", "default", container="a")))
    assert (error.status, error.message) == (400, 'instance "pending" is not bound to a node yet (spec.nodeName is empty), so it has no logs')
    error = await refused(read(cluster.admin.logs(INSTANCES, "pending", "default")))
    assert error.message == 'a container name must be specified for instance "pending", choose one of: [a b]'

    await cluster.admin.update_status(NODES, "n1", None, {"daemonEndpoints": {"agentEndpoint": None}})
    error = await refused(read(cluster.admin.logs(INSTANCES, "web", "default")))
    assert (error.status, error.reason) == (503, "ServiceUnavailable")
    assert "publishes no agent endpoint" in error.message


def _direct(cluster: Cluster, identity: str | None) -> tuple[int, bytes]:
    """GET the endpoint directly (as an attacker on the network would), with a client
    certificate of the cluster CA naming `identity`, or none."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if identity is not None:
        cert, key = cluster.ca.issue(identity, client=True)
        path = cluster.workdir.parent / "client.pem"
        path.write_bytes(cert + key)
        context.load_cert_chain(path)
    conn = http.client.HTTPSConnection("127.0.0.1", cluster.agent.port, context=context, timeout=5)
    try:
        conn.request("GET", "/logs/default/web/main")
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


async def test_the_endpoint_wants_the_api_server_not_a_node_or_a_stranger(cluster: Cluster) -> None:
    status, body = await asyncio.to_thread(_direct, cluster, "system:node:n2")
    answer = json.loads(body)
    assert (status, answer["reason"]) == (403, "Forbidden")
    assert 'user "system:node:n2" may not use' in answer["message"]
    with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
        await asyncio.to_thread(_direct, cluster, None)
    assert await asyncio.to_thread(_direct, cluster, "system:apiserver") == (200, b"hello\nworld\ncareful\n")
