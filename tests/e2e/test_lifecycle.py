"""The server as a process: HTTP/3 beside HTTPS, clean SIGTERM with open watches, restart,
and online backup with restore."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson

from hypermesh.transport.h3client import H3Client
from tests.e2e.conftest import Server, free_port

VENV_BIN = Path(sys.executable).parent
WL = "/apis/hypermesh.io/v1/namespaces/default/workloads"


def _workload(name: str) -> bytes:
    return orjson.dumps({"apiVersion": "hypermesh.io/v1", "kind": "Workload", "metadata": {"name": name},
                         "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "busybox"}]}}}})


def test_http3_serves_the_same_api(server: Server) -> None:
    pki = server.data_dir / "pki"

    async def scenario() -> None:
        async with H3Client("127.0.0.1", server.port, cafile=pki / "ca.crt", certfile=pki / "admin.crt", keyfile=pki / "admin.key", server_name="localhost") as h3:
            status, _, body = await h3.request("GET", "/api/v1/namespaces")
            assert status == 200
            assert "default" in {ns["metadata"]["name"] for ns in orjson.loads(body)["items"]}
            status, _, body = await h3.request("POST", WL, body=_workload("over-h3"), headers=[(b"content-type", b"application/json")])
            assert status == 201, body
            rv = orjson.loads(body)["metadata"]["resourceVersion"]
            response = await h3.open("GET", f"{WL}?watch=true&resourceVersion={int(rv) - 1}&timeoutSeconds=5")
            first = b""
            async for chunk in response:
                first += chunk
                if b"\n" in first:
                    break
            await response.aclose()
            event = orjson.loads(first.split(b"\n")[0])
            assert event["type"] == "ADDED" and event["object"]["metadata"]["name"] == "over-h3"
        async with H3Client("127.0.0.1", server.port, cafile=pki / "ca.crt", server_name="localhost") as anonymous:
            status, _, body = await anonymous.request("GET", "/api/v1/namespaces")
            assert status == 401 and orjson.loads(body)["reason"] == "Unauthorized"

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_sigterm_ends_watches_and_exits_cleanly(tmp_path: Path) -> None:
    server = Server(tmp_path / "data", free_port())
    server.start()
    with server.http() as http:
        http.post(WL, content=_workload("before")).raise_for_status()
        with http.stream("GET", f"{WL}?watch=true") as stream:
            lines = stream.iter_lines()
            assert json.loads(next(lines))["type"] == "ADDED"
            started = time.monotonic()
            assert server.proc is not None
            server.proc.send_signal(signal.SIGTERM)
            # The stream ends (cleanly) instead of hanging until the client gives up.
            for _ in lines:
                pass
        assert time.monotonic() - started < 5
    assert server.proc.wait(10) == 0
    server.proc = None
    # A second start on the same data directory resumes everything.
    server.start()
    with server.http() as http:
        assert http.get(f"{WL}/before").status_code == 200
    assert server.stop() == 0


def test_online_backup_and_restore(tmp_path: Path) -> None:
    server = Server(tmp_path / "data", free_port())
    server.start()
    with server.http() as http:
        for i in range(20):
            http.post(WL, content=_workload(f"b{i}")).raise_for_status()
    backup = tmp_path / "snap.db"
    out = subprocess.run([str(VENV_BIN / "hypermesh"), "backup", "--data-dir", str(server.data_dir), str(backup)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    with server.http() as http:
        http.post(WL, content=_workload("after-backup")).raise_for_status()
    assert server.stop() == 0

    restored = Server(tmp_path / "restored", free_port())
    out = subprocess.run([str(VENV_BIN / "hypermesh"), "restore", "--data-dir", str(restored.data_dir), str(backup)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    # Restoring over a store that exists is refused without --force, and changes nothing.
    again = subprocess.run([str(VENV_BIN / "hypermesh"), "restore", "--data-dir", str(restored.data_dir), str(backup)], capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and "force" in again.stderr
    restored.start()
    with restored.http() as http:
        names = {o["metadata"]["name"] for o in http.get(WL).json()["items"]}
    assert names == {f"b{i}" for i in range(20)}
    assert restored.stop() == 0
