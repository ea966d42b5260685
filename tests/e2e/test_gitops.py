"""GitSync end to end: a bare git repository made here, a real server, the controller beside it.

Each test builds its own repository with the `git` binary (these machines reach no git host),
starts the GitSync controller in this process against the module's server over mutual TLS,
watching only the test's namespace (as tests/e2e/test_certificates.py does for its controller),
and drives everything the way a user would: commits, pushes, `nexus` commands, hand edits.
Intervals are 1 s, so "the next poll" comes quickly.
"""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from controllers.gitsync import GITSYNCS, GitSyncSettings, setup
from hypermesh.client.aio import AsyncClient
from hypermesh.client.config import load_config
from hypermesh.client.errors import ApiError
from hypermesh.client.resources import Resource
from hypermesh.operator import InformerSettings, Operator, Settings, get_condition
from hypermesh.operator.events import EVENTS
from tests.e2e.conftest import Server, free_port

pytestmark = pytest.mark.timeout(120)

FAST = InformerSettings(watch_timeout=30, stall_timeout=15.0, backoff_base=0.05, backoff_cap=0.5)
SECRETS = Resource("", "v1", "Secret", "secrets", "secret", True)
NAMESPACES = Resource("", "v1", "Namespace", "namespaces", "namespace", False)
SERVICES = Resource("hypermesh.io", "v1", "Service", "services", "service", True, subresources=("status",))
WORKLOADS = Resource("hypermesh.io", "v1", "Workload", "workloads", "workload", True, subresources=("status",))
WIDGETS = Resource("example.com", "v1", "Widget", "widgets", "widget", True, subresources=("status",))
GIT_ENV = {
    **os.environ,
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "test",
    "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "test",
    "GIT_COMMITTER_EMAIL": "test@example.invalid",
}


# -- a repository ------------------------------------------------------------------------------


class Repo:
    """A bare repository (what the GitSync fetches) and a work tree that pushes to it."""

    def __init__(self, root: Path) -> None:
        self.bare = root / "origin.git"
        self.work = root / "work"
        root.mkdir(parents=True, exist_ok=True)
        self.git("init", "-q", "--bare", "-b", "main", str(self.bare), cwd=root)
        self.git("init", "-q", "-b", "main", str(self.work), cwd=root)
        self.git("remote", "add", "origin", str(self.bare))

    @property
    def url(self) -> str:
        return str(self.bare)

    def git(self, *args: str, cwd: Path | None = None) -> str:
        result = subprocess.run(
            ["git", *args], cwd=cwd or self.work, env=GIT_ENV, capture_output=True, text=True
        )
        assert result.returncode == 0, f"git {' '.join(args)}: {result.stderr}"
        return result.stdout.strip()

    def write(self, path: str, text: str) -> None:
        file = self.work / path
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(text)

    def remove(self, path: str) -> None:
        (self.work / path).unlink()

    def commit(self, message: str, branch: str = "main") -> str:
        """Commit everything and push it to `branch`; returns the commit id."""
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", message)
        self.git("push", "-q", "-f", "origin", f"HEAD:refs/heads/{branch}")
        return self.git("rev-parse", "HEAD")

    def tag(self, name: str, commit: str) -> None:
        """Point tag `name` at `commit` on the remote (moving it if it exists)."""
        self.git("tag", "-f", name, commit)
        self.git("push", "-q", "-f", "origin", f"refs/tags/{name}")


def secret(name: str, value: str, *, annotations: dict[str, str] | None = None, namespace: str | None = None) -> str:
    meta = f"  name: {name}\n"
    if namespace:
        meta += f"  namespace: {namespace}\n"
    if annotations:
        meta += "  annotations:\n" + "".join(f'    {k}: "{v}"\n' for k, v in annotations.items())
    return f"apiVersion: v1\nkind: Secret\nmetadata:\n{meta}stringData:\n  value: {value}\n"


def service(name: str, port: int) -> str:
    return (
        "apiVersion: hypermesh.io/v1\nkind: Service\nmetadata:\n"
        f"  name: {name}\nspec:\n  selector: {{app: {name}}}\n  ports:\n"
        f"  - name: http\n    port: {port}\n    targetPort: 8080\n"
    )


