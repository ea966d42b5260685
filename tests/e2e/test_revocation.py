"""Revocation end to end: a revoked certificate is refused within 5 s and its watch ends.

A real `hypermesh server` (controllers on, so the certificates controller runs inside it), real
users from `hypermesh user create`, the real `nexus cert revoke` and kubectl:

- an administrator-like user's certificate revoked by serial: its next request is 401 within
  5 s, its open watch ends, kubectl with it fails; another user's watch goes on;
- deleting a Certificate revokes its serial (its finalizer holds it until then): the client
  certificate it issued, accepted before, is refused after;
- `nexus cert revoke NAME` revokes a Certificate's certificate and the controller re-issues it
  with a new serial and a new key.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from hypermesh.client.aio import AsyncClient
from hypermesh.client.config import load_config
from hypermesh.client.errors import ApiError, ClientError
from hypermesh.client.resources import Resource
from tests.e2e.conftest import KUBECTL, VENV_BIN, Server, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

NAMESPACES = Resource(group="", version="v1", kind="Namespace", plural="namespaces", singular="namespace", namespaced=False)
CERTIFICATES = Resource(
    group="hypermesh.io", version="v1", kind="Certificate", plural="certificates", singular="certificate",
    namespaced=True, subresources=("status",),
)  # fmt: skip
SECRETS = Resource(group="", version="v1", kind="Secret", plural="secrets", singular="secret", namespaced=True)
REVOCATIONS = Resource(
    group="hypermesh.io", version="v1", kind="CertificateRevocation", plural="certificaterevocations",
    singular="certificaterevocation", namespaced=False,
)  # fmt: skip
# The promise: a revoked certificate is refused this soon.
WITHIN = 5.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("revocation") / "data", free_port(), controllers=True)
    srv.start()
    try:
        yield srv
    finally:
        code = srv.stop()
        assert code == 0, srv.log_path.read_text() if srv.log_path else ""


def user(server: Server, name: str, *groups: str) -> Path:
    """A kubeconfig for a new user of the cluster CA (`hypermesh user create`)."""
    path = server.data_dir.parent / f"{name}.kubeconfig"
    args = [str(VENV_BIN / "hypermesh"), "user", "create", name, "--data-dir", str(server.data_dir), "--output", str(path), "--allow-reserved-groups"]
    for group in groups:
        args += ["--group", group]
    subprocess.run(args, check=True, capture_output=True, text=True)
    return path


def serial_in(kubeconfig: Path) -> int:
    import yaml

    config = yaml.safe_load(kubeconfig.read_text())
    pem = base64.b64decode(config["users"][0]["user"]["client-certificate-data"])
    return x509.load_pem_x509_certificate(pem).serial_number


def nexus(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(VENV_BIN / "nexus"), "--kubeconfig", str(kubeconfig), *args], capture_output=True, text=True, timeout=90)


async def watch_events(client: AsyncClient, seen: list[dict[str, Any]]) -> str:
    """Collect a namespaces watch's events until it ends; how it ended."""
    try:
        async for event in client.watch(NAMESPACES, bookmarks=False):
            seen.append(event)
    except (ClientError, ApiError, OSError) as exc:
        return f"ended: {exc.__class__.__name__}"
    return "ended"


