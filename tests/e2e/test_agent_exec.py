"""Interactive exec end to end: `nexus exec -i/-it`, the official Python client's `stream()`
machinery and raw WebSocket requests, through the API server's relay to a real agent running
real runc containers.

Terminal sessions are driven through a pseudo-terminal made here, so nexus sees a real terminal
(raw mode, window size, SIGWINCH) exactly as in a user's shell.

Needs root and runc (CI has both); elsewhere the module is skipped with the reason.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import re
import select
import signal
import socket
import ssl
import struct
import subprocess
import termios
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e import agent_harness
from tests.e2e.conftest import VENV_BIN, Server

pytestmark = [pytest.mark.timeout(300), *agent_harness.REQUIREMENTS]

NODE = "exec-e2e"
BRIDGE = f"hmx{os.getpid() % 10000}"
PREFIX = f"fd{(os.getpid() + 199) % 256:02x}:ec::/48"
NODE_SPEC = agent_harness.AgentNode(NODE, BRIDGE, PREFIX)
NEXUS = str(VENV_BIN / "nexus")
SHELL = "shell"
EXEC_PATH = f"/apis/hypermesh.io/v1/namespaces/default/instances/{SHELL}/exec"
NO_TTY = "Unable to use a TTY - input is not a terminal or the right kind of file"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with agent_harness.running_cluster(tmp_path_factory.mktemp("agent-exec"), NODE_SPEC) as (server, _):
        yield server


@pytest.fixture(scope="module")
def shell(cluster: Server) -> str:
    """A running Instance whose init is a shell loop (it reaps orphans, as a real init would)."""
    body = {
        "apiVersion": "hypermesh.io/v1", "kind": "Instance",
        "metadata": {"name": SHELL, "namespace": "default"},
        "spec": {
            "nodeName": NODE,
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": "busybox", "command": ["sh", "-c", "while true; do sleep 1; done"]}],
        },
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(body))

    def running() -> bool:
        item = cluster.kubectl_json("get", "instance", SHELL, "-n", "default")
        return (item.get("status") or {}).get("phase") == "Running"

    agent_harness.eventually(running, what="the shell Instance Running")
    return SHELL


def nexus_env(server: Server) -> dict[str, str]:
    return {**os.environ, "HYPERMESH_HOME": str(server.data_dir.parent / "nexus-home"), "NO_COLOR": "1", "TERM": "xterm"}


def nexus_argv(server: Server, *args: str) -> list[str]:
    return [NEXUS, "--kubeconfig", str(server.kubeconfig), "-n", "default", *args]


def nexus(server: Server, *args: str, input: bytes | None = b"", timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(nexus_argv(server, *args), input=input, capture_output=True, timeout=timeout, env=nexus_env(server))


def container_processes(server: Server) -> str:
    """What runs in the shell's container, by a plain (non-interactive) exec of ps."""
    answer = nexus(server, "exec", SHELL, "--", "ps", "-o", "pid,args")
    assert answer.returncode == 0, answer.stderr
    return answer.stdout.decode()


def host_processes_with(marker: bytes) -> list[int]:
    """Live host processes whose command line contains `marker` (zombies have none)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "cmdline").read_bytes().replace(b"\0", b" "):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


class TerminalSession:
    """`nexus exec -it ...` on a pseudo-terminal of ours: nexus's controlling terminal, so it
    gets raw mode, the window size and SIGWINCH as in a user's shell."""

    def __init__(self, server: Server, *args: str, rows: int, columns: int) -> None:
        self.master, slave = os.openpty()
        self.set_size(rows, columns)
        self.slave = slave
        self.original = termios.tcgetattr(slave)

        def controlling_terminal() -> None:
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.proc = subprocess.Popen(
            nexus_argv(server, "exec", "-it", *args), stdin=slave, stdout=slave, stderr=slave,
            preexec_fn=controlling_terminal, env=nexus_env(server),
        )  # fmt: skip
        self.output = b""

    def set_size(self, rows: int, columns: int) -> None:
        # Setting it on the master makes the kernel send SIGWINCH to the terminal's foreground.
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    def expect(self, pattern: str, timeout: float = 30) -> re.Match[bytes]:
        """Wait until the output (since the last match) matches `pattern`."""
        deadline = time.monotonic() + timeout
        while True:
            match = re.search(pattern.encode(), self.output)
            if match:
                self.output = self.output[match.end() :]
                return match
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no {pattern!r} in the terminal's output: {self.output[-500:]!r}"
            ready, _, _ = select.select([self.master], [], [], remaining)
            if ready:
                try:
                    data = os.read(self.master, 4096)
                except OSError:
                    data = b""
                assert data, f"the terminal closed before {pattern!r}: {self.output[-500:]!r}"
                self.output += data

    def wait(self, timeout: float = 30) -> int:
        # Keep draining the terminal, or a chatty end could block nexus on a full pty buffer.
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            assert time.monotonic() < deadline, "nexus did not exit"
            ready, _, _ = select.select([self.master], [], [], 0.2)
            if ready:
                try:
                    self.output += os.read(self.master, 4096)
                except OSError:
                    pass
        return self.proc.returncode

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for fd in (self.master, self.slave):
            os.close(fd)


