"""`nexus apply -f DIR --watch --prune`: a folder kept applied while someone edits it.

nexus runs as the installed console script against a real server; the test edits files the
way an editor does and reads the cluster through its own client. The bound on "an edit is
applied" is 2 s: a functional promise (the watcher groups changes for at most 0.8 s), not a
benchmark.
"""

from __future__ import annotations

import base64
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from hypermesh.client import Client, load_config
from hypermesh.client.errors import ApiError
from hypermesh.client.resources import Resource
from tests.e2e.conftest import VENV_BIN, Server

pytestmark = pytest.mark.timeout(120)

NEXUS = str(VENV_BIN / "nexus")
SECRETS = Resource("", "v1", "Secret", "secrets", "secret", True)


def secret(name: str, value: str) -> str:
    return f"apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\nstringData:\n  value: {value}\n"


class Lines:
    """A stream's lines, read by a thread, waited for by content."""

    def __init__(self, stream: IO[str]) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self._queue.put(line.rstrip("\n"))

    def wait_for(self, text: str, timeout: float = 15.0) -> str:
        """The first line not yet consumed that contains `text`."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line with {text!r} in {timeout}s; saw {self.seen}") from None
            self.seen.append(line)
            if text in line:
                return line


@pytest.fixture
def api(server: Server) -> Iterator[Client]:
    client = Client(load_config(str(server.kubeconfig)), transport="tcp")
    yield client
    client.close()


def read_value(api: Client, name: str, namespace: str) -> str | None:
    try:
        obj = api.request("GET", SECRETS.path(namespace, name)).json()
    except ApiError as exc:
        if exc.status == 404:
            return None
        raise
    return base64.b64decode(obj["data"]["value"]).decode()


def until(check: Callable[[], Any], timeout: float, what: str) -> float:
    """Seconds until `check()` is truthy (AssertionError after `timeout`)."""
    start = time.monotonic()
    while not check():
        elapsed = time.monotonic() - start
        assert elapsed < timeout, f"{what} not seen within {timeout}s"
        time.sleep(0.02)
    return time.monotonic() - start


def test_the_folder_watcher_applies_edits_prunes_and_stops_on_ctrl_c(
    server: Server, namespace: str, api: Client, tmp_path: Path
) -> None:
    folder = tmp_path / "manifests"
    folder.mkdir()
    (folder / "a.yaml").write_text(secret("a", "one"))
    (folder / "b.yaml").write_text(secret("b", "one"))
    (folder / "notes.txt").write_text("not a manifest\n")
    env = {**os.environ, "HYPERMESH_HOME": str(tmp_path / "home"), "NO_COLOR": "1"}
    env.pop("KUBECONFIG", None)
    proc = subprocess.Popen(
        [NEXUS, "--kubeconfig", str(server.kubeconfig), "-n", namespace, "apply", "-f", str(folder), "--watch", "--prune"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    out, err = Lines(proc.stdout), Lines(proc.stderr)
    try:
        out.wait_for("secret/a created")
        out.wait_for("secret/b created")
        err.wait_for("for changes (Ctrl-C to stop)")

        # An edit is applied within 2 s, and the round says what changed.
        (folder / "a.yaml").write_text(secret("a", "two"))
        took = until(lambda: read_value(api, "a", namespace) == "two", 2.0, "the edit applied")
        print(f"edit applied after {took:.2f}s")
        out.wait_for("changed: manifests/a.yaml")
        assert out.wait_for("secret/a") == "secret/a configured"

        # A file that does not parse is reported; the watch goes on; the fix is applied.
        (folder / "a.yaml").write_text("apiVersion: v1\nkind: Secret\nmetadata: [\n")
        assert "manifests/a.yaml" in err.wait_for("error parsing")
        (folder / "a.yaml").write_text(secret("a", "three"))
        until(lambda: read_value(api, "a", namespace) == "three", 5.0, "the fix applied")

        # A removed file is pruned (--prune), a new one created.
        (folder / "b.yaml").unlink()
        (folder / "c.yaml").write_text(secret("c", "new"))
        until(lambda: read_value(api, "b", namespace) is None, 5.0, "b pruned")
        until(lambda: read_value(api, "c", namespace) == "new", 5.0, "c created")
        out.wait_for("secret/b pruned")
        # Files that are not manifests wake nothing.
        (folder / "notes.txt").write_text("still not a manifest\n")
        time.sleep(1.0)
        assert not any("notes.txt" in line for line in out.seen)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert code == 0, err.seen


def test_watch_refuses_stdin_and_dry_run(server: Server, tmp_path: Path) -> None:
    for extra in (["-f", "-"], ["-f", str(tmp_path), "--dry-run", "server"]):
        result = subprocess.run(
            [NEXUS, "--kubeconfig", str(server.kubeconfig), "apply", *extra, "--watch"],
            capture_output=True, text=True, timeout=30, input="",
            env={**os.environ, "HYPERMESH_HOME": str(tmp_path / "home")},
        )  # fmt: skip
        assert result.returncode == 2, result.stderr
        assert "--watch" in result.stderr