def gitsync(name: str, namespace: str, url: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "hypermesh.io/v1",
        "kind": "GitSync",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"url": url, "ref": {"branch": "main"}, "path": "deploy", "interval": "1s", **spec},
    }


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server serving the API only: the GitSync controller runs in this process."""
    srv = Server(tmp_path_factory.mktemp("gitops") / "data", free_port())
    srv.start()
    try:
        yield srv
    finally:
        code = srv.stop()
        assert code == 0, srv.log_path.read_text() if srv.log_path else ""


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    return Repo(tmp_path)


@pytest.fixture
async def client(server: Server, namespace: str, tmp_path: Path) -> AsyncIterator[AsyncClient]:
    """An admin client, with the GitSync controller watching the test's namespace."""
    admin = AsyncClient.from_config(load_config(str(server.kubeconfig)))
    op = Operator(admin, name="gitsync-e2e", namespace=namespace, settings=Settings(informers=FAST))
    settings = GitSyncSettings(
        data_dir=tmp_path / "gitops", min_timeout=20.0, dependency_retry=1.0, health_poll=0.1
    )
    setup(op, settings)
    stop = asyncio.Event()
    task = asyncio.create_task(op.run(stop))
    try:
        yield admin
    finally:
        stop.set()
        try:
            await asyncio.wait_for(task, 10)
        except TimeoutError:
            task.cancel()
        await admin.aclose()


