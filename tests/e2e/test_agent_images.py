"""Images end to end: `nexus image import|build|ls|rm` against a real server with its controllers
and a real `hypermesh agent`, and the images running as real runc containers.

The OCI image layout tarball is built here, byte by byte: one gzip-compressed layer holding the
host's static busybox (Debian's busybox-static) and a script, a config, a manifest, an index.
Importing it through the API, running it, and reading its output with `nexus logs` is the whole
path a user's own image takes on a machine without a registry.

Needs root, runc and /bin/busybox (CI has them); elsewhere the module is skipped with the reason.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import agent_harness
from tests.e2e.conftest import VENV_BIN, Server

BUSYBOX = Path("/bin/busybox")

pytestmark = [
    pytest.mark.timeout(300),
    *agent_harness.REQUIREMENTS,
    pytest.mark.skipif(not BUSYBOX.is_file(), reason="/bin/busybox is missing (apt-get install busybox-static)"),
]

NODE = "images-e2e"
BRIDGE = f"hmi{os.getpid() % 10000}"
PREFIX = f"fd{(os.getpid() + 151) % 256:02x}:1a6e::/48"
NODE_SPEC = agent_harness.AgentNode(NODE, BRIDGE, PREFIX)
NEXUS = str(VENV_BIN / "nexus")


def eventually(check: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> Any:
    return agent_harness.eventually(check, timeout, what)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    with agent_harness.running_cluster(tmp_path_factory.mktemp("agent-images"), NODE_SPEC) as (server, agent_dir):
        yield server, agent_dir


def nexus(server: Server, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [NEXUS, "--kubeconfig", str(server.kubeconfig), "-n", "default", *args],
        capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "HYPERMESH_HOME": str(server.data_dir.parent / "nexus-home"), "NO_COLOR": "1"},
    )


def listed(server: Server) -> dict[str, dict[str, Any]]:
    """`nexus image ls -o json`, by image name."""
    done = nexus(server, "image", "ls", "-o", "json")
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["kind"] == "ImageList"
    return {item["name"]: item for item in document["items"]}


def run_instance(server: Server, name: str, image: str, *, command: list[str] | None = None, policy: str = "Never") -> None:
    container: dict[str, Any] = {"name": "main", "image": image}
    if command:
        container["command"] = command
    server.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "hypermesh.io/v1", "kind": "Instance",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"nodeName": NODE, "restartPolicy": policy, "terminationGracePeriodSeconds": 1, "containers": [container]},
    }))  # fmt: skip


def phase(server: Server, name: str) -> str:
    item = server.kubectl_json("get", "instance", name, "-n", "default")
    return str((item.get("status") or {}).get("phase") or "")


# Building an OCI image layout tarball


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_tar(files: dict[str, bytes | str]) -> bytes:
    """A layer: `bytes` values are files (0755), `str` values symlink targets; parents included."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for directory in sorted({name.rpartition("/")[0] for name in files} - {""}):
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for name, value in files.items():
            info = tarfile.TarInfo(name)
            if isinstance(value, str):
                info.type, info.linkname = tarfile.SYMTYPE, value
                tar.addfile(info)
            else:
                info.size, info.mode = len(value), 0o755
                tar.addfile(info, io.BytesIO(value))
    return raw.getvalue()


def oci_layout(path: Path, *, tag: str, files: dict[str, bytes | str], config: dict[str, Any], tamper: bool = False) -> str:
    """Write an OCI image layout tarball of one gzip layer; returns the manifest digest. With
    `tamper`, one byte of the layer blob is flipped after its digest was taken."""
    plain = layer_tar(files)
    blob = gzip.compress(plain, mtime=0)
    document = json.dumps({
        "architecture": {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine),
        "os": "linux",
        "created": "2024-05-01T12:00:00Z",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [sha256(plain)]},
    }).encode()
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(document), "size": len(document)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha256(blob), "size": len(blob)}],
    }).encode()
    index = json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha256(manifest), "size": len(manifest),
        "annotations": {"org.opencontainers.image.ref.name": tag},
    }]}).encode()  # fmt: skip
    stored = blob if not tamper else blob[:100] + bytes([blob[100] ^ 0xFF]) + blob[101:]
    members = {
        "oci-layout": b'{"imageLayoutVersion": "1.0.0"}',
        "index.json": index,
        f"blobs/sha256/{sha256(manifest)[7:]}": manifest,
        f"blobs/sha256/{sha256(document)[7:]}": document,
        f"blobs/sha256/{sha256(blob)[7:]}": stored,
    }
    with tarfile.open(path, "w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return sha256(manifest)


def greeter_files() -> dict[str, bytes | str]:
    return {
        "bin/busybox": BUSYBOX.read_bytes(),
        "bin/sh": "busybox",
        "hello.sh": b'#!/bin/sh\necho "hello from an imported image: $GREETING"\n',
    }


# The tests


def test_an_oci_tarball_built_here_imports_lists_and_runs(cluster: tuple[Server, Path], tmp_path: Path) -> None:
    server, _ = cluster
    archive = tmp_path / "greeter.tar"
    config = {"Entrypoint": ["/bin/sh", "/hello.sh"], "Env": ["PATH=/bin", "GREETING=oci"]}
    digest = oci_layout(archive, tag="1.0", files=greeter_files(), config=config)

    done = nexus(server, "image", "import", str(archive))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"node/{NODE}: imported greeter:1.0 ({digest[:19]}, ")

    table = nexus(server, "image", "ls")
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["NODE", "NAME", "DIGEST", "SIZE", "CREATED"]
    assert any(row.split()[:3] == [NODE, "greeter:1.0", digest[:19]] for row in rows), table.stdout
    assert any(row.split()[:2] == [NODE, "busybox:latest"] for row in rows), table.stdout
    item = listed(server)["greeter:1.0"]
    assert (item["node"], item["digest"], item["created"]) == (NODE, digest, "2024-05-01T12:00:00Z")
    assert item["config"]["entrypoint"] == ["/bin/sh", "/hello.sh"]

    run_instance(server, "greeter", "greeter:1.0")
    eventually(lambda: phase(server, "greeter") == "Succeeded", what="the imported image's container to finish")
    logs = nexus(server, "logs", "greeter")
    assert (logs.returncode, logs.stdout) == (0, "hello from an imported image: oci\n")
    server.kubectl("delete", "instance", "greeter", "-n", "default")


