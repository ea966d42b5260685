"""Containers with a user namespace (`spec.hostUsers: false`), built the way the agent builds them.

Each test takes a range from a real `userns.RangePool`, mounts the built-in busybox image of a
real image store with `rootfs.mount_rootfs(..., ids=range)`, writes the bundle with
`oci.runtime_spec(..., user_namespace=True, userns_base=range.base)` and runs it with the runtime
`OciRuntime.detect` picks, without the API server. Everything lives under pytest's temporary
directory, which is private to root as the agent's data directory is, so the tests also show
that the container's root reaches its rootfs without that directory being opened up.

What is checked is what the kernel says: /proc/self/uid_map inside, /proc/PID/status and file
owners outside, /proc/self/mountinfo after cleanup. Waiting is always for an observable event
(a line of output, an exit file) under the test's own timeout; no test asserts a duration.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from hypermesh.runtime import idmap, oci, rootfs, runc, userns
from hypermesh.runtime.images import Image, ImageStore

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(120),
    pytest.mark.skipif(os.geteuid() != 0, reason="user namespaces and mounts need root"),
    pytest.mark.skipif(shutil.which("runc") is None, reason="runc is not installed (make setup)"),
    pytest.mark.skipif(
        not Path("/bin/busybox").exists(), reason="no static /bin/busybox (busybox-static)"
    ),
    pytest.mark.skipif(shutil.which("unshare") is None, reason="no unshare (util-linux)"),
]

READY = "ready"


@dataclass
class Started:
    """One container a test started, and where its files are."""

    id: str
    ids: idmap.IdRange
    container_dir: Path
    root: Path
    stdout: Path
    exit_file: Path
    pid: int = 0


class Node:
    """A node agent's worth of runtime parts for one test: image store, range pool, runtime."""

    def __init__(self, data: Path, store: ImageStore, runtime: runc.OciRuntime) -> None:
        self.data = data
        self.store = store
        self.runtime = runtime
        self.pool = userns.RangePool.for_data_dir(data)
        self.started: list[Started] = []
        # /etc/hosts comes from the Instance's private directory, as the supervisor's does.
        self.hosts = data / "instances" / "hosts"
        self.hosts.parent.mkdir(parents=True)
        self.hosts.write_text("127.0.0.1\tlocalhost\n")

    async def run(
        self,
        instance: str,
        script: str,
        *,
        image: Image | None = None,
        read_only: bool = False,
        netns: Path | None = None,
        **container: Any,
    ) -> Started:
        ids = self.pool.allocate(instance)
        image = image or self.store.ensure_busybox()
        cid = f"hmtest-{uuid.uuid4().hex[:12]}"
        container_dir = self.data / "instances" / instance / "main"
        root = rootfs.mount_rootfs(image, container_dir, read_only=read_only, ids=ids)
        started = Started(
            cid, ids, container_dir, root, container_dir / "stdout", container_dir / "exit"
        )
        self.started.append(started)
        spec = oci.runtime_spec(
            container={"name": "main", "image": "busybox", "command": ["sh", "-c", script]}
            | container,
            image=image.config,
            rootfs=root,
            hostname="userns",
            cgroups_path=f"/hypermesh/{cid}",
            netns=netns,
            user_namespace=True,
            userns_base=ids.base,
            extra_mounts=[
                {
                    "destination": "/etc/hosts",
                    "type": "bind",
                    "source": str(self.hosts),
                    "options": ["rbind", "rprivate", "rw"],
                }
            ],
        )
        bundle = container_dir / "bundle"
        bundle.mkdir()
        (bundle / "config.json").write_bytes(orjson.dumps(spec))
        started.pid = await self.runtime.run(
            cid,
            bundle,
            stdout=started.stdout,
            stderr=container_dir / "stderr",
            exit_file=started.exit_file,
        )
        return started

    async def output(self, started: Started) -> list[str]:
        """The container's output up to the line READY (or its exit)."""
        while True:
            lines = started.stdout.read_text().splitlines() if started.stdout.exists() else []
            if READY in lines:
                return lines[: lines.index(READY)]
            if self.runtime.exit_status(started.exit_file) is not None:
                stderr = (started.container_dir / "stderr").read_text()
                raise AssertionError(f"the container ended early: {lines} {stderr}")
            await asyncio.sleep(0.02)

    async def remove(self, started: Started) -> None:
        """What the supervisor does when the Instance goes, range release included."""
        await self.runtime.delete(started.id)
        rootfs.unmount_rootfs(started.container_dir)
        shutil.rmtree(started.container_dir.parent, ignore_errors=True)
        self.pool.release([started.container_dir.parent.name])
        self.started.remove(started)

    async def close(self) -> None:
        for started in list(self.started):
            await self.remove(started)


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "images")