@pytest.fixture
def terminal(cluster: Server, shell: str) -> Iterator[list[TerminalSession]]:
    sessions: list[TerminalSession] = []
    yield sessions
    for session in sessions:
        session.close()


# -- piped input --------------------------------------------------------------------------------


def test_stdin_is_piped_to_the_command(cluster: Server, shell: str) -> None:
    answer = nexus(cluster, "exec", "-i", shell, "--", "cat", input=b"hello\n")
    assert (answer.returncode, answer.stdout) == (0, b"hello\n"), answer.stderr
    assert answer.stderr == b""


def test_exit_codes_and_streams_propagate(cluster: Server, shell: str) -> None:
    answer = nexus(cluster, "exec", "-i", shell, "--", "sh", "-c", "exit 3")
    assert answer.returncode == 3
    assert b"command terminated with exit code 3" in answer.stderr
    split = nexus(cluster, "exec", "-i", shell, "--", "sh", "-c", "read line; echo out $line; echo err >&2; exit 5", input=b"x\n")
    assert split.returncode == 5
    assert split.stdout == b"out x\n"
    assert split.stderr.startswith(b"err\n")


def test_large_input_and_output_go_through_whole(cluster: Server, shell: str) -> None:
    # Several MiB each way: more than any buffer on the path holds, so every hop must wait for
    # the next one rather than drop or stall.
    data = os.urandom(3 * 1024 * 1024)
    echoed = nexus(cluster, "exec", "-i", shell, "--", "cat", input=data, timeout=120)
    assert echoed.returncode == 0, echoed.stderr
    assert echoed.stdout == data
    counted = nexus(cluster, "exec", "-i", shell, "--", "wc", "-c", input=data, timeout=120)
    assert counted.stdout.split() == [str(len(data)).encode()]


def test_tty_without_a_terminal_warns_and_runs_without_one(cluster: Server, shell: str) -> None:
    answer = nexus(cluster, "exec", "-it", shell, "--", "sh", "-c", "tty; exit 0")
    assert answer.returncode == 0, answer.stderr
    assert NO_TTY.encode() in answer.stderr
    assert answer.stdout == b"not a tty\n"


def test_a_command_that_cannot_start_is_reported(cluster: Server, shell: str) -> None:
    answer = nexus(cluster, "exec", "-i", shell, "--", "no-such-command")
    assert answer.returncode == 1
    assert b"no-such-command" in answer.stderr and b"executable file not found" in answer.stderr


# -- a terminal ---------------------------------------------------------------------------------


def test_a_terminal_session_has_a_pty_its_size_and_the_exit_code(cluster: Server, terminal: list[TerminalSession]) -> None:
    session = TerminalSession(cluster, SHELL, "--", "sh", rows=31, columns=97)
    terminal.append(session)
    session.expect(r"# ")
    session.type("tty; stty size; exit 7\r")
    session.expect(r"/dev/pts/\d+\r\n")
    session.expect(r"31 97\r\n")
    assert session.wait() == 7
    assert b"command terminated with exit code 7" in session.output
    # nexus put the terminal back the way it found it.
    assert termios.tcgetattr(session.slave) == session.original


def test_a_resize_reaches_the_command(cluster: Server, terminal: list[TerminalSession]) -> None:
    session = TerminalSession(cluster, SHELL, "--", "sh", rows=24, columns=80)
    terminal.append(session)
    session.expect(r"# ")
    session.type("stty size\r")
    session.expect(r"24 80\r\n")
    session.set_size(50, 132)

    def resized() -> bool:
        session.type("stty size\r")
        match = session.expect(r"\d+ \d+\r\n")
        return match.group(0) == b"50 132\r\n"

    agent_harness.eventually(resized, timeout=20, what="the new size inside the container")
    session.type("exit\r")
    assert session.wait() == 0


# -- the client going away ----------------------------------------------------------------------


def test_a_disconnected_piped_session_leaves_no_process(cluster: Server, shell: str) -> None:
    marker = "sleep 4321"
    proc = subprocess.Popen(
        nexus_argv(cluster, "exec", "-i", shell, "--", "sh", "-c", f"{marker}; echo never"),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=nexus_env(cluster),
    )  # fmt: skip
    try:
        agent_harness.eventually(lambda: marker in container_processes(cluster), timeout=30, what="the command running")
        assert host_processes_with(marker.encode())
    finally:
        proc.kill()
        proc.wait(10)
    agent_harness.eventually(lambda: marker not in container_processes(cluster), timeout=30, what="the command killed")
    agent_harness.eventually(lambda: not host_processes_with(marker.encode()), timeout=10, what="no host process left")
    assert not host_processes_with(b"execmonitor.py")


