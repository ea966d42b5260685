"""Joining and certificate rotation against a real TLS listener in this process.

The API server (memory store) is served by the real HTTPS listener with the csrsigning
controller beside it, so the join (CA discovery, bootstrap token, CSR) and the live swap of the
client certificate run exactly as in a node agent, without root or containers.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import os
import socket
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from cryptography import x509

from controllers import csrsigning
from hypermesh.api.app import APIServer
from hypermesh.client.aio import AsyncClient
from hypermesh.client.resources import Resource
from hypermesh.operator import Operator
from hypermesh.pki import Identity, Signer, bootstraptoken, csr, ensure_server_pki, keys
from hypermesh.runtime import join, rotation
from hypermesh.store.memory import MemoryStore
from hypermesh.transport.tcp import serve_tcp

SECRETS = Resource(group="", version="v1", kind="Secret", plural="secrets", singular="secret", namespaced=True)
LEASES = Resource(group="coordination.k8s.io", version="v1", kind="Lease", plural="leases", singular="lease", namespaced=True)
CONTROLLERS = Identity("system:controllers", ("system:masters",))
ADMIN = Identity("admin", ("system:masters",))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Cluster:
    app: APIServer
    url: str
    ca_hash: str
    admin: AsyncClient
    data_dir: Path


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    pki = ensure_server_pki(tmp_path / "server")
    app = APIServer(MemoryStore(), pki_dir=pki.directory)
    await app.start()
    port = free_port()
    ready, shutdown = asyncio.Event(), asyncio.Event()
    listener = asyncio.create_task(serve_tcp(app, host="127.0.0.1", port=port, certfile=pki.server_cert_path,  # type: ignore[arg-type]
                                             keyfile=pki.server_key_path, cafile=pki.ca_cert_path, ready=ready, shutdown=shutdown))  # fmt: skip
    await asyncio.wait_for(ready.wait(), 10)
    # Certificates of 3 s: renewed about every 2 s.
    settings = csrsigning.CSRSigningSettings(signer=Signer.from_directory(pki.directory), max_duration=datetime.timedelta(seconds=3))
    op = Operator(AsyncClient.in_process(app, CONTROLLERS), name="csrsigning-test")
    csrsigning.setup(op, settings)
    stop = asyncio.Event()
    controller = asyncio.create_task(op.run(stop))
    ca_hash = csr.spki_hash(x509.load_pem_x509_certificate(pki.ca_pem))
    try:
        yield Cluster(app, f"https://127.0.0.1:{port}", ca_hash, AsyncClient.in_process(app, ADMIN), tmp_path / "agent")
    finally:
        stop.set()
        await asyncio.wait_for(controller, 10)
        await app.stop()
        shutdown.set()
        await asyncio.wait_for(listener, 10)


async def new_token(cluster: Cluster, *, expires: datetime.datetime | None = None) -> bootstraptoken.BootstrapToken:
    token = bootstraptoken.BootstrapToken.generate()
    await cluster.admin.create(SECRETS, bootstraptoken.secret_manifest(token, expires=expires))
    return token


async def test_a_node_joins_with_a_token(cluster: Cluster) -> None:
    token = await new_token(cluster)
    creds = await join.credentials(server=cluster.url, token=str(token), ca_hash=cluster.ca_hash, node_name="n1", data_dir=cluster.data_dir)
    assert csr.subject_parts(creds.certificate) == ("system:node:n1", ("system:nodes",))
    path = join.kubeconfig_path(cluster.data_dir)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert str(token) not in path.read_text() and token.secret not in path.read_text()
    # A restart reuses the kubeconfig: no token needed, no new request.
    before = len((await cluster.admin.list(csrsigning.CSRS))["items"])
    again = await join.credentials(server=None, token=None, ca_hash=None, node_name="n1", data_dir=cluster.data_dir)
    assert again.certificate == creds.certificate
    assert len((await cluster.admin.list(csrsigning.CSRS))["items"]) == before
    # The first request was made by the token's identity, stamped by the server.
    first = (await cluster.admin.list(csrsigning.CSRS))["items"][0]
    assert first["spec"]["username"] == f"system:bootstrap:{token.id}"


async def test_a_wrong_ca_hash_is_refused_before_anything_is_written(cluster: Cluster) -> None:
    token = await new_token(cluster)
    wrong = "sha256:" + "0" * 64
    with pytest.raises(join.JoinError) as caught:
        await join.credentials(server=cluster.url, token=str(token), ca_hash=wrong, node_name="n1", data_dir=cluster.data_dir)
    message = str(caught.value)
    assert f"its public key hash is {cluster.ca_hash}, but --ca-hash is {wrong}" in message
    assert not cluster.data_dir.exists()
    assert (await cluster.admin.list(csrsigning.CSRS))["items"] == []
    with pytest.raises(join.JoinError, match="--ca-hash: 'sha1:abc' is not a CA hash"):
        await join.credentials(server=cluster.url, token=str(token), ca_hash="sha1:abc", node_name="n1", data_dir=cluster.data_dir)


async def test_an_expired_or_unknown_token_is_refused(cluster: Cluster) -> None:
    expired = await new_token(cluster, expires=datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=1))
    for token in (expired, bootstraptoken.BootstrapToken.generate()):
        with pytest.raises(join.JoinError, match=f"did not accept the bootstrap token {token.id} \\(401 Unauthorized\\)"):
            await join.credentials(server=cluster.url, token=str(token), ca_hash=cluster.ca_hash, node_name="n1", data_dir=cluster.data_dir)
        assert not join.kubeconfig_path(cluster.data_dir).exists()


async def whoami(client: AsyncClient) -> str:
    _, _, body = await client.request("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", body={"kind": "SelfSubjectReview", "apiVersion": "authentication.k8s.io/v1"})
    return str(orjson.loads(body)["status"]["userInfo"]["username"])


async def test_renewal_swaps_the_certificate_of_a_running_client(cluster: Cluster) -> None:
    token = await new_token(cluster)
    creds = await join.credentials(server=cluster.url, token=str(token), ca_hash=cluster.ca_hash, node_name="n1", data_dir=cluster.data_dir)
    path = join.kubeconfig_path(cluster.data_dir)
    client = AsyncClient.from_config(creds.config(path))
    lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "n1", "namespace": "hypermesh-node-lease"},
             "spec": {"holderIdentity": "n1"}}  # fmt: skip
    await client.create(LEASES, lease)
    # A watch opened with the first certificate stays open across the swap.
    watch = client.watch(LEASES, "hypermesh-node-lease", field_selector="metadata.name=n1")
    first = await anext(watch)
    assert first["type"] == "ADDED"
    rotator = rotation.CertificateRotation(client, creds, node_name="n1", path=path)
    renewed = await rotator.renew()
    assert renewed.certificate.serial_number != creds.certificate.serial_number
    assert join.read_credentials(path, "n1")[0] is not None
    assert join.read_credentials(path, "n1")[0].certificate == renewed.certificate  # type: ignore[union-attr]
    # The next request presents the new certificate: the server names it in a new request.
    request = base64.b64encode(csr.build_request(keys.generate(), "probe")).decode()
    probe = await client.create(csrsigning.CSRS, {
        "apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest", "metadata": {"generateName": "probe-"},
        "spec": {"request": request, "signerName": "example.com/none"},
    })
    assert probe["spec"]["extra"][csr.CREDENTIAL_ID_KEY] == [csr.certificate_credential_id(renewed.certificate)]
    await client.patch(LEASES, "n1", "hypermesh-node-lease", {"spec": {"holderIdentity": "n1-renewed"}})
    event = await asyncio.wait_for(anext(watch), 5)
    assert (event["type"], event["object"]["spec"]["holderIdentity"]) == ("MODIFIED", "n1-renewed")
    await watch.aclose()
    await client.aclose()


async def test_rotation_under_load_fails_no_request(cluster: Cluster) -> None:
    token = await new_token(cluster)
    creds = await join.credentials(server=cluster.url, token=str(token), ca_hash=cluster.ca_hash, node_name="n1", data_dir=cluster.data_dir)
    path = join.kubeconfig_path(cluster.data_dir)
    client = AsyncClient.from_config(creds.config(path))
    rotator = rotation.CertificateRotation(client, creds, node_name="n1", path=path)
    stop = asyncio.Event()
    renewing = asyncio.create_task(rotator.run(stop))
    served: list[str] = []
    failures: list[Exception] = []
    serials = set()

    async def load() -> None:
        while not stop.is_set():
            try:
                served.append(await whoami(client))
            except Exception as exc:  # every failure counts, not only ApiError
                failures.append(exc)
            serials.add(rotator.credentials.certificate.serial_number)
            await asyncio.sleep(0.02)

    loaders = [asyncio.create_task(load()) for _ in range(4)]
    # 3 s certificates, renewed at two thirds: 7 s see at least two renewals, and requests run
    # past the expiry of the first certificate.
    await asyncio.sleep(7)
    stop.set()
    await asyncio.gather(*loaders, renewing)
    await client.aclose()
    assert not failures, failures[:3]
    assert len(serials) >= 3, serials
    assert set(served) == {"system:node:n1"} and len(served) > 100
    assert rotator.credentials.not_after > datetime.datetime.now(datetime.UTC)
