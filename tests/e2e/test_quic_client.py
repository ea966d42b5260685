"""0-RTT through `hypermesh.client` (what `nexus` uses) against a real server.

Each `Client` stands for one command: the first makes a full handshake and stores a ticket,
the next resumes with it and sends its first GET as early data, and every connection leaves
the next ticket behind. Writes are never sent early. `$HYPERMESH_HOME` points into the test's
temporary directory, so tickets start empty.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from hypermesh.client import Api, Client, ClientError, ClusterConfig, load_config
from hypermesh.client.tickets import TicketStore
from tests.e2e.conftest import Server
from tests.e2e.test_client import TcpForwarder

pytestmark = pytest.mark.e2e


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "hmhome"
    monkeypatch.setenv("HYPERMESH_HOME", str(path))
    return path


@pytest.fixture(scope="module")
def config(server: Server) -> ClusterConfig:
    return load_config(str(server.kubeconfig))


def _early(client: Client) -> bool | None:
    assert client.transport_used == "h3"
    return getattr(client._transport, "early_data_accepted", None)


def test_each_command_resumes_and_sends_its_first_get_early(
    config: ClusterConfig, server: Server, home: Path
) -> None:
    with Client(config, transport="h3") as client:
        assert client.request("GET", "/api").status == 200
        assert not client.resumed
    for _ in range(3):
        with Client(config) as client:
            assert client.request("GET", "/api/v1/namespaces").status == 200
            assert client.resumed
            assert _early(client) is True
    # A fresh process (a `nexus` command) finds the ticket the last one left behind.
    code = (
        "from hypermesh.client import Client, load_config\n"
        f"with Client(load_config({str(server.kubeconfig)!r})) as client:\n"
        "    status = client.request('GET', '/version').status\n"
        "    print(status, client.resumed, client._transport.early_data_accepted)\n"
    )
    env = {**os.environ, "HYPERMESH_HOME": str(home)}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=30
    )
    assert result.stdout.split() == ["200", "True", "True"], result.stderr


def test_a_command_that_starts_with_a_write_does_not_send_it_early(
    config: ClusterConfig,
) -> None:
    with Client(config, transport="h3") as client:
        client.request("GET", "/api")
    name = f"quic-write-{int(time.time() * 1000) % 1000000}"
    body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    with Client(config, transport="h3") as client:
        assert client.request("POST", "/api/v1/namespaces", body=body).status == 201
        assert client.resumed
        # The handshake's early data held the HTTP/3 control streams only, never the write.
        with Client(config, transport="tcp") as tcp:
            assert tcp.request("GET", f"/api/v1/namespaces/{name}").status == 200
        client.request("DELETE", f"/api/v1/namespaces/{name}")


def test_watch_as_first_request_may_start_early(config: ClusterConfig) -> None:
    with Client(config, transport="h3") as client:
        client.request("GET", "/api")
    with Client(config, transport="h3") as client:
        query = {"watch": "1", "timeoutSeconds": "1"}
        with client.stream("GET", "/api/v1/namespaces", query=query) as events:
            names = [event["object"]["metadata"]["name"] for event in events]
        assert "default" in names
        assert client.resumed
        assert _early(client) is True


def test_quic_gone_after_the_ticket_fails_one_command_then_falls_back(
    server: Server, config: ClusterConfig
) -> None:
    # A ticket allowing 0-RTT means the first request opens the connection; if UDP stopped
    # getting through since, that request cannot fall back to TCP: it fails within the connect
    # timeout, the ticket is dropped, and the next command probes and falls back as usual.
    with Client(config, transport="h3") as client:
        client.request("GET", "/api")
    with TcpForwarder(server.port) as forwarder:
        proxied = dataclasses.replace(config, server=f"https://127.0.0.1:{forwarder.port}")
        stored = TicketStore(config.server)
        record = orjson.loads(stored.path.read_bytes())
        record["server"] = proxied.server
        moved = TicketStore(proxied.server)
        moved.path.write_bytes(orjson.dumps(record))
        started = time.monotonic()
        with Client(proxied) as client, pytest.raises(ClientError) as info:
            client.request("GET", "/version")
        assert time.monotonic() - started < 3
        assert proxied.server in str(info.value) and "--transport=tcp" in str(info.value)
        assert not moved.path.exists()
        with Client(proxied) as client:
            assert Api(client).server_version()["major"] == "1"
            assert client.transport_used == "tcp"
