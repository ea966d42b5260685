"""Graceful deletion of Instances end to end.

Three clusters, from the cheapest up:

- the API alone (`--no-controllers`): the server's rule. An unbound Instance goes at once; a
  bound one stays Terminating with deletionTimestamp and deletionGracePeriodSeconds; a later
  DELETE may shorten the period but not lengthen it; 0 removes it; dryRun changes nothing;
  finalizers still hold what they hold. nexus' and kubectl's flags send the right options;
- the controllers without any node agent: a Workload replaces a terminating Instance at once,
  and the Instance collector removes terminating Instances whose Node is gone or not Ready;
- a real agent running real containers: SIGTERM, the grace period, SIGKILL, the recorded exit,
  the forced path and drain.

The agent tests need root and runc; they are skipped elsewhere, the others run anywhere.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e import agent_harness
from tests.e2e.conftest import VENV_BIN, Server, free_port

pytestmark = pytest.mark.timeout(240)

NEXUS = str(VENV_BIN / "nexus")
INSTANCES = "/apis/hypermesh.io/v1/namespaces/default/instances"
NODES = "/apis/hypermesh.io/v1/nodes"

NODE = "graceful-e2e"
BRIDGE = f"hmg{os.getpid() % 10000}"
PREFIX = f"fd{(os.getpid() + 233) % 256:02x}:9ace::/48"
NODE_SPEC = agent_harness.AgentNode(NODE, BRIDGE, PREFIX)


def needs_agent(fn: Callable[..., Any]) -> Callable[..., Any]:
    for mark in agent_harness.REQUIREMENTS:
        fn = mark(fn)
    return fn


def eventually(check: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    return agent_harness.eventually(check, timeout, what)


# Helpers over raw HTTP (the agent-less clusters) and the CLIs


def instance_body(name: str, *, node: str | None = "somewhere", grace: int | None = None, script: str = "sleep 1000", **meta: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "main", "image": "busybox", "command": ["sh", "-c", script]}]}
    if node:
        spec["nodeName"] = node
    if grace is not None:
        spec["terminationGracePeriodSeconds"] = grace
    return {"apiVersion": "hypermesh.io/v1", "kind": "Instance", "metadata": {"name": name, "namespace": "default", **meta}, "spec": spec}


def create(http: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    answer = http.post(INSTANCES, json=body)
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


def get(http: httpx.Client, name: str) -> dict[str, Any] | None:
    answer = http.get(f"{INSTANCES}/{name}")
    if answer.status_code == 404:
        return None
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def delete(http: httpx.Client, name: str, options: dict[str, Any] | None = None, query: str = "") -> httpx.Response:
    return http.request("DELETE", f"{INSTANCES}/{name}{query}", json=options)


def seconds_until(timestamp: str) -> float:
    return (datetime.fromisoformat(timestamp.replace("Z", "+00:00")) - datetime.now(UTC)).total_seconds()


def nexus(server: Server, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [NEXUS, "--kubeconfig", str(server.kubeconfig), "-n", "default", *args],
        capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "HYPERMESH_HOME": str(server.data_dir.parent / "nexus-home"), "NO_COLOR": "1"},
    )


def force_delete(http: httpx.Client, name: str) -> None:
    delete(http, name, {"gracePeriodSeconds": 0})


# The API alone


@pytest.fixture(scope="module")
def api(server: Server) -> Iterator[httpx.Client]:
    with server.http() as http:
        yield http


def test_an_unbound_instance_goes_at_once(api: httpx.Client) -> None:
    create(api, instance_body("unbound", node=None))
    assert delete(api, "unbound").status_code == 200
    assert get(api, "unbound") is None


def test_a_finished_instance_goes_at_once(api: httpx.Client) -> None:
    created = create(api, instance_body("finished"))
    created["status"] = {"phase": "Succeeded"}
    assert api.put(f"{INSTANCES}/finished/status", json=created).status_code == 200
    delete(api, "finished")
    assert get(api, "finished") is None


def test_a_bound_instance_stays_terminating_with_its_grace_period(api: httpx.Client) -> None:
    create(api, instance_body("bound", grace=45))
    answer = delete(api, "bound")
    assert answer.status_code == 200
    meta = answer.json()["metadata"]
    assert meta["deletionGracePeriodSeconds"] == 45
    # As in Kubernetes, deletionTimestamp is when the grace period ends.
    assert 40 <= seconds_until(meta["deletionTimestamp"]) <= 46
    stored = get(api, "bound")
    assert stored is not None and stored["metadata"]["deletionGracePeriodSeconds"] == 45
    # Status writes (the agent reporting its containers stopping) do not complete the deletion.
    stored["status"] = {"phase": "Running"}
    assert api.put(f"{INSTANCES}/bound/status", json=stored).status_code == 200
    assert get(api, "bound") is not None
    force_delete(api, "bound")
    assert get(api, "bound") is None


def test_the_default_grace_period_is_the_specs_default(api: httpx.Client) -> None:
    create(api, instance_body("default-grace"))
    assert delete(api, "default-grace").json()["metadata"]["deletionGracePeriodSeconds"] == 30
    force_delete(api, "default-grace")


def test_a_later_delete_shortens_but_never_lengthens(api: httpx.Client) -> None:
    create(api, instance_body("shorten", grace=300))
    first = delete(api, "shorten", {"gracePeriodSeconds": 100}).json()["metadata"]
    assert first["deletionGracePeriodSeconds"] == 100
    longer = delete(api, "shorten", {"gracePeriodSeconds": 200}).json()["metadata"]
    assert longer["deletionGracePeriodSeconds"] == 100
    assert longer["deletionTimestamp"] == first["deletionTimestamp"]
    unspecified = delete(api, "shorten").json()["metadata"]
    assert unspecified["deletionGracePeriodSeconds"] == 100
    # The query parameter form (the python client may send it so) counts the same.
    shorter = delete(api, "shorten", query="?gracePeriodSeconds=10").json()["metadata"]
    assert shorter["deletionGracePeriodSeconds"] == 10
    assert 0 <= seconds_until(shorter["deletionTimestamp"]) <= 11
    assert get(api, "shorten") is not None
    force_delete(api, "shorten")
    assert get(api, "shorten") is None


def test_zero_removes_a_running_instance_at_once(api: httpx.Client) -> None:
    create(api, instance_body("force"))
    assert delete(api, "force", {"gracePeriodSeconds": 0}).status_code == 200
    assert get(api, "force") is None


def test_dry_run_changes_nothing(api: httpx.Client) -> None:
    create(api, instance_body("dry", grace=60))
    preview = delete(api, "dry", query="?dryRun=All").json()["metadata"]
    assert preview["deletionGracePeriodSeconds"] == 60
    assert "deletionTimestamp" not in get(api, "dry")["metadata"]  # type: ignore[index]
    # kubectl --dry-run=server sends it in DeleteOptions instead.
    delete(api, "dry", {"dryRun": ["All"], "gracePeriodSeconds": 0})
    assert "deletionTimestamp" not in get(api, "dry")["metadata"]  # type: ignore[index]
    delete(api, "dry", {"gracePeriodSeconds": 5})
    delete(api, "dry", {"gracePeriodSeconds": 0}, query="?dryRun=All")
    assert get(api, "dry")["metadata"]["deletionGracePeriodSeconds"] == 5  # type: ignore[index]
    force_delete(api, "dry")


def test_finalizers_and_grace_periods_both_hold_the_instance(api: httpx.Client) -> None:
    create(api, instance_body("held", grace=60, finalizers=["example.com/hold"]))
    meta = delete(api, "held").json()["metadata"]
    assert meta["deletionGracePeriodSeconds"] == 60
    # The last finalizer going does not end a running grace period: the node agent does.
    patch = api.patch(f"{INSTANCES}/held", json={"metadata": {"finalizers": None}}, headers={"content-type": "application/merge-patch+json"})
    assert patch.status_code == 200, patch.text
    assert get(api, "held") is not None
    force_delete(api, "held")
    assert get(api, "held") is None

    # Forced while a finalizer remains: the finalizer still decides.
    create(api, instance_body("held2", finalizers=["example.com/hold"]))
    meta = delete(api, "held2", {"gracePeriodSeconds": 0}).json()["metadata"]
    assert meta["deletionGracePeriodSeconds"] == 0 and meta["deletionTimestamp"]
    assert get(api, "held2") is not None
    api.patch(f"{INSTANCES}/held2", json={"metadata": {"finalizers": None}}, headers={"content-type": "application/merge-patch+json"})
    assert get(api, "held2") is None


def test_foreground_propagation_adds_its_finalizer_to_a_graceful_delete(api: httpx.Client) -> None:
    create(api, instance_body("fg", grace=20))
    meta = delete(api, "fg", {"propagationPolicy": "Foreground"}).json()["metadata"]
    assert meta["finalizers"] == ["foregroundDeletion"]
    assert meta["deletionGracePeriodSeconds"] == 20
    api.patch(f"{INSTANCES}/fg", json={"metadata": {"finalizers": None}}, headers={"content-type": "application/merge-patch+json"})
    force_delete(api, "fg")
    assert get(api, "fg") is None


def test_the_uid_precondition_protects_a_newer_instance(api: httpx.Client) -> None:
    old = create(api, instance_body("reborn"))
    force_delete(api, "reborn")
    create(api, instance_body("reborn"))
    answer = delete(api, "reborn", {"gracePeriodSeconds": 0, "preconditions": {"uid": old["metadata"]["uid"]}})
    assert answer.status_code == 409
    assert get(api, "reborn") is not None
    force_delete(api, "reborn")


def test_a_grace_period_that_is_not_a_number_is_refused(api: httpx.Client) -> None:
    create(api, instance_body("badgrace"))
    answer = delete(api, "badgrace", {"gracePeriodSeconds": "soon"})
    assert answer.status_code == 400
    assert "gracePeriodSeconds" in answer.json()["message"]
    force_delete(api, "badgrace")


def test_nexus_grace_period_now_and_force(server: Server, api: httpx.Client) -> None:
    for name in ("nx-grace", "nx-now", "nx-zero", "nx-force"):
        create(api, instance_body(name, grace=300))
    done = nexus(server, "delete", "instance", "nx-grace", "--grace-period", "7")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == 'instance.hypermesh.io "nx-grace" deleted'
    assert get(api, "nx-grace")["metadata"]["deletionGracePeriodSeconds"] == 7  # type: ignore[index]

    assert nexus(server, "delete", "instance", "nx-now", "--now").returncode == 0
    assert get(api, "nx-now")["metadata"]["deletionGracePeriodSeconds"] == 1  # type: ignore[index]

    # A bare 0 is made 1, as kubectl does: only --force may skip the node.
    assert nexus(server, "delete", "instance", "nx-zero", "--grace-period=0").returncode == 0
    assert get(api, "nx-zero")["metadata"]["deletionGracePeriodSeconds"] == 1  # type: ignore[index]

    forced = nexus(server, "delete", "instance", "nx-force", "--force", "--grace-period=0")
    assert forced.returncode == 0, forced.stderr
    assert "Immediate deletion does not wait for confirmation that the running resource has been terminated" in forced.stderr
    assert forced.stdout.strip() == 'instance.hypermesh.io "nx-force" force deleted'
    assert get(api, "nx-force") is None

    both = nexus(server, "delete", "instance", "nx-grace", "--now", "--grace-period", "3")
    assert both.returncode != 0 and "--now and --grace-period cannot be specified together" in both.stderr
    for name in ("nx-grace", "nx-now", "nx-zero"):
        force_delete(api, name)


def test_kubectl_sends_its_grace_period(server: Server, api: httpx.Client) -> None:
    create(api, instance_body("kc", grace=300))
    server.kubectl("delete", "instance", "kc", "-n", "default", "--dry-run=server")
    assert "deletionTimestamp" not in get(api, "kc")["metadata"]  # type: ignore[index]
    server.kubectl("delete", "instance", "kc", "-n", "default", "--grace-period=5", "--wait=false")
    assert get(api, "kc")["metadata"]["deletionGracePeriodSeconds"] == 5  # type: ignore[index]
    result = server.kubectl("delete", "instance", "kc", "-n", "default", "--force", "--grace-period=0")
    assert "Immediate deletion" in result.stderr
    assert get(api, "kc") is None


# Controllers, no agent


@pytest.fixture(scope="module")
def controlled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, httpx.Client]]:
    srv = Server(tmp_path_factory.mktemp("graceful-ctl") / "data", free_port(), controllers=True)
    srv.start()
    try:
        with srv.http() as http:
            yield srv, http
    finally:
        srv.stop()


def node_body(name: str, ready: str) -> dict[str, Any]:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "hypermesh.io/v1", "kind": "Node", "metadata": {"name": name},
        "spec": {},
        "status": {
            "capacity": {"cpu": "4", "memory": "8Gi", "pods": "110"},
            "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": ready, "reason": "Test", "message": "", "lastHeartbeatTime": now, "lastTransitionTime": now}],
        },
    }


def make_node(http: httpx.Client, name: str, ready: str = "True") -> None:
    body = node_body(name, ready)
    answer = http.post(NODES, json=body)
    assert answer.status_code == 201, answer.text
    answer = http.patch(f"{NODES}/{name}/status", json={"status": body["status"]}, headers={"content-type": "application/merge-patch+json"})
    assert answer.status_code == 200, answer.text


def test_a_workload_replaces_a_terminating_instance_at_once(controlled: tuple[Server, httpx.Client]) -> None:
    _, http = controlled
    make_node(http, "steady")
    template = instance_body("unused", node="steady", grace=300)
    workload = {
        "apiVersion": "hypermesh.io/v1", "kind": "Workload",
        "metadata": {"name": "replaced", "namespace": "default"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "replaced"}},
                 "template": {"metadata": {"labels": {"app": "replaced"}}, "spec": template["spec"]}},
    }
    assert http.post("/apis/hypermesh.io/v1/namespaces/default/workloads", json=workload).status_code == 201

    def replicas() -> list[dict[str, Any]]:
        return list(http.get(INSTANCES, params={"labelSelector": "app=replaced"}).json()["items"])

    first = eventually(lambda: replicas() or None, what="the first replica")[0]
    delete(http, first["metadata"]["name"])

    def replaced() -> list[dict[str, Any]] | None:
        items = replicas()
        live = [i for i in items if not i["metadata"].get("deletionTimestamp")]
        old = [i for i in items if i["metadata"]["name"] == first["metadata"]["name"]]
        # The replacement exists while the old one is still terminating (nothing finishes it).
        return live if len(live) == 1 and old and old[0]["metadata"].get("deletionTimestamp") else None

    live = eventually(replaced, what="a replacement beside the terminating replica")
    assert live[0]["metadata"]["name"] != first["metadata"]["name"]
    http.request("DELETE", "/apis/hypermesh.io/v1/namespaces/default/workloads/replaced")
    for item in replicas():
        force_delete(http, item["metadata"]["name"])


def test_terminating_instances_of_a_deleted_node_are_removed(controlled: tuple[Server, httpx.Client]) -> None:
    _, http = controlled
    make_node(http, "doomed")
    create(http, instance_body("on-doomed", node="doomed", grace=300))
    delete(http, "on-doomed")
    time.sleep(1.0)
    assert get(http, "on-doomed") is not None  # a Ready node's agent would finish it
    assert http.request("DELETE", f"{NODES}/doomed").status_code == 200
    eventually(lambda: get(http, "on-doomed") is None, what="the Instance of the deleted node to go")


def test_a_terminating_instance_on_a_missing_node_is_removed(controlled: tuple[Server, httpx.Client]) -> None:
    _, http = controlled
    create(http, instance_body("on-nothing", node="never-registered", grace=300))
    delete(http, "on-nothing")
    eventually(lambda: get(http, "on-nothing") is None, what="the Instance of a missing node to go")


def test_a_not_ready_nodes_terminating_instance_goes_after_its_grace_period(controlled: tuple[Server, httpx.Client]) -> None:
    _, http = controlled
    make_node(http, "silent", ready="Unknown")
    create(http, instance_body("on-silent", node="silent", grace=300))
    started = time.monotonic()
    delete(http, "on-silent", {"gracePeriodSeconds": 3})
    time.sleep(1.0)
    assert get(http, "on-silent") is not None, "removed before its grace period passed"
    eventually(lambda: get(http, "on-silent") is None, what="the Instance of the not-Ready node to go")
    assert time.monotonic() - started >= 2.0


# A real agent


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path, httpx.Client]]:
    with agent_harness.running_cluster(tmp_path_factory.mktemp("graceful"), NODE_SPEC) as (server, agent_dir):
        with server.http() as http:
            yield server, agent_dir, http


def run_on_node(http: httpx.Client, name: str, script: str, grace: int) -> dict[str, Any]:
    """Create an Instance on the agent's node and wait until its container runs."""
    create(http, instance_body(name, node=NODE, grace=grace, script=script))

    def running() -> dict[str, Any] | None:
        item = get(http, name)
        statuses = ((item or {}).get("status") or {}).get("containerStatuses") or []
        return item if statuses and "running" in statuses[0]["state"] else None

    return dict(eventually(running, timeout=60, what=f"{name} running"))