def test_a_disconnected_terminal_session_leaves_no_process(cluster: Server, terminal: list[TerminalSession]) -> None:
    marker = "sleep 4322"
    session = TerminalSession(cluster, SHELL, "--", "sh", rows=24, columns=80)
    terminal.append(session)
    session.expect(r"# ")
    # A child of the shell, and a grandchild in the background: the whole session must go.
    session.type(f"sh -c '{marker} & {marker}'\r")
    agent_harness.eventually(lambda: container_processes(cluster).count(marker) >= 2, timeout=30, what="the commands running")
    os.kill(session.proc.pid, signal.SIGKILL)
    session.proc.wait(10)
    agent_harness.eventually(lambda: marker not in container_processes(cluster), timeout=30, what="the session killed")
    agent_harness.eventually(lambda: not host_processes_with(marker.encode()), timeout=10, what="no host process left")


# -- other clients, and refusals ----------------------------------------------------------------


def python_client_configuration(server: Server) -> Any:
    from kubernetes import client, config

    configuration = client.Configuration()
    config.load_kube_config(config_file=str(server.kubeconfig), client_configuration=configuration)
    return configuration


@pytest.mark.parametrize("protocol", ["v4.channel.k8s.io", None])
def test_the_python_clients_websocket_works(cluster: Server, shell: str, protocol: str | None) -> None:
    from kubernetes.stream.ws_client import WSClient

    configuration = python_client_configuration(cluster)
    command = "&".join(f"command={part}" for part in ("sh", "-c", "read%20x%3B%20echo%20got%20%24x%3B%20exit%204"))
    url = f"wss://127.0.0.1:{cluster.port}{EXEC_PATH}?{command}&stdin=true&stdout=true&stderr=true&tty=false"
    headers = {"sec-websocket-protocol": protocol} if protocol else None
    ws = WSClient(configuration, url, headers, capture_all=True, binary=True)
    try:
        assert ws.subprotocol == (protocol or "v5.channel.k8s.io")
        ws.write_stdin(b"line\n")
        ws.run_forever(timeout=30)
        assert ws.read_stdout() == b"got line\n"
        assert ws.returncode == 4
    finally:
        ws.close()


def raw_upgrade(server: Server, path: str, *, cert: bool, protocols: str = "v5.channel.k8s.io") -> tuple[int, dict[str, Any]]:
    """Send a WebSocket upgrade by hand; returns the HTTP status and the JSON body."""
    cfg = yaml.safe_load(server.kubeconfig.read_text())
    user = cfg["users"][0]["user"]
    context = ssl.create_default_context(cadata=base64.b64decode(cfg["clusters"][0]["cluster"]["certificate-authority-data"]).decode())
    if cert:
        pem = server.data_dir.parent / "raw-client.pem"
        pem.write_bytes(base64.b64decode(user["client-certificate-data"]) + base64.b64decode(user["client-key-data"]))
        context.load_cert_chain(pem)
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            sock.sendall(
                (
                    f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\n"
                    "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                    f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {protocols}\r\n\r\n"
                ).encode()
            )
            answer = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
                head, _, body = answer.partition(b"\r\n\r\n")
                lengths = re.findall(rb"(?i)content-length: *(\d+)", head)
                if lengths and len(body) >= int(lengths[0]):
                    break
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_refusals_say_what_is_wrong(cluster: Server, shell: str) -> None:
    query = "?command=sh&stdin=true"
    status, body = raw_upgrade(cluster, EXEC_PATH + query, cert=False)
    assert (status, body["reason"]) == (401, "Unauthorized"), body
    assert "client certificate" in body["message"]

    status, body = raw_upgrade(cluster, EXEC_PATH + query, cert=True, protocols="channel.k8s.io, base64.channel.k8s.io")
    assert (status, body["reason"]) == (400, "BadRequest")
    assert "v5.channel.k8s.io" in body["message"] and "channel.k8s.io, base64.channel.k8s.io" in body["message"]

    status, body = raw_upgrade(cluster, EXEC_PATH + "?stdin=true", cert=True)
    assert status == 400 and "exec needs a command" in body["message"], body

    status, body = raw_upgrade(cluster, "/apis/hypermesh.io/v1/namespaces/default/instances", cert=True)
    assert status == 400 and "only .../namespaces/NAMESPACE/instances/NAME/exec" in body["message"], body

    with cluster.http() as http:
        plain = http.get(EXEC_PATH, params=[("command", "sh"), ("stdin", "true")])
    assert plain.status_code == 400, plain.text
    assert plain.json()["reason"] == "BadRequest" and "Upgrade request required" in plain.json()["message"]