@pytest.fixture
async def node(tmp_path: Path, store: ImageStore) -> AsyncIterator[Node]:
    runtime = await asyncio.to_thread(runc.OciRuntime.detect, tmp_path / "oci")
    node = Node(tmp_path / "agent", store, runtime)
    try:
        yield node
    finally:
        await node.close()


def host_uid_of(pid: int) -> int:
    """The real uid of a process as the host sees it."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for {pid}")


def mount_lines(*paths: Path) -> list[str]:
    wanted = [os.path.realpath(path) for path in paths]
    return [
        line
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if any(f" {path}" in line for path in wanted)
    ]


# Identity


async def test_root_inside_is_the_first_id_of_the_instances_range(node: Node) -> None:
    started = await node.run(
        "a",
        f"cat /proc/self/uid_map /proc/self/gid_map; id -u; id -g; echo {READY}; exec sleep 1000",
    )
    uid_map, gid_map, uid, gid = await node.output(started)
    base = started.ids.base
    assert uid_map.split() == gid_map.split() == ["0", str(base), "65536"]
    assert (uid, gid) == ("0", "0")
    assert base >= userns.FIRST_BASE and base % 65536 == 0
    assert host_uid_of(started.pid) == base


async def test_the_hosts_sys_is_read_only_all_the_way_down(node: Node) -> None:
    # /sys can only be bound (recursively) in a user namespace; the host's mounts below it
    # come along, and must not be writable either.
    started = await node.run("a", f"cat /proc/self/mountinfo; echo {READY}; exec sleep 1000")
    carried = []
    for line in await node.output(started):
        fields = line.split()
        root, point, options = fields[3], fields[4], fields[5].split(",")
        fstype = fields[fields.index("-") + 1]
        if point == "/sys" or (point.startswith("/sys/") and root == "/" and fstype != "tmpfs"):
            carried.append((point, "ro" in options))
    assert ("/sys", True) in carried
    assert all(read_only for _, read_only in carried), carried


# The root filesystem


async def test_root_owns_the_images_files_and_writes_anywhere(node: Node) -> None:
    if not idmap_works(node):
        pytest.skip("this host cannot idmap the image store's filesystem")
    started = await node.run(
        "a",
        "head -1 /etc/passwd; stat -c '%u:%g %n' / /etc /etc/passwd /bin/busybox; "
        "echo new > /new-file && echo slash ok; echo tmp > /tmp/file && echo tmp ok; "
        "echo 'app:x:1000:1000::/:/bin/sh' >> /etc/passwd && echo etc ok; "
        "mkdir /root/.cache && echo root-home ok; "
        f"echo {READY}; exec sleep 1000",
    )
    lines = await node.output(started)
    assert lines == [
        "root:x:0:0:root:/root:/bin/sh",
        "0:0 /",
        "0:0 /etc",
        "0:0 /etc/passwd",
        "0:0 /bin/busybox",
        "slash ok",
        "tmp ok",
        "etc ok",
        "root-home ok",
    ]
    # The writes are the container's own, in its upper directory, owned by its host ids; the
    # image's shared layers did not change.
    upper = started.container_dir / "upper"
    base = started.ids.base
    assert (upper / "new-file").read_text() == "new\n"
    assert os.stat(upper / "new-file").st_uid == base
    assert os.stat(upper / "etc" / "passwd").st_uid == base
    for layer in node.store.ensure_busybox().layers:
        assert "app:x" not in (layer / "etc" / "passwd").read_text()
        assert os.stat(layer / "etc" / "passwd").st_uid == 0


async def test_the_rootfs_is_reachable_only_through_the_containers_group(node: Node) -> None:
    started = await node.run("a", f"echo {READY}; exec sleep 1000")
    await node.output(started)
    gate = started.root.parent
    assert started.root == rootfs.userns_mount_point(started.container_dir)
    assert gate.parent == rootfs.USERNS_MOUNT_DIR
    info = os.stat(gate)
    assert (info.st_uid, info.st_gid, info.st_mode & 0o777) == (0, started.ids.base, 0o710)
    assert os.stat(rootfs.USERNS_MOUNT_DIR).st_mode & 0o777 == 0o711
    # The agent's own directories were not opened up for it.
    assert os.stat(node.data.parent).st_mode & 0o077 == 0


async def test_a_read_only_root_in_a_user_namespace(node: Node) -> None:
    started = await node.run(
        "a",
        "stat -c '%u %n' /etc/passwd; touch /new 2>/dev/null || echo read-only; "
        f"echo {READY}; exec sleep 1000",
        read_only=True,
    )
    lines = await node.output(started)
    expected_owner = "0" if idmap_works(node) else "65534"
    assert lines == [f"{expected_owner} /etc/passwd", "read-only"]
    assert not (started.container_dir / "upper").exists()


async def test_without_idmapped_mounts_only_the_writable_layer_is_roots(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # ramfs cannot be idmapped: an image store there takes the fallback, for real.
    ram = tmp_path / "ram"
    ram.mkdir()
    subprocess.run(["mount", "-t", "ramfs", "ramfs", str(ram)], check=True)
    try:
        runtime = await asyncio.to_thread(runc.OciRuntime.detect, tmp_path / "oci")
        node = Node(tmp_path / "agent", ImageStore(ram / "images"), runtime)
        try:
            with caplog.at_level(logging.INFO, logger="hypermesh.runtime.rootfs"):
                started = await node.run(
                    "a",
                    "id -u; stat -c '%u %n' / /etc/passwd; head -1 /etc/passwd; "
                    "echo new > /new-file && echo slash ok; echo tmp > /tmp/file && echo tmp ok; "
                    "echo x >> /etc/passwd 2>/dev/null || echo etc refused; "
                    f"echo {READY}; exec sleep 1000",
                )
                lines = await node.output(started)
            assert lines == [
                "0",
                "0 /",
                "65534 /etc/passwd",
                "root:x:0:0:root:/root:/bin/sh",
                "slash ok",
                "tmp ok",
                "etc refused",
            ]
            assert host_uid_of(started.pid) == started.ids.base
            assert any(
                "falling back to chowning the writable layer only" in record.getMessage()
                for record in caplog.records
            )
            assert any("writable layer chowned only" in r.getMessage() for r in caplog.records)
        finally:
            await node.close()
    finally:
        subprocess.run(["umount", str(ram)], check=False)


# Ranges


async def test_two_instances_get_disjoint_ranges(node: Node) -> None:
    first = await node.run("a", f"echo {READY}; exec sleep 1000")
    second = await node.run("b", f"echo {READY}; exec sleep 1000")
    await node.output(first)
    await node.output(second)
    a, b = first.ids, second.ids
    assert a.end <= b.base or b.end <= a.base
    assert {host_uid_of(first.pid), host_uid_of(second.pid)} == {a.base, b.base}


async def test_a_restarted_agent_keeps_the_range_of_a_running_container(node: Node) -> None:
    started = await node.run("a", f"echo {READY}; exec sleep 1000")
    await node.output(started)
    # A new pool over the same file, as a restarted agent makes, answers the same range.
    restarted = userns.RangePool.for_data_dir(node.data)
    assert restarted.get("a") == started.ids
    assert restarted.allocate("a") == started.ids
    assert host_uid_of(started.pid) == restarted.allocate("a").base
    # Another Instance meanwhile gets another range.
    assert restarted.allocate("b") != started.ids

    await node.remove(started)
    assert userns.RangePool.for_data_dir(node.data).get("a") is None


# The network namespace


@pytest.fixture
def netns() -> Iterator[Path]:
    if shutil.which("ip") is None:
        pytest.skip("iproute2 is not installed")
    name = f"hmtest-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    try:
        yield Path("/var/run/netns") / name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


async def test_the_agents_network_namespace_serves_low_ports_once_configured(
    node: Node, netns: Path
) -> None:
    # busybox httpd binds before it daemonizes: its exit status says whether the bind worked.
    script = (
        "readlink /proc/self/ns/net; httpd -p {port} -h / && echo bound {port} || "
        "echo refused {port}; echo " + READY + "; exec sleep 1000"
    )
    before = await node.run("a", script.format(port=80), netns=netns)
    inode, outcome = await node.output(before)
    assert inode == f"net:[{netns.stat().st_ino}]"
    # The namespace belongs to the host's user namespace: the container's root has no
    # CAP_NET_BIND_SERVICE there.
    assert outcome == "refused 80"
    await node.remove(before)

    userns.configure_netns(netns)
    after = await node.run("b", script.format(port=81), netns=netns)
    assert (await node.output(after))[1] == "bound 81"


# Cleanup


async def test_cleanup_leaves_no_mount_and_no_directory_behind(node: Node) -> None:
    started = await node.run("a", f"echo {READY}; exec sleep 1000")
    await node.output(started)
    gate = started.root.parent
    assert mount_lines(started.root) != []
    await node.remove(started)
    assert mount_lines(started.root, started.container_dir) == []
    assert not gate.exists()
    assert not (started.container_dir / rootfs.IDMAPPED_DIR).exists()
    # Unmounting again (an agent cleaning up after itself twice) is harmless.
    rootfs.unmount_rootfs(started.container_dir)


def test_a_crash_between_the_helper_mounts_and_the_overlay_is_cleaned_up(
    store: ImageStore, tmp_path: Path
) -> None:
    image = store.ensure_busybox()
    container_dir = tmp_path / "c"
    helpers = container_dir / rootfs.IDMAPPED_DIR
    (helpers / "0").mkdir(parents=True)
    ids = idmap.IdRange(userns.FIRST_BASE)
    try:
        with idmap.user_namespace(ids) as fd:
            idmap.mount_idmapped(image.layers[0], helpers / "0", fd)
    except idmap.IdmapUnavailable as exc:
        pytest.skip(f"idmapped mounts are unavailable here: {exc}")
    assert mount_lines(helpers / "0") != []
    rootfs.unmount_rootfs(container_dir)
    assert mount_lines(helpers) == []
    assert not helpers.exists()


# Helpers


def idmap_works(node: Node) -> bool:
    """Whether the image store's filesystem can be idmapped here (ext4 and tmpfs can)."""
    probe = node.data / "idmap-probe"
    probe.mkdir(parents=True, exist_ok=True)
    try:
        with idmap.user_namespace(idmap.IdRange(userns.FIRST_BASE)) as fd:
            idmap.mount_idmapped(node.store.ensure_busybox().layers[0], probe, fd)
    except idmap.IdmapUnavailable:
        return False
    finally:
        if rootfs.is_mounted(probe):
            subprocess.run(["umount", str(probe)], check=True)
        probe.rmdir()
    return True