class Watch:
    """The watch events of one Instance from a resourceVersion on, collected in a thread
    until DELETED (or the timeout)."""

    def __init__(self, server: Server, name: str, since: str, timeout: int = 120) -> None:
        self.events: list[tuple[str, dict[str, Any], float]] = []
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(server, name, since, timeout), daemon=True)
        self._thread.start()

    def _run(self, server: Server, name: str, since: str, timeout: int) -> None:
        params = {"watch": "true", "resourceVersion": since, "fieldSelector": f"metadata.name={name}", "timeoutSeconds": str(timeout)}
        try:
            with server.http() as http, http.stream("GET", INSTANCES, params=params, timeout=timeout + 10) as stream:
                for line in stream.iter_lines():
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    self.events.append((event["type"], event["object"], time.monotonic()))
                    if event["type"] == "DELETED":
                        return
        finally:
            self.done.set()

    def wait(self, timeout: float) -> list[tuple[str, dict[str, Any], float]]:
        assert self.done.wait(timeout), f"no DELETED within {timeout:.0f}s; saw {[t for t, _, _ in self.events]}"
        return self.events


def last_terminated(events: list[tuple[str, dict[str, Any], float]]) -> dict[str, Any] | None:
    """The main container's terminated state in the last event that carried one."""
    found = None
    for _, obj, _ in events:
        for status in (obj.get("status") or {}).get("containerStatuses") or []:
            if "terminated" in status.get("state", {}):
                found = status["state"]["terminated"]
    return found


