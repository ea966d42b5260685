"""The server's own certificates rotate under load: no request fails, no watch breaks.

A real `hypermesh server` whose serving and admin certificates live 12 s (renewed every ~8 s):

- a watch opened before the first rotation keeps delivering events after several, on the
  connection (and the serving certificate) it was opened with, while new connections see new
  serving certificates, and `admin.kubeconfig` gets new admin certificates;
- load over a few rotations: clients that open a new connection for every few requests (each
  reading `admin.kubeconfig` afresh, as kubectl and nexus do at every run), clients that keep
  one connection for the whole run, and kubectl itself. Every request must succeed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from hypermesh.client.aio import AsyncClient
from hypermesh.client.config import load_config
from hypermesh.client.resources import Resource
from tests.e2e.conftest import KUBECTL, Server, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

LIFETIME = 12
NAMESPACES = Resource(group="", version="v1", kind="Namespace", plural="namespaces", singular="namespace", namespaced=False)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(
        tmp_path_factory.mktemp("rotation") / "data", free_port(),
        extra_args=("--serving-cert-lifetime", f"{LIFETIME}s", "--admin-cert-lifetime", f"{LIFETIME}s"),
    )  # fmt: skip
    srv.start()
    try:
        yield srv
    finally:
        code = srv.stop()
        assert code == 0, srv.log_path.read_text() if srv.log_path else ""


def client_context(kubeconfig: Path) -> ssl.SSLContext:
    """A TLS context from the kubeconfig as it is now (CA and client certificate)."""
    user = yaml.safe_load(kubeconfig.read_text())
    cluster = user["clusters"][0]["cluster"]
    credentials = user["users"][0]["user"]
    context = ssl.create_default_context(cadata=base64.b64decode(cluster["certificate-authority-data"]).decode())
    with tempfile.NamedTemporaryFile("wb", suffix=".pem") as pem:
        pem.write(base64.b64decode(credentials["client-certificate-data"]))
        pem.write(base64.b64decode(credentials["client-key-data"]))
        pem.flush()
        context.load_cert_chain(pem.name)
    return context


def admin_serial(kubeconfig: Path) -> int:
    credentials = yaml.safe_load(kubeconfig.read_text())["users"][0]["user"]
    return x509.load_pem_x509_certificate(base64.b64decode(credentials["client-certificate-data"])).serial_number


class Connection:
    """One HTTPS/1.1 keep-alive connection; remembers the serving certificate it was shown."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        self.server_serial = x509.load_der_x509_certificate(der).serial_number

    @classmethod
    async def open(cls, server: Server) -> Connection:
        context = await asyncio.to_thread(client_context, server.kubeconfig)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=context, server_hostname="127.0.0.1")
        return cls(reader, writer)

    async def get(self, path: str) -> int:
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: application/json\r\n\r\n".encode())
        await self.writer.drain()
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 10)
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
        await self.reader.readexactly(length)
        return int(head.split(b" ", 2)[1])

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


@dataclass
class Tally:
    ok: int = 0
    failed: list[str] = field(default_factory=list)
    server_serials: set[int] = field(default_factory=set)

    def count(self, outcome: int | BaseException) -> None:
        if outcome == 200:
            self.ok += 1
        else:
            self.failed.append(repr(outcome))


async def fresh_connections(server: Server, tally: Tally, until: float) -> None:
    """A new connection (kubeconfig read afresh) every five requests."""
    while time.monotonic() < until:
        try:
            connection = await Connection.open(server)
        except (OSError, ssl.SSLError) as exc:
            tally.count(exc)
            continue
        tally.server_serials.add(connection.server_serial)
        try:
            for _ in range(5):
                try:
                    tally.count(await connection.get("/api/v1/namespaces/default"))
                except (OSError, ssl.SSLError, asyncio.IncompleteReadError, TimeoutError) as exc:
                    tally.count(exc)
                    break
                await asyncio.sleep(0.02)
        finally:
            connection.close()


async def one_connection(server: Server, tally: Tally, until: float) -> None:
    """One connection, opened before the first rotation, for the whole run."""
    connection = await Connection.open(server)
    try:
        while time.monotonic() < until:
            try:
                tally.count(await connection.get("/apis/hypermesh.io/v1/nodes"))
            except (OSError, ssl.SSLError, asyncio.IncompleteReadError, TimeoutError) as exc:
                tally.count(exc)
                return
            await asyncio.sleep(0.05)
    finally:
        connection.close()


def kubectl_runs(server: Server, tally: Tally, until: float) -> None:
    """kubectl, which reads the kubeconfig at every run."""
    while time.monotonic() < until:
        result = subprocess.run([KUBECTL, "--kubeconfig", str(server.kubeconfig), "get", "--raw", "/api/v1/namespaces"], capture_output=True, text=True, timeout=60)
        tally.count(200 if result.returncode == 0 else RuntimeError(result.stderr.strip()))
        time.sleep(0.5)