async def eventually(
    check: Callable[[], Awaitable[Any]], timeout: float = 30.0, what: str = "condition"
) -> Any:
    """Poll `check` until it returns something truthy; return that."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await check()
        if result:
            return result
        assert asyncio.get_running_loop().time() < deadline, f"{what} not reached in {timeout}s"
        await asyncio.sleep(0.1)


async def get_or_none(client: AsyncClient, res: Resource, name: str, namespace: str | None) -> dict[str, Any] | None:
    try:
        return await client.get(res, name, namespace)
    except ApiError as exc:
        if exc.status == 404:
            return None
        raise


async def synced(client: AsyncClient, name: str, namespace: str, commit: str) -> dict[str, Any]:
    """Wait until the GitSync is Ready with `commit` applied; return it."""

    async def check() -> dict[str, Any] | None:
        obj = await client.get(GITSYNCS, name, namespace)
        ready = get_condition(obj, "Ready") or {}
        applied = (obj.get("status") or {}).get("lastAppliedRevision") or ""
        return obj if ready.get("status") == "True" and applied.endswith(commit) else None

    return await eventually(check, what=f"{name} Ready at {commit[:8]}")


async def condition(client: AsyncClient, name: str, namespace: str, type_: str, reason: str) -> dict[str, Any]:
    """Wait until condition `type_` has `reason`; return the GitSync."""

    async def check() -> dict[str, Any] | None:
        obj = await client.get(GITSYNCS, name, namespace)
        found = get_condition(obj, type_) or {}
        return obj if found.get("reason") == reason else None

    return await eventually(check, what=f"{name} {type_} reason {reason}")


def value(obj: dict[str, Any]) -> str:
    return base64.b64decode(obj["data"]["value"]).decode()


async def events(client: AsyncClient, name: str, namespace: str) -> list[dict[str, Any]]:
    listed = await client.list(EVENTS, namespace, field_selector=f"involvedObject.name={name}")
    return listed["items"]


# -- the tests ---------------------------------------------------------------------------------


async def test_initial_sync_then_a_commit_that_changes_adds_and_removes(
    client: AsyncClient, repo: Repo, namespace: str
) -> None:
    repo.write("deploy/a.yaml", secret("a", "one"))
    repo.write("deploy/b.yaml", secret("b", "one") + "---\n" + service("web", 80))
    repo.write("elsewhere/ignored.yaml", secret("ignored", "x"))
    first = repo.commit("first")
    await client.create(GITSYNCS, gitsync("apps", namespace, repo.url))

    obj = await synced(client, "apps", namespace, first)
    status = obj["status"]
    assert status["lastAppliedRevision"] == f"main@sha1:{first}"
    assert status["lastAttemptedRevision"] == f"main@sha1:{first}"
    assert {(e["kind"], e["name"]) for e in status["inventory"]} == {
        ("Secret", "a"), ("Secret", "b"), ("Service", "web")
    }
    assert all(e.get("namespace") == namespace for e in status["inventory"])
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "Ready": "True", "Reconciling": "False", "Stalled": "False"
    }
    a = await client.get(SECRETS, "a", namespace)
    assert value(a) == "one"
    labels = a["metadata"]["labels"]
    assert labels == {"gitsync.hypermesh.io/name": "apps", "gitsync.hypermesh.io/namespace": namespace}
    managers = {(m["manager"], m["operation"]) for m in a["metadata"]["managedFields"]}
    assert ("gitsync/apps", "Apply") in managers
    assert await get_or_none(client, SECRETS, "ignored", namespace) is None

    # One commit changes a, adds c and removes b (and the Service with it).
    repo.write("deploy/a.yaml", secret("a", "two"))
    repo.write("deploy/sub/c.yaml", secret("c", "new"))
    repo.remove("deploy/b.yaml")
    second = repo.commit("second")
    obj = await synced(client, "apps", namespace, second)
    assert value(await client.get(SECRETS, "a", namespace)) == "two"
    assert value(await client.get(SECRETS, "c", namespace)) == "new"
    assert await get_or_none(client, SECRETS, "b", namespace) is None
    assert await get_or_none(client, SERVICES, "web", namespace) is None
    assert {(e["kind"], e["name"]) for e in obj["status"]["inventory"]} == {("Secret", "a"), ("Secret", "c")}
    synced_events = [e["message"] for e in await events(client, "apps", namespace) if e["reason"] == "Synced"]
    assert any(
        "Secret/a (namespace" in m and "configured (data.value)" in m and "Secret/c" in m
        and "created" in m and "Secret/b" in m and "pruned" in m
        for m in synced_events
    ), synced_events


async def test_drift_is_put_back_and_the_event_names_the_fields(
    client: AsyncClient, repo: Repo, namespace: str
) -> None:
    repo.write("deploy/app.yaml", secret("creds", "from-git") + "---\n" + service("web", 80))
    first = repo.commit("first")
    await client.create(GITSYNCS, gitsync("drift", namespace, repo.url))
    await synced(client, "drift", namespace, first)

    # Hand edits: a value and a port's target (a label someone adds is theirs and stays).
    encoded = base64.b64encode(b"by-hand").decode()
    await client.patch(SECRETS, "creds", namespace, {"data": {"value": encoded}, "metadata": {"labels": {"extra": "mine"}}})
    edit = [{"op": "replace", "path": "/spec/ports/0/targetPort", "value": 9090}]
    await client.patch(SERVICES, "web", namespace, edit, patch_type="json")

    async def put_back() -> bool:
        creds = await client.get(SECRETS, "creds", namespace)
        web = await client.get(SERVICES, "web", namespace)
        return value(creds) == "from-git" and web["spec"]["ports"] == [
            {"name": "http", "port": 80, "targetPort": 8080}
        ]

    await eventually(put_back, what="drift put back")
    creds = await client.get(SECRETS, "creds", namespace)
    assert creds["metadata"]["labels"]["extra"] == "mine"

    async def drift_events() -> list[str]:
        found = await events(client, "drift", namespace)
        return [e["message"] for e in found if e["reason"] == "DriftCorrected"]

    messages = await eventually(lambda: _all_of(drift_events, 2), what="two DriftCorrected events")
    joined = "\n".join(messages)
    assert f"Secret/creds (namespace {namespace}): data.value changed outside the source" in joined
    assert f"Service/web (namespace {namespace}): spec.ports[0].targetPort changed outside the source" in joined
    # The value itself is never in an Event.
    assert "by-hand" not in joined and "from-git" not in joined


async def _all_of(fetch: Callable[[], Awaitable[list[str]]], count: int) -> list[str] | None:
    found = await fetch()
    return found if len(found) >= count else None


async def test_an_invalid_commit_keeps_the_last_good_state_and_says_where(
    client: AsyncClient, repo: Repo, namespace: str
) -> None:
    repo.write("deploy/a.yaml", secret("a", "good"))
    repo.write("deploy/web.yaml", service("web", 80))
    good = repo.commit("good")
    await client.create(GITSYNCS, gitsync("strict", namespace, repo.url))
    await synced(client, "strict", namespace, good)

    # Broken YAML in one file, a good change in another: nothing of the commit is applied.
    repo.write("deploy/a.yaml", secret("a", "changed"))
    repo.write("deploy/web.yaml", "apiVersion: hypermesh.io/v1\nkind: Service\nmetadata:\n  name: web\n   bad: [\n")
    broken = repo.commit("broken yaml")
    obj = await condition(client, "strict", namespace, "Stalled", "ValidationFailed")
    ready = get_condition(obj, "Ready") or {}
    assert ready["status"] == "False" and ready["reason"] == "ValidationFailed"
    assert ready["message"].startswith(f"revision main@sha1:{broken}: deploy/web.yaml:5: invalid YAML")
    assert obj["status"]["lastAttemptedRevision"] == f"main@sha1:{broken}"
    assert obj["status"]["lastAppliedRevision"] == f"main@sha1:{good}"
    assert value(await client.get(SECRETS, "a", namespace)) == "good"

    # A schema error: the server's dry run refuses it, named by file, line and field.
    repo.write("deploy/web.yaml", service("web", 80).replace("port: 80", 'port: "eighty"'))
    schema = repo.commit("schema error")

    async def refused() -> dict[str, Any] | None:
        obj = await client.get(GITSYNCS, "strict", namespace)
        ready = get_condition(obj, "Ready") or {}
        return obj if schema in ready.get("message", "") else None

    obj = await eventually(refused, what="the schema error reported")
    ready = get_condition(obj, "Ready") or {}
    assert ready["reason"] == "ValidationFailed"
    assert "deploy/web.yaml:9: Service/web: spec.ports[0].port: Invalid value" in ready["message"], ready["message"]
    assert (get_condition(obj, "Stalled") or {}).get("status") == "True"
    assert value(await client.get(SECRETS, "a", namespace)) == "good"
    assert (await client.get(SERVICES, "web", namespace))["spec"]["ports"][0]["port"] == 80
    warnings = [e for e in await events(client, "strict", namespace) if e["type"] == "Warning"]
    assert any(e["reason"] == "ValidationFailed" for e in warnings)

    # Fixed: the next commit applies, and Stalled clears.
    repo.write("deploy/web.yaml", service("web", 90))
    fixed = repo.commit("fixed")
    obj = await synced(client, "strict", namespace, fixed)
    assert (get_condition(obj, "Stalled") or {}).get("status") == "False"
    assert value(await client.get(SECRETS, "a", namespace)) == "changed"
    assert "errors" not in obj["status"]


WIDGET_CRD = """\
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.example.com}
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: {type: integer}
          status:
            type: object
            x-kubernetes-preserve-unknown-fields: true
