"""`nexus` end to end: every command run as a user runs it, against a real server process.

nexus runs as a subprocess of the installed console script, with HYPERMESH_HOME in a temporary
directory (so discovery and transport caches never leak between runs) and the admin kubeconfig
the server wrote. Exact messages are checked where users read them (NotFound, unknown kinds,
conflicts), and exit codes everywhere.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import KUBECTL, VENV_BIN, Server

pytestmark = pytest.mark.e2e

NEXUS = str(VENV_BIN / "nexus")

WORKLOAD = """\
apiVersion: hypermesh.io/v1
kind: Workload
metadata:
  name: web
  labels: {app: web, tier: front}
spec:
  replicas: 3
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: busybox
        command: ["httpd", "-f", "-p", "8080"]
"""


class Nexus:
    """Runs nexus against one server with a private HYPERMESH_HOME."""

    def __init__(self, server: Server, home: Path) -> None:
        self.server = server
        self.env = {**os.environ, "HYPERMESH_HOME": str(home), "NO_COLOR": "1"}
        self.env.pop("KUBECONFIG", None)

    def argv(self, *args: str) -> list[str]:
        return [NEXUS, "--kubeconfig", str(self.server.kubeconfig), *args]

    def __call__(self, *args: str, input: str | None = None, code: int | None = 0, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(self.argv(*args), input=input, capture_output=True, text=True, env=self.env, timeout=timeout)
        if code is not None:
            assert result.returncode == code, f"nexus {' '.join(args)} exited {result.returncode}, wanted {code}:\n{result.stdout}\n{result.stderr}"
        return result

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(self.argv(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env)


@pytest.fixture(scope="module")
def nexus(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Nexus:
    return Nexus(server, tmp_path_factory.mktemp("nexus-home"))


class Lines:
    """Lines of a running process's stdout, read with a timeout."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.queue: queue.Queue[str] = queue.Queue()
        assert proc.stdout is not None
        stdout = proc.stdout
        threading.Thread(target=lambda: [self.queue.put(line) for line in stdout], daemon=True).start()

    def next(self, timeout: float = 10.0) -> str:
        try:
            return self.queue.get(timeout=timeout).rstrip("\n")
        except queue.Empty:
            raise AssertionError("no output line within the timeout") from None

    def until(self, word: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            line = self.next(max(0.1, deadline - time.monotonic()))
            if word in line:
                return line


@pytest.fixture
def streams() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        proc.terminate()
        proc.wait(5)


def test_version(nexus: Nexus) -> None:
    client_only = subprocess.run([NEXUS, "version", "--client"], capture_output=True, text=True, env={**nexus.env, "KUBECONFIG": "/nonexistent"})
    assert client_only.returncode == 0 and client_only.stdout.startswith("Client Version: v")
    both = nexus("version").stdout
    assert "Server Version: v1." in both
    data = json.loads(nexus("version", "-o", "json").stdout)
    assert data["serverVersion"]["major"] == "1"


def test_apply_get_describe_delete(nexus: Nexus, namespace: str) -> None:
    out = nexus("apply", "-n", namespace, "-f", "-", input=WORKLOAD).stdout
    assert out == "workload.hypermesh.io/web created\n"
    assert nexus("apply", "-n", namespace, "-f", "-", input=WORKLOAD).stdout == "workload.hypermesh.io/web unchanged\n"
    changed = WORKLOAD.replace("replicas: 3", "replicas: 4")
    assert nexus("apply", "-n", namespace, "-f", "-", input=changed).stdout == "workload.hypermesh.io/web configured\n"
    obj = json.loads(nexus("get", "wl", "web", "-n", namespace, "-o", "json").stdout)
    assert obj["spec"]["replicas"] == 4
    assert "managedFields" not in obj["metadata"]
    managers = {m["manager"] for m in json.loads(nexus("get", "wl", "web", "-n", namespace, "-o", "json", "--show-managed-fields").stdout)["metadata"]["managedFields"]}
    assert "nexus" in managers

    table = nexus("get", "workloads", "-n", namespace).stdout.splitlines()
    assert table[0].split() == ["NAME", "REPLICAS", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    assert table[1].split()[:2] == ["web", "4"]
    wide = nexus("get", "wl", "-n", namespace, "-o", "wide", "--show-labels").stdout
    assert "IMAGES" in wide and "busybox" in wide and "app=web,tier=front" in wide
    everywhere = nexus("get", "wl", "-A", "--no-headers").stdout
    assert any(line.split()[:2] == [namespace, "web"] for line in everywhere.splitlines())
    assert nexus("get", "wl", "-n", namespace, "-o", "name").stdout == "workload.hypermesh.io/web\n"
    assert nexus("get", "wl", "-n", namespace, "-o", "jsonpath={.items[*].spec.replicas}").stdout == "4"
    columns = nexus("get", "wl", "-n", namespace, "-o", "custom-columns=NAME:.metadata.name,IMAGE:.spec.template.spec.containers[*].image").stdout
    assert columns.splitlines() == ["NAME   IMAGE", "web    busybox"]
    yaml_out = nexus("get", "wl/web", "-n", namespace, "-o", "yaml").stdout
    assert yaml_out.startswith("apiVersion: hypermesh.io/v1\nkind: Workload\n") and "  replicas: 4\n" in yaml_out
    assert nexus("get", "wl", "-n", namespace, "-l", "tier=back").stderr.strip() == f"No resources found in {namespace} namespace."
    assert "web" in nexus("get", "wl", "-n", namespace, "--field-selector", "metadata.name=web").stdout

    described = nexus("describe", "wl", "web", "-n", namespace).stdout
    for expected in ("Name:         web", f"Namespace:    {namespace}", "Labels:       app=web", "              tier=front", "Spec:", "  replicas: 4", "Events:"):
        assert expected in described, described

    assert nexus("delete", "wl", "web", "-n", namespace, "--wait").stdout == 'workload.hypermesh.io "web" deleted\n'
    gone = nexus("get", "wl", "web", "-n", namespace, code=1)
    assert gone.stderr == 'Error from server (NotFound): workloads.hypermesh.io "web" not found\n'
    again = nexus("delete", "wl", "web", "-n", namespace, code=1)
    assert again.stderr == 'Error from server (NotFound): workloads.hypermesh.io "web" not found\n'
    nexus("delete", "wl", "web", "-n", namespace, "--ignore-not-found")


def test_describe_shows_owner_conditions_and_events(nexus: Nexus, server: Server, namespace: str) -> None:
    nexus("apply", "-n", namespace, "-f", "-", input=WORKLOAD)
    uid = json.loads(nexus("get", "wl", "web", "-n", namespace, "-o", "json").stdout)["metadata"]["uid"]
    owned = (
        "apiVersion: hypermesh.io/v1\nkind: Instance\nmetadata:\n  name: web-1\n"
        f"  ownerReferences: [{{apiVersion: hypermesh.io/v1, kind: Workload, name: web, uid: {uid}, controller: true}}]\n"
        "spec:\n  containers: [{name: web, image: busybox}]\n"
    )
    server.kubectl("apply", "-n", namespace, "-f", "-", input=owned)
    event = (
        f"apiVersion: v1\nkind: Event\nmetadata: {{name: web.1, namespace: {namespace}}}\n"
        f"involvedObject: {{apiVersion: hypermesh.io/v1, kind: Workload, name: web, namespace: {namespace}, uid: {uid}}}\n"
        "reason: ScaledUp\nmessage: scaled up to 3\ntype: Normal\nsource: {component: workloads-controller}\n"
        "lastTimestamp: '2026-01-01T00:00:00Z'\n"
    )
    server.kubectl("apply", "-n", namespace, "-f", "-", input=event)
    text = nexus("describe", "wl", "web", "-n", namespace).stdout
    assert "Owns:\n  instance.hypermesh.io/web-1" in text
    assert "ScaledUp" in text and "workloads-controller" in text and "scaled up to 3" in text
    inst = nexus("describe", "inst", "web-1", "-n", namespace).stdout
    assert "Owned By:\n  Workload/web (controller)" in inst


def test_errors_and_exit_codes(nexus: Nexus, server: Server, namespace: str, tmp_path: Path) -> None:
    unknown = nexus("get", "workload5", code=1)
    assert unknown.stderr == 'error: the server doesn\'t have a resource type "workload5"; did you mean "workloads"?\n'
    usage = nexus("get", "wl", "--no-such-flag", code=2)
    assert "unrecognized arguments: --no-such-flag" in usage.stderr
    assert nexus("frobnicate", code=2).returncode == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: [x\n")
    broken = nexus("apply", "-f", str(bad), code=1)
    assert broken.stderr.startswith(f"error: error parsing {bad} (line 5, column 1)")
    missing = subprocess.run([NEXUS, "--kubeconfig", str(tmp_path / "none"), "get", "wl"], capture_output=True, text=True, env=nexus.env)
    assert missing.returncode == 1 and "none" in missing.stderr and "kubeconfig" in missing.stderr
    assert nexus("get", "wl", "-o", "xml", code=1).stderr.startswith('error: unable to match a printer suitable for the output format "xml"')

    # A conflict names the owning manager and the field, and how to force.
    nexus("apply", "-n", namespace, "-f", "-", input=WORKLOAD)
    scale = "apiVersion: hypermesh.io/v1\nkind: Workload\nmetadata: {name: web}\nspec: {replicas: 7}\n"
    conflict = nexus("apply", "--field-manager", "scaler", "-n", namespace, "-f", "-", input=scale, code=1)
    assert conflict.stderr.startswith('Error from server (Conflict): Apply failed with 1 conflict: conflict with "nexus": .spec.replicas\n')
    assert '.spec.replicas is owned by "nexus"' in conflict.stderr and "--force-conflicts" in conflict.stderr
    forced = nexus("apply", "--field-manager", "scaler", "--force-conflicts", "-n", namespace, "-f", "-", input=scale)
    assert forced.stdout == "workload.hypermesh.io/web configured\n"


def test_get_watch_streams_rows(nexus: Nexus, namespace: str, streams: list[subprocess.Popen[str]]) -> None:
    nexus("apply", "-n", namespace, "-f", "-", input=WORKLOAD)
    proc = nexus.popen("get", "wl", "-n", namespace, "-w")
    streams.append(proc)
    lines = Lines(proc)
    assert lines.next().split()[0] == "NAME"
    assert lines.next().split()[:2] == ["web", "3"]
    nexus("apply", "-n", namespace, "-f", "-", input=WORKLOAD.replace("replicas: 3", "replicas: 6"))
    assert lines.until("web").split()[:2] == ["web", "6"]
    events = nexus.popen("watch", "wl", "-n", namespace)
    streams.append(events)
    event_lines = Lines(events)
    assert event_lines.next().split()[:4] == ["TYPE", "KIND", "NAME", "RESOURCE-VERSION"]
    assert event_lines.next().split()[:3] == ["ADDED", "Workload", "web"]
    nexus("delete", "wl", "web", "-n", namespace)
    assert lines.until("web").split()[0] == "web"
    assert event_lines.until("DELETED").split()[:3] == ["DELETED", "Workload", "web"]


def test_wait(nexus: Nexus, namespace: str) -> None:
    nexus("apply", "-n", namespace, "-f", "-", input=WORKLOAD)
    met = nexus("wait", "wl", "web", "-n", namespace, "--for=jsonpath={.spec.replicas}=3", "--timeout=10s")
    assert met.stdout == "workload.hypermesh.io/web condition met\n"
    waiter = nexus.popen("wait", "wl", "web", "-n", namespace, "--for=jsonpath={.spec.replicas}=5", "--timeout=20s")
    time.sleep(0.5)
    nexus("apply", "-n", namespace, "-f", "-", input=WORKLOAD.replace("replicas: 3", "replicas: 5"))
    assert waiter.wait(15) == 0
    started = time.monotonic()
    timed_out = nexus("wait", "wl", "web", "-n", namespace, "--for=condition=Paused", "--timeout=2s", code=1)
    assert timed_out.stderr == "error: timed out waiting for the condition on workloads/web\n"
    assert time.monotonic() - started < 8
    deleter = nexus.popen("wait", "wl", "web", "-n", namespace, "--for=delete", "--timeout=20s")
    time.sleep(0.5)
    nexus("delete", "wl", "web", "-n", namespace)
    assert deleter.wait(15) == 0
    missing = nexus("wait", "wl", "web", "-n", namespace, "--for=condition=Ready", "--timeout=2s", code=1)
    assert "NotFound" in missing.stderr


def test_diff(nexus: Nexus, namespace: str, tmp_path: Path) -> None:
    manifest = tmp_path / "web.yaml"
    manifest.write_text(WORKLOAD)
    creating = nexus("diff", "-n", namespace, "-f", str(manifest), code=1)
    assert "+kind: Workload" in creating.stdout
    nexus("apply", "-n", namespace, "-f", str(manifest))
    assert nexus("diff", "-n", namespace, "-f", str(manifest)).stdout == ""
    manifest.write_text(WORKLOAD.replace("replicas: 3", "replicas: 8"))
    changed = nexus("diff", "-n", namespace, "-f", str(manifest), code=1).stdout
    assert f"--- live/hypermesh.io.v1.Workload.{namespace}.web" in changed
    assert "-  replicas: 3\n" in changed and "+  replicas: 8\n" in changed
    # A diff changes nothing.
    assert json.loads(nexus("get", "wl", "web", "-n", namespace, "-o", "json").stdout)["spec"]["replicas"] == 3


def test_apply_directory_dry_run_and_prune(nexus: Nexus, namespace: str, tmp_path: Path) -> None:
    sub = tmp_path / "m" / "nested"
    sub.mkdir(parents=True)
    for name in ("a", "b"):
        text = WORKLOAD.replace("name: web\n", f"name: {name}\n").replace("tier: front", "set: demo")
        (tmp_path / "m" / f"{name}.yaml").write_text(text)
    (sub / "c.json").write_text(json.dumps({"apiVersion": "hypermesh.io/v1", "kind": "Workload", "metadata": {"name": "c", "labels": {"set": "demo"}}, "spec": {"template": {"metadata": {"labels": {"app": "c"}}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}}))
    dry = nexus("apply", "-n", namespace, "-f", str(tmp_path / "m"), "--dry-run=server").stdout
    assert dry.splitlines() == [f"workload.hypermesh.io/{n} created (server dry run)" for n in ("a", "b")]
    assert nexus("get", "wl", "-n", namespace, "-o", "name").stdout == ""
    out = nexus("apply", "-n", namespace, "-R", "-f", str(tmp_path / "m")).stdout
    assert out.splitlines() == [f"workload.hypermesh.io/{n} created" for n in ("a", "b", "c")]
    (tmp_path / "m" / "b.yaml").unlink()
    pruned = nexus("apply", "-n", namespace, "-R", "-f", str(tmp_path / "m"), "--prune", "-l", "set=demo").stdout
    assert pruned.splitlines() == ["workload.hypermesh.io/a unchanged", "workload.hypermesh.io/c unchanged", "workload.hypermesh.io/b pruned"]
    assert nexus("get", "wl", "-n", namespace, "-o", "name").stdout.split() == ["workload.hypermesh.io/a", "workload.hypermesh.io/c"]
    assert nexus("apply", "-f", str(tmp_path / "m"), "--prune", code=2).returncode == 2
    # (Foreground would wait for the garbage collector, which this server runs without.)
    deleted = nexus("delete", "-n", namespace, "-R", "-f", str(tmp_path / "m"), "--cascade=background", "--wait").stdout
    assert deleted.splitlines() == ['workload.hypermesh.io "a" deleted', 'workload.hypermesh.io "c" deleted']


def test_discovery_explain_config_completion(nexus: Nexus, server: Server) -> None:
    resources = nexus("api-resources").stdout.splitlines()
    assert resources[0].split() == ["NAME", "SHORTNAMES", "APIVERSION", "NAMESPACED", "KIND"]
    assert ["workloads", "wl", "hypermesh.io/v1", "true", "Workload"] in [line.split() for line in resources]
    assert "namespaces" in nexus("api-resources", "--namespaced=false", "-o", "name").stdout
    explained = nexus("explain", "wl").stdout
    assert explained.startswith("GROUP:      hypermesh.io\nKIND:       Workload\nVERSION:    v1\n")
    assert "spec\t<Object> -required-" in explained
    field = nexus("explain", "wl.spec.selector").stdout
    assert "FIELD: selector <Object>" in field and "matchLabels\t<map[string]string>" in field
    assert nexus("explain", "wl.spec.nope", code=1).stderr.startswith('error: field "nope" does not exist')
    contexts = nexus("config", "get-contexts").stdout.splitlines()
    assert contexts[0].split() == ["CURRENT", "NAME", "CLUSTER", "AUTHINFO", "NAMESPACE"] and contexts[1].startswith("*")
    view = nexus("config", "view").stdout
    assert "DATA+OMITTED" in view and "client-key-data: DATA+OMITTED" in view
    current = nexus("config", "current-context").stdout.strip()
    nexus("config", "use-context", current)
    assert nexus("config", "use-context", "nope", code=1).stderr.startswith("error: ")
    for shell in ("bash", "zsh"):
        script = nexus("completion", shell).stdout
        assert "nexus" in script and "apply" in script and "wl" in script
    assert subprocess.run(["bash", "-n"], input=nexus("completion", "bash").stdout, text=True).returncode == 0


def test_nexus_and_kubectl_see_the_same(nexus: Nexus, server: Server, namespace: str) -> None:
    server.kubectl("apply", "-n", namespace, "-f", "-", input=WORKLOAD)
    mine = json.loads(nexus("get", "wl", "-n", namespace, "-o", "json").stdout)["items"]
    theirs = server.kubectl_json("get", "wl", "-n", namespace)["items"]
    assert [(o["metadata"]["name"], o["metadata"]["resourceVersion"]) for o in mine] == [(o["metadata"]["name"], o["metadata"]["resourceVersion"]) for o in theirs]
    # The same table, but for the AGE column, which may tick between the two commands.
    def without_age(text: str) -> list[list[str]]:
        return [line.split()[:-1] for line in text.splitlines()]

    assert without_age(nexus("get", "wl", "-n", namespace).stdout) == without_age(server.kubectl("get", "wl", "-n", namespace).stdout)


def _editor(tmp_path: Path, body: str) -> str:
    """An $EDITOR that runs `body` (Python) on the file it is given."""
    script = tmp_path / "editor.py"
    script.write_text("import sys, pathlib, subprocess\npath = pathlib.Path(sys.argv[1])\ntext = path.read_text()\n" + body)
    return f"{sys.executable} {script}"


def test_edit_saves_cancels_and_refuses_a_stale_change(nexus: Nexus, server: Server, namespace: str, tmp_path: Path) -> None:
    nexus("apply", "-n", namespace, "-f", "-", input=WORKLOAD)
    unchanged = subprocess.run(nexus.argv("edit", "-n", namespace, "wl", "web"), capture_output=True, text=True, env={**nexus.env, "EDITOR": _editor(tmp_path, "")})
    assert unchanged.returncode == 0 and "Edit cancelled, no changes made." in unchanged.stdout
    change = "path.write_text(text.replace('replicas: 3', 'replicas: 4'))\n"
    saved = subprocess.run(nexus.argv("edit", "-n", namespace, "wl", "web"), capture_output=True, text=True, env={**nexus.env, "EDITOR": _editor(tmp_path, change)})
    assert saved.returncode == 0, saved.stderr
    assert "workload.hypermesh.io/web edited" in saved.stdout
    assert server.kubectl_json("get", "-n", namespace, "wl", "web")["spec"]["replicas"] == 4
    # Someone else changes the object while the editor is open: the edit is refused, not lost.
    meanwhile = (
        f"subprocess.run([{KUBECTL!r}, '--kubeconfig', {str(server.kubeconfig)!r}, 'patch', '-n', {namespace!r}, 'wl', 'web', '--type=merge', '-p', '{{\"spec\":{{\"paused\":true}}}}'], check=True, capture_output=True)\n"
        "path.write_text(text.replace('replicas: 4', 'replicas: 9'))\n"
    )
    stale = subprocess.run(nexus.argv("edit", "-n", namespace, "wl", "web"), capture_output=True, text=True, env={**nexus.env, "EDITOR": _editor(tmp_path, meanwhile)})
    assert stale.returncode == 1
    assert "Conflict" in stale.stderr and "your edits are in" in stale.stderr
    assert server.kubectl_json("get", "-n", namespace, "wl", "web")["spec"]["replicas"] == 4



def test_get_several_kinds_and_categories(nexus: Nexus, namespace: str) -> None:
    nexus("apply", "-n", namespace, "-f", "-", input=WORKLOAD)
    service = "apiVersion: hypermesh.io/v1\nkind: Service\nmetadata: {name: web}\nspec:\n  selector: {app: web}\n  ports: [{port: 80}]\n"
    nexus("apply", "-n", namespace, "-f", "-", input=service)
    both = nexus("get", "-n", namespace, "wl,svc").stdout
    assert "workload.hypermesh.io/web" in both and "service.hypermesh.io/web" in both
    assert "app=web" in both  # a string map column reads like a selector
    names = nexus("get", "-n", namespace, "all", "-o", "name").stdout.split()
    assert sorted(names) == ["service.hypermesh.io/web", "workload.hypermesh.io/web"]