async def test_rotation_under_load_fails_no_request(server: Server) -> None:
    tally = Tally()
    admin_serials = {admin_serial(server.kubeconfig)}
    until = time.monotonic() + 2.5 * LIFETIME

    async def sample_admin() -> None:
        while time.monotonic() < until:
            admin_serials.add(admin_serial(server.kubeconfig))
            await asyncio.sleep(0.2)

    await asyncio.gather(
        *(fresh_connections(server, tally, until) for _ in range(4)),
        *(one_connection(server, tally, until) for _ in range(2)),
        asyncio.to_thread(kubectl_runs, server, tally, until),
        sample_admin(),
    )
    assert tally.failed == [], tally.failed[:5]
    assert tally.ok >= 300, tally.ok
    # Several serving certificates were shown, and admin.kubeconfig changed hands as often.
    assert len(tally.server_serials) >= 3, tally.server_serials
    assert len(admin_serials) >= 3, admin_serials


async def test_a_watch_outlives_serving_certificate_rotations(server: Server) -> None:
    ca_before = (server.data_dir / "pki" / "ca.crt").read_bytes()
    admin = AsyncClient.from_config(load_config(str(server.kubeconfig)))
    seen: list[dict[str, Any]] = []

    async def follow() -> None:
        async for event in admin.watch(NAMESPACES, bookmarks=False):
            seen.append(event)

    watch = asyncio.create_task(follow())
    try:
        while not seen:
            await asyncio.sleep(0.05)
        # The watch's connection was made before this one, so with the certificate this one
        # shows or an older one. Two rotations later a new connection shows a third serving
        # certificate; the watch is still there and delivers what happens now.
        first = await Connection.open(server)
        first.close()
        shown = {first.server_serial}
        deadline = time.monotonic() + 3 * LIFETIME
        while len(shown) < 3:
            assert time.monotonic() < deadline, f"the serving certificate did not rotate twice: {shown}"
            await asyncio.sleep(1)
            connection = await Connection.open(server)
            shown.add(connection.server_serial)
            connection.close()
        assert not watch.done()
        name = f"rotated-{len(shown)}"
        subprocess.run([KUBECTL, "--kubeconfig", str(server.kubeconfig), "create", "namespace", name], check=True, capture_output=True, timeout=60)
        deadline = time.monotonic() + 5
        while not any(e["object"]["metadata"]["name"] == name for e in seen):
            assert time.monotonic() < deadline, "the watch opened before the rotations saw nothing"
            await asyncio.sleep(0.05)
        assert not watch.done()
        # The one certificate clients trust never changed.
        assert (server.data_dir / "pki" / "ca.crt").read_bytes() == ca_before
    finally:
        watch.cancel()
        with contextlib.suppress(BaseException):
            await watch
        await admin.aclose()


def test_http3_serves_the_rotated_certificate(server: Server) -> None:
    """The HTTP/3 listener reloads the serving certificate too: after the first one expired,
    nexus over QUIC alone (no TCP fallback) still connects, with a fresh certificate."""
    first = x509.load_pem_x509_certificate((server.data_dir / "pki" / "server.crt").read_bytes())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and time.time() < first.not_valid_after_utc.timestamp() + 1:
        time.sleep(0.5)
    assert time.time() > first.not_valid_after_utc.timestamp(), "the first serving certificate should have expired"
    env = {"HOME": str(server.data_dir.parent / "h3-home")}
    nexus = str(Path(sys.executable).parent / "nexus")
    result = subprocess.run(
        [nexus, "--kubeconfig", str(server.kubeconfig), "--transport", "h3", "get", "namespaces", "-o", "name"],
        capture_output=True, text=True, timeout=60, env={**os.environ, **env},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "namespace/default" in result.stdout


def test_a_long_running_client_follows_the_renewed_kubeconfig(server: Server) -> None:
    """`hypermesh simulate-nodes` reads admin.kubeconfig once; the server renews the admin
    certificate every ~8 s here. Its Lease renewals keep succeeding past several expiries."""
    log = server.data_dir.parent / "simulate.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "hypermesh"), "simulate-nodes", "--count", "1", "--prefix", "follow", "--kubeconfig", str(server.kubeconfig)],
            stdout=subprocess.PIPE, stderr=out, text=True,
        )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready", log.read_text()
        first = x509.load_pem_x509_certificate(base64.b64decode(yaml.safe_load(server.kubeconfig.read_text())["users"][0]["user"]["client-certificate-data"]))
        # Past the expiry of the certificate the simulator started with, plus two renewals.
        while time.time() < first.not_valid_after_utc.timestamp() + 12:
            time.sleep(1)
        lease = server.kubectl_json("get", "lease", "follow-0", "-n", "hypermesh-node-lease")
        renewed = lease["spec"]["renewTime"]
        from datetime import datetime

        age = time.time() - datetime.fromisoformat(renewed.replace("Z", "+00:00")).timestamp()
        assert age < 12, f"the Lease was last renewed {age:.0f}s ago; simulator log:\n{log.read_text()}"
        assert "using the renewed client certificate" in log.read_text()
    finally:
        proc.terminate()
        proc.wait(20)