@needs_agent
def test_a_container_that_stops_on_sigterm_gets_the_time_and_its_exit_is_recorded(cluster: tuple[Server, Path, httpx.Client]) -> None:
    server, agent_dir, http = cluster
    script = "trap 'echo stopping; sleep 2; exit 0' TERM; echo up; while true; do sleep 0.2; done"
    item = run_on_node(http, "polite", script, grace=60)
    uid = item["metadata"]["uid"]
    watch = Watch(server, "polite", item["metadata"]["resourceVersion"])
    started = time.monotonic()
    answer = delete(http, "polite")
    meta = answer.json()["metadata"]
    assert meta["deletionGracePeriodSeconds"] == 60 and meta["deletionTimestamp"]
    # Terminating, visibly, while the container takes its two seconds.
    time.sleep(1.0)
    still = get(http, "polite")
    assert still is not None and still["metadata"]["deletionTimestamp"]
    events = watch.wait(60)
    gone_after = events[-1][2] - started
    assert events[-1][0] == "DELETED"
    assert 1.5 <= gone_after < 40, gone_after
    terminated = last_terminated(events)
    assert terminated is not None and terminated["exitCode"] == 0 and terminated["reason"] == "Completed"
    final = [obj for kind, obj, _ in events if kind == "MODIFIED"][-1]
    assert final["status"]["phase"] == "Succeeded"
    assert not (agent_dir / "instances" / uid).exists()
    killing = http.get("/api/v1/namespaces/default/events", params={"fieldSelector": f"involvedObject.uid={uid},reason=Killing"}).json()["items"]
    assert killing and killing[0]["message"] == "Stopping container main"