def test_a_built_directory_runs_and_is_removed_only_when_unused(cluster: tuple[Server, Path], tmp_path: Path) -> None:
    server, agent_dir = cluster
    site = tmp_path / "site"
    (site / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, site / "bin" / "busybox")
    os.symlink("busybox", site / "bin" / "sh")
    (site / "run.sh").write_text('echo "built for $WHO"\nexec sleep 3600\n')

    done = nexus(server, "image", "build", str(site), "--tag", "site:v1", "--entrypoint", "/bin/sh /run.sh", "--env", "WHO=e2e", "--env", "PATH=/bin")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"node/{NODE}: built site:v1 (sha256:")
    item = listed(server)["site:v1"]
    assert item["config"]["entrypoint"] == ["/bin/sh", "/run.sh"]
    assert item["config"]["env"] == ["WHO=e2e", "PATH=/bin"]
    assert "created" not in item

    run_instance(server, "site", "site:v1", policy="Always")
    eventually(lambda: nexus(server, "logs", "site").stdout == "built for e2e\n", what="the built image's output")

    # In use: refused, and the store keeps everything.
    refused = nexus(server, "image", "rm", "site:v1")
    assert refused.returncode == 1
    assert f"node/{NODE}: Error from server (Conflict): image 'site:v1'" in refused.stderr
    assert "instance default/site (container main)" in refused.stderr
    assert "site:v1" in listed(server)

    server.kubectl("delete", "instance", "site", "-n", "default", "--wait=true", timeout=90)
    removed = nexus(server, "image", "rm", "site:v1")
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout.startswith(f"node/{NODE}: removed site:v1 ({item['digest'][:19]}, ")
    assert "site:v1" not in listed(server)
    assert not (agent_dir / "images" / "layers" / item["layers"][0][7:]).exists()

    gone = nexus(server, "image", "rm", "site:v1")
    assert gone.returncode == 1
    assert "no image 'site:v1' in this node's store" in gone.stderr


def test_a_corrupt_archive_is_refused_precisely_and_changes_nothing(cluster: tuple[Server, Path], tmp_path: Path) -> None:
    server, agent_dir = cluster
    store = agent_dir / "images"
    before_names = listed(server)
    before_files = sorted(str(p.relative_to(store)) for p in store.rglob("*") if ".lock" not in p.name)
    archive = tmp_path / "broken.tar"
    config = {"Cmd": ["/hello.sh"], "Env": ["PATH=/bin"]}
    # Content of its own: a layer the store already holds would not be read from the archive.
    files = {**greeter_files(), "broken.txt": b"this layer is new to the store\n"}
    oci_layout(archive, tag="1", files=files, config=config, tamper=True)
    with tarfile.open(archive) as opened:
        layer = next(m.name for m in opened.getmembers() if m.name.startswith("blobs/") and m.size > 100_000)

    done = nexus(server, "image", "import", str(archive))
    assert done.returncode == 1
    assert done.stderr.startswith(f"node/{NODE}: Error from server (BadRequest): broken.tar: {layer}: content has digest sha256:")
    assert "(the archive is damaged or was altered)" in done.stderr
    assert listed(server) == before_names
    assert sorted(str(p.relative_to(store)) for p in store.rglob("*") if ".lock" not in p.name) == before_files

    missing = nexus(server, "image", "import", str(tmp_path / "nothing.tar"))
    assert (missing.returncode, missing.stderr.strip()) == (1, f"error: {tmp_path / 'nothing.tar'}: no such file")
    node_missing = nexus(server, "image", "import", str(archive), "--node", "nope")
    assert node_missing.returncode == 1
    assert 'node/nope: Error from server (NotFound): nodes.hypermesh.io "nope" not found' in node_missing.stderr
    bad_tag = nexus(server, "image", "build", str(tmp_path), "--tag", "Bad:1")
    assert bad_tag.returncode == 1
    assert "Error from server (BadRequest): tag: invalid image reference 'Bad:1': 'Bad' is not a valid name component" in bad_tag.stderr
    assert listed(server) == before_names
