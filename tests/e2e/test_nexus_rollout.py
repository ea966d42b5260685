"""`nexus rollout status|history|undo|restart` against a real `hypermesh server --controllers`.

The workloads controller runs inside the server; the test plays the node agents by marking the
Workload's Instances Ready through the status subresource, and runs nexus as users do, as the
installed console script.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from controllers.kinds import INSTANCES, WORKLOADS
from hypermesh.client.aio import AsyncClient
from hypermesh.client.config import load_config
from hypermesh.client.errors import ApiError
from hypermesh.operator import get_condition
from tests.e2e.conftest import VENV_BIN, Server, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

NEXUS = str(VENV_BIN / "nexus")
NS = "default"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    base = tmp_path_factory.mktemp("hm-rollout")
    # The controllers run inside the server (its default; the shared fixture turns them off).
    srv = Server(base / "data", free_port(), controllers=True)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "nexus-home"


async def nexus(server: Server, home: Path, *args: str, timeout: float = 40) -> subprocess.CompletedProcess[str]:
    """Run nexus in a thread, so the test's fake agent keeps running meanwhile."""
    env = {**os.environ, "HYPERMESH_HOME": str(home), "NO_COLOR": "1"}
    env.pop("KUBECONFIG", None)
    argv = [NEXUS, "--kubeconfig", str(server.kubeconfig), "-n", NS, *args]
    return await asyncio.to_thread(
        subprocess.run, argv, capture_output=True, text=True, env=env, timeout=timeout
    )


def workload(name: str, replicas: int, image: str) -> dict[str, Any]:
    return {
        "apiVersion": "hypermesh.io/v1",
        "kind": "Workload",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "replicas": replicas,
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "main", "image": image}]},
            },
        },
    }


@contextlib.asynccontextmanager
async def fake_agent(client: AsyncClient, app: str, delay: float = 0.0) -> AsyncIterator[None]:
    """Marks the app's Instances Ready (status subresource), as node agents would, after `delay`."""

    async def loop() -> None:
        await asyncio.sleep(delay)
        condition = {
            "type": "Ready",
            "status": "True",
            "reason": "ContainersReady",
            "message": "",
            "lastTransitionTime": "2020-01-01T00:00:00Z",
        }
        while True:
            listing = await client.list(INSTANCES, NS, label_selector=f"app={app}")
            for instance in listing["items"]:
                if instance["metadata"].get("deletionTimestamp") or get_condition(instance, "Ready"):
                    continue
                with contextlib.suppress(ApiError):
                    await client.update_status(
                        INSTANCES, instance["metadata"]["name"], NS,
                        {"phase": "Running", "conditions": [condition]},
                    )
            await asyncio.sleep(0.1)

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def image_of(obj: dict[str, Any]) -> str:
    return str(obj["spec"]["template"]["spec"]["containers"][0]["image"])


async def test_rollout_status_history_undo_restart(server: Server, home: Path) -> None:
    client = AsyncClient.from_config(load_config(str(server.kubeconfig)))
    try:
        await client.create(WORKLOADS, workload("web", 3, "busybox:1"))
        # The agent starts late, so status has something to wait for.
        async with fake_agent(client, "web", delay=1.0):
            done = await nexus(server, home, "rollout", "status", "workload", "web", "--timeout", "30s")
            assert done.returncode == 0, done.stderr
            lines = done.stdout.splitlines()
            assert lines[-1] == 'workload "web" successfully rolled out'
            assert any(line.startswith('Waiting for workload "web" rollout to finish') for line in lines), lines

            once = await nexus(server, home, "rollout", "status", "wl/web", "--watch=false")
            assert once.returncode == 0 and "successfully rolled out" in once.stdout

            # A new image is revision 2.
            await client.patch(WORKLOADS, "web", NS, {"spec": {"template": workload("web", 3, "busybox:2")["spec"]["template"]}})
            rolled = await nexus(server, home, "rollout", "status", "workload", "web", "--timeout", "30s")
            assert rolled.returncode == 0, rolled.stderr
            history = await nexus(server, home, "rollout", "history", "workload", "web")
            assert history.returncode == 0, history.stderr
            rows = history.stdout.splitlines()
            assert rows[0] == "workload.hypermesh.io/web"
            assert rows[1].split() == ["REVISION", "CHANGE-CAUSE"]
            assert [r.split()[0] for r in rows[2:]] == ["1", "2"]
            one = await nexus(server, home, "rollout", "history", "workload", "web", "--revision", "1")
            assert one.returncode == 0 and "busybox:1" in one.stdout and "revision #1" in one.stdout
            missing = await nexus(server, home, "rollout", "history", "workload", "web", "--revision", "9")
            assert missing.returncode == 1 and "revision 9" in missing.stderr

            # Undo puts the first image back; the controller records it as revision 3.
            undo = await nexus(server, home, "rollout", "undo", "workload", "web")
            assert undo.returncode == 0 and "rolled back" in undo.stdout, undo.stderr
            assert image_of(await client.get(WORKLOADS, "web", NS)) == "busybox:1"
            back = await nexus(server, home, "rollout", "status", "workload", "web", "--timeout", "30s")
            assert back.returncode == 0, back.stderr
            history = await nexus(server, home, "rollout", "history", "workload", "web")
            assert [r.split()[0] for r in history.stdout.splitlines()[2:]] == ["2", "3"]

            # --to-revision 2 goes forward to busybox:2 again.
            to_two = await nexus(server, home, "rollout", "undo", "workload", "web", "--to-revision", "2")
            assert to_two.returncode == 0, to_two.stderr
            assert image_of(await client.get(WORKLOADS, "web", NS)) == "busybox:2"

            # Restart stamps the template, which starts a rollout of the same image.
            restart = await nexus(server, home, "rollout", "restart", "workload", "web")
            assert restart.returncode == 0 and "restarted" in restart.stdout, restart.stderr
            wl = await client.get(WORKLOADS, "web", NS)
            assert "hypermesh.io/restartedAt" in wl["spec"]["template"]["metadata"]["annotations"]
            assert image_of(wl) == "busybox:2"
            final = await nexus(server, home, "rollout", "status", "workload", "web", "--timeout", "30s")
            assert final.returncode == 0, final.stderr
            history = await nexus(server, home, "rollout", "history", "workload", "web")
            assert len(history.stdout.splitlines()[2:]) >= 3
    finally:
        await client.aclose()


async def test_rollout_status_times_out_and_rejects_other_kinds(server: Server, home: Path) -> None:
    client = AsyncClient.from_config(load_config(str(server.kubeconfig)))
    try:
        # No agent marks these Instances ready: the rollout never finishes.
        await client.create(WORKLOADS, workload("stuck", 1, "busybox:1"))
        late = await nexus(server, home, "rollout", "status", "workload", "stuck", "--timeout", "1s")
        assert late.returncode == 1
        assert "timed out" in late.stderr
        assert 'Waiting for workload "stuck"' in late.stdout
        other = await nexus(server, home, "rollout", "status", "namespace", "default")
        assert other.returncode == 1 and "no rollout support" in other.stderr

        # With a progress deadline, a stuck rollout fails instead of waiting.
        body = workload("deadline", 1, "busybox:1")
        body["spec"]["progressDeadlineSeconds"] = 1
        await client.create(WORKLOADS, body)
        failed = await nexus(server, home, "rollout", "status", "workload", "deadline", "--timeout", "30s")
        assert failed.returncode == 1
        assert 'workload "deadline" exceeded its progress deadline' in failed.stderr
    finally:
        await client.aclose()