@needs_agent
def test_a_container_ignoring_sigterm_is_killed_after_a_short_grace_period(cluster: tuple[Server, Path, httpx.Client]) -> None:
    server, _, http = cluster
    item = run_on_node(http, "stubborn", "trap '' TERM; while true; do sleep 0.2; done", grace=300)
    watch = Watch(server, "stubborn", item["metadata"]["resourceVersion"])
    started = time.monotonic()
    done = nexus(server, "delete", "instance", "stubborn", "--grace-period", "2")
    assert done.returncode == 0, done.stderr
    assert get(http, "stubborn")["metadata"]["deletionGracePeriodSeconds"] == 2  # type: ignore[index]
    events = watch.wait(120)
    # Generous: the point is that the spec's 300 s did not apply.
    assert events[-1][2] - started < 90
    terminated = last_terminated(events)
    assert terminated is not None and terminated["exitCode"] == 137


@needs_agent
def test_force_removes_at_once_and_the_agent_still_cleans_up(cluster: tuple[Server, Path, httpx.Client]) -> None:
    server, agent_dir, http = cluster
    item = run_on_node(http, "forced", "trap '' TERM; while true; do sleep 0.2; done", grace=300)
    forced = nexus(server, "delete", "instance", "forced", "--force", "--grace-period=0")
    assert forced.returncode == 0, forced.stderr
    assert "Immediate deletion does not wait" in forced.stderr
    assert get(http, "forced") is None
    # Told that the grace period is 0, the agent kills it within kubelet's 2 s floor, not 300 s.
    eventually(lambda: not (agent_dir / "instances" / item["metadata"]["uid"]).exists(), timeout=60, what="the agent to clean up")


