"""An acknowledged write survives `kill -9` of the server at any moment.

Writers create objects as fast as they can over real TLS; every 201 the server sends is an
acknowledgement. The server is killed with SIGKILL mid-storm, restarted on the same data
directory, and every acknowledged object must be there with the resourceVersion it was
acknowledged at or later.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx
import orjson

from tests.e2e.conftest import Server, free_port

BASE = "/apis/hypermesh.io/v1/namespaces/default/workloads"


def _body(name: str) -> bytes:
    return orjson.dumps({
        "apiVersion": "hypermesh.io/v1", "kind": "Workload", "metadata": {"name": name},
        "spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "c", "image": "busybox"}]}}},
    })


def _storm(server: Server, round_no: int, acked: dict[str, int], stop: threading.Event, worker: int) -> None:
    with server.http() as http:
        i = 0
        while not stop.is_set():
            name = f"r{round_no}-w{worker}-{i}"
            i += 1
            try:
                response = http.post(BASE, content=_body(name))
            except httpx.HTTPError:
                return  # the server died: whatever was not acknowledged may be lost
            if response.status_code == 201:
                acked[name] = int(response.json()["metadata"]["resourceVersion"])


def test_acknowledged_writes_survive_kill_9(tmp_path: Path) -> None:
    server = Server(tmp_path / "data", free_port())
    all_acked: dict[str, int] = {}
    for round_no, delay in enumerate((0.7, 1.3, 2.1)):
        server.start()
        acked: dict[str, int] = {}
        stop = threading.Event()
        threads = [threading.Thread(target=_storm, args=(server, round_no, acked, stop, w)) for w in range(8)]
        for t in threads:
            t.start()
        time.sleep(delay)
        assert server.proc is not None
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait()
        server.proc = None
        stop.set()
        for t in threads:
            t.join(30)
        assert acked, "no write was acknowledged before the kill"
        all_acked.update(acked)

        server.start()
        with server.http() as http:
            items = http.get(BASE).json()["items"]
        stored = {o["metadata"]["name"]: int(o["metadata"]["resourceVersion"]) for o in items}
        lost = [n for n in all_acked if n not in stored]
        assert not lost, f"{len(lost)} acknowledged writes lost after kill -9, e.g. {lost[:5]}"
        assert all(stored[n] == rv for n, rv in all_acked.items())
        server.stop()