async def eventually(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        assert time.monotonic() < deadline, f"{what} not within {timeout}s"
        await asyncio.sleep(0.05)


@pytest.fixture
async def admin(server: Server) -> AsyncIterator[AsyncClient]:
    client = AsyncClient.from_config(load_config(str(server.kubeconfig)))
    try:
        yield client
    finally:
        await client.aclose()


# -- a user's certificate, revoked by serial -----------------------------------------------------


async def test_a_revoked_user_is_refused_within_5s_and_its_watch_ends(server: Server, admin: AsyncClient) -> None:
    ops_config, dev_config = user(server, "ops", "system:masters"), user(server, "dev", "system:masters")
    ops = AsyncClient.from_config(load_config(str(ops_config)))
    dev = AsyncClient.from_config(load_config(str(dev_config)))
    try:
        await ops.list(NAMESPACES)
        ops_seen: list[dict[str, Any]] = []
        dev_seen: list[dict[str, Any]] = []
        ops_watch = asyncio.create_task(watch_events(ops, ops_seen))
        dev_watch = asyncio.create_task(watch_events(dev, dev_seen))
        await eventually(lambda: _true(len(ops_seen) > 0 and len(dev_seen) > 0), 10, "the initial events of both watches")

        serial = serial_in(ops_config)
        revoked = await asyncio.to_thread(nexus, server.kubeconfig, "cert", "revoke", "--serial", format(serial, "x"), "--reason", "keyCompromise")
        assert revoked.returncode == 0, revoked.stderr
        assert revoked.stdout == f"certificaterevocation.hypermesh.io/{serial:x} revoked\n"
        began = time.monotonic()

        async def refused() -> ApiError | None:
            try:
                await ops.list(NAMESPACES)
            except ApiError as exc:
                return exc
            return None

        error = await eventually(refused, WITHIN, "the revoked certificate refused")
        assert time.monotonic() - began < WITHIN
        assert error.status == 401
        assert f"(serial {serial:x}) has been revoked" in error.message
        # Its watch ended (the server closed the connection), well within the promise.
        assert (await asyncio.wait_for(ops_watch, WITHIN)).startswith("ended")
        # kubectl with the revoked certificate fails too; the other user carries on, and its
        # watch still delivers.
        result = subprocess.run([KUBECTL, "--kubeconfig", str(ops_config), "get", "namespaces"], capture_output=True, text=True, timeout=60)
        assert result.returncode != 0 and "You must be logged in to the server" in result.stderr
        before = len(dev_seen)
        await admin.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "after-revocation"}})
        await eventually(lambda: _true(any(e["object"]["metadata"]["name"] == "after-revocation" for e in dev_seen[before:])), 5, "dev's watch event")
        assert not dev_watch.done()
        await dev.list(NAMESPACES)

        # The refusal is on record (the log is written four times a second), with its user.
        async def audited() -> bool:
            lines = (server.data_dir / "audit.log").read_text().splitlines()
            return any(e["user"] == "ops" and e["code"] == 401 for e in map(json.loads, lines))

        await eventually(audited, 5, "the 401 in the audit log")
        revocation = await admin.get(REVOCATIONS, format(serial, "x"))
        assert revocation["spec"]["reason"] == "keyCompromise"
        dev_watch.cancel()
    finally:
        await ops.aclose()
        await dev.aclose()


async def _true(value: bool) -> bool:
    return value


# -- Certificates ---------------------------------------------------------------------------------


def certificate(name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "hypermesh.io/v1", "kind": "Certificate",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"secretName": f"{name}-tls", "commonName": f"svc-{name}", "duration": "1h", "usages": ["digital signature", "client auth"]},
    }  # fmt: skip


async def ready(client: AsyncClient, name: str, namespace: str, *, not_serial: str | None = None) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        obj = await client.get(CERTIFICATES, name, namespace)
        status = obj.get("status") or {}
        is_ready = any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions") or [])
        return obj if is_ready and status.get("serialNumber") not in (None, not_serial) else None

    result: dict[str, Any] = await eventually(check, 30, f"{name} Ready")
    return result


async def as_certificate_holder(server: Server, client: AsyncClient, name: str, namespace: str) -> AsyncClient:
    """A client presenting the certificate in the Certificate's Secret."""
    import dataclasses

    secret = await client.get(SECRETS, f"{name}-tls", namespace)
    config = load_config(str(server.kubeconfig))
    config = dataclasses.replace(config, cert_pem=base64.b64decode(secret["data"]["tls.crt"]), key_pem=base64.b64decode(secret["data"]["tls.key"]))
    return AsyncClient.from_config(config)


async def status_of(client: AsyncClient) -> int:
    try:
        await client.list(NAMESPACES)
    except ApiError as exc:
        return exc.status
    return 200