@needs_agent
def test_drain_passes_its_grace_period(cluster: tuple[Server, Path, httpx.Client]) -> None:
    server, _, http = cluster
    run_on_node(http, "drained", "trap '' TERM; while true; do sleep 0.2; done", grace=300)
    started = time.monotonic()
    try:
        done = nexus(server, "drain", NODE, "--force", "--grace-period", "2", "--timeout", "120s", timeout=150)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"node/{NODE} drained" in done.stdout
        assert get(http, "drained") is None
        assert time.monotonic() - started < 90
    finally:
        nexus(server, "uncordon", NODE)


@pytest.fixture(scope="module")
def restart_agent(cluster: tuple[Server, Path, httpx.Client]) -> Iterator[Callable[[Callable[[], None]], None]]:
    """Stop the node agent, run a step while it is down, start it again (same node, same data).

    The harness owns the first agent process and does not hand it out, so it is found by its
    command line; the ones started here are stopped here, before the harness tears down."""
    server, agent_dir, _ = cluster
    spawned: list[subprocess.Popen[str]] = []
    command = [
        str(VENV_BIN / "hypermesh"), "agent", "--kubeconfig", str(server.kubeconfig), "--name", NODE,
        "--data-dir", str(agent_dir), "--bridge", BRIDGE, "--cluster-prefix", PREFIX,
    ]

    def stop_current() -> None:
        if spawned:
            spawned[-1].terminate()
            spawned[-1].wait(20)
            return
        wanted = "\0".join(command[1:])
        for proc in Path("/proc").iterdir():
            try:
                cmdline = (proc / "cmdline").read_bytes().decode()
            except (OSError, ValueError):
                continue
            if wanted in cmdline:
                pid = int(proc.name)
                os.kill(pid, 15)
                eventually(lambda p=proc: not p.exists() or "zombie" in (p / "status").read_text().lower(), timeout=20, what="the agent to stop")
                return
        raise AssertionError("the harness's agent process was not found")

    def restart(while_down: Callable[[], None]) -> None:
        stop_current()
        while_down()
        with open(agent_dir.parent / "agent-restarted.log", "a") as log:
            proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True)
        spawned.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"

    yield restart
    for proc in spawned:
        proc.terminate()
        proc.wait(20)


@needs_agent
def test_an_agent_back_from_a_restart_finishes_the_deletion_it_missed(
    cluster: tuple[Server, Path, httpx.Client], restart_agent: Callable[[Callable[[], None]], None]
) -> None:
    server, agent_dir, http = cluster
    script = "trap 'sleep 1; exit 0' TERM; while true; do sleep 0.2; done"
    item = run_on_node(http, "missed", script, grace=60)
    watch = Watch(server, "missed", item["metadata"]["resourceVersion"])

    def delete_while_down() -> None:
        delete(http, "missed")
        time.sleep(1.0)
        assert get(http, "missed") is not None  # nobody stops it while the agent is away

    restart_agent(delete_while_down)
    events = watch.wait(90)
    # The container left running by the stopped agent got its SIGTERM from the new one.
    terminated = last_terminated(events)
    assert terminated is not None and terminated["exitCode"] == 0
    assert not (agent_dir / "instances" / item["metadata"]["uid"]).exists()