"""


WORKLOAD = """\
apiVersion: hypermesh.io/v1
kind: Workload
metadata:
  name: gate
  namespace: {namespace}
  annotations:
    hypermesh.io/sync-wave: "-1"
spec:
  replicas: 1
  template:
    metadata: {{labels: {{app: gate}}}}
    spec:
      containers:
      - {{name: web, image: busybox, command: [httpd, -f, -p, "8080"]}}
"""


async def test_waves_wait_for_the_previous_wave_and_crds_and_namespaces_go_first(
    client: AsyncClient, repo: Repo, namespace: str
) -> None:
    # A Namespace and a CRD that the same commit's objects need (they cannot be dry-run before
    # those exist), a Workload in wave -1 that is healthy only once Available (no workloads
    # controller runs here: the test plays it), and a Secret in wave 1.
    extra = f"{namespace}-x"[:63]
    repo.write("deploy/00-crd.yaml", WIDGET_CRD)
    repo.write("deploy/01-ns.yaml", f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {extra}\n")
    repo.write(
        "deploy/widget.yaml",
        f"apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w\n  namespace: {extra}\nspec:\n  size: 1\n",
    )
    repo.write("deploy/gate.yaml", WORKLOAD.format(namespace=extra))
    repo.write("deploy/late.yaml", secret("late", "v", annotations={"hypermesh.io/sync-wave": "1"}, namespace=extra))
    first = repo.commit("waves")
    await client.create(GITSYNCS, gitsync("waves", namespace, repo.url, timeout="60s"))

    gate = await eventually(lambda: get_or_none(client, WORKLOADS, "gate", extra), what="the wave -1 Workload")
    # Waves 0 (the Widget) and 1 wait for the Workload to be Available.
    await asyncio.sleep(2.0)
    assert await get_or_none(client, WIDGETS, "w", extra) is None
    assert await get_or_none(client, SECRETS, "late", extra) is None
    obj = await client.get(GITSYNCS, "waves", namespace)
    assert (get_condition(obj, "Reconciling") or {}).get("status") == "True"

    await client.update_status(
        WORKLOADS, "gate", extra,
        {
            "observedGeneration": gate["metadata"]["generation"], "replicas": 1, "updatedReplicas": 1,
            "readyReplicas": 1, "availableReplicas": 1,
            "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
        },
    )  # fmt: skip
    late = await eventually(lambda: get_or_none(client, SECRETS, "late", extra), what="the wave 1 Secret")
    widget = await client.get(WIDGETS, "w", extra)
    assert int(widget["metadata"]["resourceVersion"]) < int(late["metadata"]["resourceVersion"])
    obj = await synced(client, "waves", namespace, first)
    kinds = [e["kind"] for e in obj["status"]["inventory"]]
    assert kinds[:2] == ["Namespace", "CustomResourceDefinition"]
    assert set(kinds[2:]) == {"Secret", "Workload", "Widget"}

    await client.delete(NAMESPACES, extra)


async def test_depends_on_waits_until_the_dependency_is_ready(
    client: AsyncClient, repo: Repo, namespace: str, tmp_path: Path
) -> None:
    base = Repo(tmp_path / "base")
    base.write("deploy/base.yaml", secret("base", "b"))
    base_commit = base.commit("base")
    repo.write("deploy/app.yaml", secret("app", "a"))
    app_commit = repo.commit("app")
    # The app first, naming a base that does not exist yet.
    await client.create(GITSYNCS, gitsync("app", namespace, repo.url, dependsOn=[{"name": "base"}]))
    obj = await condition(client, "app", namespace, "Ready", "DependencyNotReady")
    assert f"dependency GitSync {namespace}/base does not exist" in (get_condition(obj, "Ready") or {})["message"]
    assert await get_or_none(client, SECRETS, "app", namespace) is None

    # A base that cannot become Ready (its path is missing) keeps the app waiting.
    await client.create(GITSYNCS, gitsync("base", namespace, base.url, path="nope"))

    async def base_not_ready() -> bool:
        obj = await client.get(GITSYNCS, "app", namespace)
        return f"dependency GitSync {namespace}/base is not Ready" in (get_condition(obj, "Ready") or {}).get("message", "")

    await eventually(base_not_ready, what="the app waiting for a base that is not Ready")
    await asyncio.sleep(1.5)
    assert await get_or_none(client, SECRETS, "app", namespace) is None

    await client.patch(GITSYNCS, "base", namespace, {"spec": {"path": "deploy"}})
    await synced(client, "base", namespace, base_commit)
    await synced(client, "app", namespace, app_commit)
    assert await client.get(SECRETS, "app", namespace)


async def test_suspend_stops_syncing_until_resumed(
    client: AsyncClient, repo: Repo, namespace: str
) -> None:
    repo.write("deploy/a.yaml", secret("a", "one"))
    first = repo.commit("first")
    await client.create(GITSYNCS, gitsync("paused", namespace, repo.url))
    await synced(client, "paused", namespace, first)

    await client.patch(GITSYNCS, "paused", namespace, {"spec": {"suspend": True}})
    await asyncio.sleep(0.5)
    repo.write("deploy/a.yaml", secret("a", "two"))
    second = repo.commit("second")
    await asyncio.sleep(3.0)
    assert value(await client.get(SECRETS, "a", namespace)) == "one"
    obj = await client.get(GITSYNCS, "paused", namespace)
    assert obj["status"]["lastAppliedRevision"] == f"main@sha1:{first}"

    await client.patch(GITSYNCS, "paused", namespace, {"spec": {"suspend": False}})
    await synced(client, "paused", namespace, second)
    assert value(await client.get(SECRETS, "a", namespace)) == "two"


async def test_a_ref_moved_to_another_commit_is_followed(
    client: AsyncClient, repo: Repo, namespace: str
) -> None:
    repo.write("deploy/a.yaml", secret("a", "v1"))
    v1 = repo.commit("v1")
    repo.tag("release", v1)
    repo.write("deploy/a.yaml", secret("a", "v2"))
    repo.write("deploy/b.yaml", secret("b", "v2"))
    v2 = repo.commit("v2")
    await client.create(GITSYNCS, gitsync("tagged", namespace, repo.url, ref={"tag": "release"}))
    obj = await synced(client, "tagged", namespace, v1)
    assert obj["status"]["lastAppliedRevision"] == f"release@sha1:{v1}"
    assert value(await client.get(SECRETS, "a", namespace)) == "v1"

    # The tag moves forward: picked up on the next poll.
    repo.tag("release", v2)
    await synced(client, "tagged", namespace, v2)
    assert value(await client.get(SECRETS, "a", namespace)) == "v2"
    assert await client.get(SECRETS, "b", namespace)

    # The spec pins the old commit: back to v1, and b (not in v1) is pruned.
    await client.patch(GITSYNCS, "tagged", namespace, {"spec": {"ref": {"commit": v1, "tag": None}}})
    obj = await synced(client, "tagged", namespace, v1)
    assert obj["status"]["lastAppliedRevision"] == f"sha1:{v1}"
    assert value(await client.get(SECRETS, "a", namespace)) == "v1"
    assert await get_or_none(client, SECRETS, "b", namespace) is None


async def test_prune_never_touches_what_the_gitsync_does_not_own(
    client: AsyncClient, repo: Repo, namespace: str
) -> None:
    repo.write("deploy/kept.yaml", secret("kept", "k", annotations={"hypermesh.io/prune": "disabled"}))
    repo.write("deploy/gone.yaml", secret("gone", "g"))
    repo.write("deploy/README.md", "Not a manifest: ignored, and keeps the directory in git.\n")
    first = repo.commit("first")
    await client.create(GITSYNCS, gitsync("owner", namespace, repo.url))
    await synced(client, "owner", namespace, first)
    # Someone else's Secret, created by hand, and one labelled as another GitSync's.
    await client.create(SECRETS, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hand", "namespace": namespace}})
    foreign_labels = {"gitsync.hypermesh.io/name": "other", "gitsync.hypermesh.io/namespace": namespace}
    await client.create(SECRETS, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "theirs", "namespace": namespace, "labels": foreign_labels}})

    repo.remove("deploy/kept.yaml")
    repo.remove("deploy/gone.yaml")
    second = repo.commit("remove both")
    obj = await synced(client, "owner", namespace, second)
    assert await get_or_none(client, SECRETS, "gone", namespace) is None
    assert await client.get(SECRETS, "kept", namespace)
    assert await client.get(SECRETS, "hand", namespace)
    assert obj["status"].get("inventory", []) == []

    # Declaring an object another GitSync owns is refused, and nothing of the commit applies.
    repo.write("deploy/theirs.yaml", secret("theirs", "mine now"))
    repo.write("deploy/new.yaml", secret("new", "n"))
    third = repo.commit("take theirs")

    async def refused() -> dict[str, Any] | None:
        obj = await client.get(GITSYNCS, "owner", namespace)
        ready = get_condition(obj, "Ready") or {}
        return obj if third in ready.get("message", "") else None

    obj = await eventually(refused, what="the foreign object refused")
    message = (get_condition(obj, "Ready") or {})["message"]
    assert f"deploy/theirs.yaml:1: Secret/theirs is managed by GitSync {namespace}/other" in message
    assert "data" not in await client.get(SECRETS, "theirs", namespace)
    assert await get_or_none(client, SECRETS, "new", namespace) is None


async def test_deleting_a_gitsync_prunes_what_it_applied(
    client: AsyncClient, repo: Repo, namespace: str
) -> None:
    repo.write("deploy/a.yaml", secret("a", "x"))
    repo.write("deploy/kept.yaml", secret("kept", "k", annotations={"hypermesh.io/prune": "disabled"}))
    first = repo.commit("first")
    await client.create(GITSYNCS, gitsync("doomed", namespace, repo.url))
    obj = await synced(client, "doomed", namespace, first)
    assert "hypermesh.io/gitsync" in obj["metadata"]["finalizers"]
    await client.delete(GITSYNCS, "doomed", namespace)
    await eventually(lambda: _gone(client, GITSYNCS, "doomed", namespace), what="the GitSync gone")
    assert await get_or_none(client, SECRETS, "a", namespace) is None
    assert await client.get(SECRETS, "kept", namespace)


async def _gone(client: AsyncClient, res: Resource, name: str, namespace: str) -> bool:
    return await get_or_none(client, res, name, namespace) is None


async def test_nexus_gitops_sync_forces_a_sync_now(
    client: AsyncClient, repo: Repo, namespace: str, server: Server
) -> None:
    repo.write("deploy/a.yaml", secret("a", "one"))
    first = repo.commit("first")
    await client.create(GITSYNCS, gitsync("slow", namespace, repo.url, interval="1h"))
    await synced(client, "slow", namespace, first)
    repo.write("deploy/a.yaml", secret("a", "two"))
    second = repo.commit("second")

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hypermesh.cli.nexus", "--kubeconfig", str(server.kubeconfig),
        "-n", namespace, "gitops", "sync", "slow", "--timeout", "30s",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert f"gitsync.hypermesh.io/slow synced: Applied revision: main@sha1:{second}" in out.decode()
    assert value(await client.get(SECRETS, "a", namespace)) == "two"
    obj = await client.get(GITSYNCS, "slow", namespace)
    requested = obj["metadata"]["annotations"]["hypermesh.io/sync-requested-at"]
    assert obj["status"]["lastHandledSyncAt"] == requested


async def test_a_git_failure_says_what_git_said(
    client: AsyncClient, repo: Repo, namespace: str
) -> None:
    repo.write("deploy/a.yaml", secret("a", "one"))
    repo.commit("first")
    await client.create(GITSYNCS, gitsync("lost", namespace, repo.url, ref={"branch": "nope"}))
    obj = await condition(client, "lost", namespace, "Ready", "GitOperationFailed")
    message = (get_condition(obj, "Ready") or {})["message"]
    assert f'fetching branch "nope" of {repo.url} failed: fatal: couldn\'t find remote ref refs/heads/nope' in message
    assert (get_condition(obj, "Stalled") or {}).get("status") == "False"


async def test_wait_makes_ready_mean_every_object_is_healthy(
    client: AsyncClient, repo: Repo, namespace: str
) -> None:
    repo.write("deploy/gate.yaml", WORKLOAD.format(namespace=namespace).replace('    hypermesh.io/sync-wave: "-1"\n', '    team: a\n'))
    repo.write("deploy/s.yaml", secret("s", "v"))
    commit = repo.commit("a workload")
    await client.create(GITSYNCS, gitsync("waiting", namespace, repo.url, wait=True, timeout="2s"))

    # No workloads controller runs here, so the Workload never becomes Available in time.
    obj = await condition(client, "waiting", namespace, "Ready", "HealthCheckFailed")
    message = (get_condition(obj, "Ready") or {})["message"]
    assert f"wave 0 not healthy after 2s: Workload/gate (namespace {namespace}): not yet observed" in message
    assert obj["status"]["errors"] == [
        {"apiVersion": "hypermesh.io/v1", "kind": "Workload", "name": "gate", "namespace": namespace,
         "message": "not yet observed by the workloads controller"},
    ]  # fmt: skip
    assert obj["status"]["lastAttemptedRevision"] == f"main@sha1:{commit}"
    assert "lastAppliedRevision" not in obj["status"]
    # What was applied is in the inventory all the same, so it can be pruned later.
    assert {e["name"] for e in obj["status"]["inventory"]} == {"gate", "s"}

    gate = await client.get(WORKLOADS, "gate", namespace)
    await client.update_status(
        WORKLOADS, "gate", namespace,
        {
            "observedGeneration": gate["metadata"]["generation"], "replicas": 1, "updatedReplicas": 1,
            "readyReplicas": 1, "availableReplicas": 1,
            "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
        },
    )  # fmt: skip
    obj = await synced(client, "waiting", namespace, commit)
    assert "errors" not in obj["status"]


async def test_a_kind_the_server_does_not_serve_is_named_with_its_place(
    client: AsyncClient, repo: Repo, namespace: str
) -> None:
    repo.write("deploy/w.yaml", "# a gadget\napiVersion: example.org/v1\nkind: Gadget\nmetadata:\n  name: g\n")
    commit = repo.commit("unknown kind")
    await client.create(GITSYNCS, gitsync("unknown", namespace, repo.url))
    obj = await condition(client, "unknown", namespace, "Ready", "ValidationFailed")
    message = (get_condition(obj, "Ready") or {})["message"]
    assert message == (
        f'revision main@sha1:{commit}: deploy/w.yaml:3: Gadget/g: kind: no kind "Gadget" is served in '
        'version "example.org/v1" (is its CustomResourceDefinition installed?)'
    )
    # A missing CRD may be installed later (by another GitSync): not Stalled, tried again.
    assert (get_condition(obj, "Stalled") or {}).get("status") == "False"