async def test_deleting_a_certificate_revokes_its_serial(server: Server, admin: AsyncClient, namespace: str) -> None:
    await admin.create(CERTIFICATES, certificate("gone", namespace))
    issued = await ready(admin, "gone", namespace)
    serial = issued["status"]["serialNumber"]
    assert "hypermesh.io/revoke-certificate" in (await admin.get(CERTIFICATES, "gone", namespace))["metadata"]["finalizers"]
    holder = await as_certificate_holder(server, admin, "gone", namespace)
    try:
        # Accepted as who it names (a user bound to nothing: 403, not 401).
        assert await status_of(holder) == 403
        await admin.delete(CERTIFICATES, "gone", namespace)

        async def gone() -> bool:
            try:
                await admin.get(CERTIFICATES, "gone", namespace)
            except ApiError as exc:
                return exc.status == 404
            return False

        await eventually(gone, 15, "the Certificate gone")
        revocation = await admin.get(REVOCATIONS, serial)
        spec = revocation["spec"]
        assert (spec["serialNumber"], spec["reason"], spec["subject"]) == (serial, "cessationOfOperation", "CN=svc-gone")
        assert spec["certificateRef"]["name"] == "gone" and spec["certificateRef"]["namespace"] == namespace
        assert await eventually(lambda: _status_is(holder, 401), WITHIN, "the deleted Certificate's certificate refused")
    finally:
        await holder.aclose()


async def _status_is(client: AsyncClient, code: int) -> bool:
    return await status_of(client) == code


async def test_nexus_cert_revoke_reissues_with_a_new_serial(server: Server, admin: AsyncClient, namespace: str) -> None:
    await admin.create(CERTIFICATES, certificate("web", namespace))
    first = await ready(admin, "web", namespace)
    old_serial = first["status"]["serialNumber"]
    old_key = (await admin.get(SECRETS, "web-tls", namespace))["data"]["tls.key"]
    holder = await as_certificate_holder(server, admin, "web", namespace)
    try:
        result = await asyncio.to_thread(nexus, server.kubeconfig, "-n", namespace, "cert", "revoke", "web", "--wait")
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[0] == f"certificaterevocation.hypermesh.io/{old_serial} revoked"
        again = await admin.get(CERTIFICATES, "web", namespace)
        new_serial = again["status"]["serialNumber"]
        assert new_serial != old_serial and again["status"]["revision"] == 2
        assert lines[1] == f"certificate.hypermesh.io/web re-issued: serial {new_serial} (revision 2)"
        secret = await admin.get(SECRETS, "web-tls", namespace)
        leaf = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
        assert format(leaf.serial_number, "x") == new_serial
        assert secret["data"]["tls.key"] != old_key, "a revoked certificate's key is never reused"
        revocation = await admin.get(REVOCATIONS, old_serial)
        assert (revocation["spec"]["reason"], revocation["spec"]["certificateRef"]["name"]) == ("keyCompromise", "web")
        # The old certificate is refused, the re-issued one accepted.
        assert await eventually(lambda: _status_is(holder, 401), WITHIN, "the old certificate refused")
        fresh = await as_certificate_holder(server, admin, "web", namespace)
        try:
            assert await status_of(fresh) == 403
        finally:
            await fresh.aclose()
        # Revoking again says so instead of failing.
        twice = await asyncio.to_thread(nexus, server.kubeconfig, "cert", "revoke", "--serial", old_serial)
        assert (twice.returncode, twice.stdout) == (0, f"certificaterevocation.hypermesh.io/{old_serial} already revoked\n")
    finally:
        await holder.aclose()


def test_nexus_cert_revoke_explains_its_usage(server: Server) -> None:
    both = nexus(server.kubeconfig, "cert", "revoke", "web", "--serial", "ab")
    assert both.returncode == 2 and "usage: nexus cert revoke NAME" in both.stderr
    bad = nexus(server.kubeconfig, "cert", "revoke", "--serial", "xyz")
    assert bad.returncode == 2 and "not a hexadecimal serial number" in bad.stderr
