"""Container root filesystems as real overlay mounts of the image store's shared layers.

These mount overlayfs for real, so they need root. The image is a two-layer archive built here
(the top layer deletes a file and makes a directory opaque with OCI whiteouts), imported through
the store exactly as the agent would, and every check reads the kernel's own view: the merged
directory, the layer directories and /proc/self/mountinfo.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from hypermesh.runtime import rootfs
from hypermesh.runtime.images import Image, ImageStore

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="mounting overlayfs needs root (CAP_SYS_ADMIN)"),
]


def _layer(files: dict[str, bytes | None]) -> bytes:
    """An uncompressed layer tarball; None stands for a directory."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


def _docker_save(path: Path, tag: str, layers: list[bytes]) -> Path:
    """A `docker save` tarball of one image made of `layers`, base first."""
    config = json.dumps(
        {
            "os": "linux",
            "config": {"Cmd": ["sh"]},
            "rootfs": {
                "type": "layers",
                "diff_ids": ["sha256:" + hashlib.sha256(blob).hexdigest() for blob in layers],
            },
        }
    ).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    files = {config_name: config}
    files.update({f"{index}/layer.tar": blob for index, blob in enumerate(layers)})
    manifest = [{"Config": config_name, "RepoTags": [tag], "Layers": list(files)[1:]}]
    files["manifest.json"] = json.dumps(manifest).encode()
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(raw.getvalue())
    return path


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "images")


@pytest.fixture
def image(store: ImageStore, tmp_path: Path) -> Image:
    base = _layer(
        {
            "etc": None,
            "etc/motd": b"base\n",
            "etc/gone": b"deleted by the top layer\n",
            "etc/kept": b"kept\n",
            "cache": None,
            "cache/old": b"hidden by the opaque directory\n",
        }
    )
    top = _layer(
        {
            "etc/motd": b"top\n",
            "etc/.wh.gone": b"",
            "cache/.wh..wh..opq": b"",
            "cache/new": b"fresh\n",
        }
    )
    [imported] = store.import_archive(_docker_save(tmp_path / "two.tar", "two:1", [base, top]))
    return imported


@pytest.fixture
def container_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "container"
    yield path
    # A failed assertion must not leave a mount behind on the test machine.
    rootfs.unmount_rootfs(path)


def _mount_lines(path: Path) -> list[str]:
    wanted = f" {os.path.realpath(path)} "
    return [
        line for line in Path("/proc/self/mountinfo").read_text().splitlines() if wanted in line
    ]


def test_the_merged_view_applies_the_top_layers_whiteouts(
    image: Image, container_dir: Path
) -> None:
    root = rootfs.mount_rootfs(image, container_dir)

    assert root == container_dir / "rootfs"
    assert rootfs.is_mounted(root)
    [line] = _mount_lines(root)
    assert " - overlay " in line
    assert (root / "etc" / "motd").read_text() == "top\n"
    assert (root / "etc" / "kept").read_text() == "kept\n"
    assert not (root / "etc" / "gone").exists()
    assert sorted(os.listdir(root / "etc")) == ["kept", "motd"]
    assert sorted(os.listdir(root / "cache")) == ["new"]


def test_writes_go_to_the_containers_upper_directory_only(
    image: Image, container_dir: Path
) -> None:
    base, top = image.layers
    root = rootfs.mount_rootfs(image, container_dir)

    (root / "etc" / "motd").write_text("changed\n")
    (root / "scratch").write_text("mine\n")
    (root / "etc" / "kept").unlink()

    upper = container_dir / "upper"
    assert (upper / "etc" / "motd").read_text() == "changed\n"
    assert (upper / "scratch").read_text() == "mine\n"
    assert rootfs.is_whiteout(upper / "etc" / "kept")
    # The shared layers are untouched, so the next container starts from the image again.
    assert (top / "etc" / "motd").read_text() == "top\n"
    assert (base / "etc" / "kept").read_text() == "kept\n"
    assert not (base / "scratch").exists() and not (top / "scratch").exists()


def test_unmount_leaves_no_mount_behind_and_is_idempotent(
    image: Image, container_dir: Path
) -> None:
    root = rootfs.mount_rootfs(image, container_dir)
    # Mounting again (an agent adopting a running container) reuses the mount.
    assert rootfs.mount_rootfs(image, container_dir) == root
    assert len(_mount_lines(root)) == 1

    rootfs.unmount_rootfs(container_dir)
    assert not rootfs.is_mounted(root)
    assert _mount_lines(root) == []
    assert os.listdir(root) == []
    rootfs.unmount_rootfs(container_dir)
    rootfs.unmount_rootfs(container_dir.parent / "never-mounted")


def test_a_busy_rootfs_is_detached_lazily(image: Image, container_dir: Path) -> None:
    root = rootfs.mount_rootfs(image, container_dir)
    with open(root / "etc" / "motd") as still_open:
        rootfs.unmount_rootfs(container_dir)
        assert _mount_lines(root) == []
        # A process that had the file open keeps reading it after the detach.
        assert still_open.read() == "top\n"


def test_read_only_roots_refuse_writes(
    store: ImageStore, image: Image, container_dir: Path, tmp_path: Path
) -> None:
    root = rootfs.mount_rootfs(image, container_dir, read_only=True)
    assert (root / "etc" / "motd").read_text() == "top\n"
    with pytest.raises(OSError) as caught:
        (root / "new-file").write_text("x")
    assert caught.value.errno == errno.EROFS
    assert not (container_dir / "upper").exists()
    rootfs.unmount_rootfs(container_dir)

    # One layer alone is mounted the same way, with an empty directory beneath it.
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "index.html").write_text("hi\n")
    single = store.build(tmp_path / "site", "site:1")
    other = tmp_path / "other"
    try:
        root = rootfs.mount_rootfs(single, other, read_only=True)
        assert os.listdir(root) == ["index.html"]
        with pytest.raises(OSError):
            (root / "index.html").write_text("changed\n")
    finally:
        rootfs.unmount_rootfs(other)
    assert _mount_lines(other / "rootfs") == []


@pytest.mark.skipif(not Path("/bin/busybox").is_file(), reason="busybox-static is not installed")
def test_the_builtin_busybox_image_runs_a_shell(store: ImageStore, container_dir: Path) -> None:
    root = rootfs.mount_rootfs(store.ensure_busybox(), container_dir)
    result = subprocess.run(
        ["chroot", str(root), "/bin/sh", "-c", "echo hello > /tmp/out && cat /tmp/out && id -un"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (result.returncode, result.stdout) == (0, "hello\nroot\n"), result.stderr
    assert (container_dir / "upper" / "tmp" / "out").read_text() == "hello\n"
