"""Idmapped mounts: an image's shared layers seen with their owners shifted into one range of ids.

An Instance with `spec.hostUsers: false` runs in a user namespace whose uid and gid 0 are host
id `base` (and 1 is `base + 1`, and so on for 65536 ids, `IdRange`). The image's layers are
unpacked once per node and shared by every container, owned by host ids (mostly 0). Seen from
inside the namespace those owners are unmapped: every file reads as owned by nobody (65534),
and the container's root, whose capabilities count only over ids its namespace maps, may not
write where the image's root could (/etc, /root, /var...). The layers cannot be chowned either:
other containers, with or without a user namespace, share them.

Linux (5.12+) can mount a tree "idmapped": the same inodes, with every owner translated through
a user namespace's mapping on the way in and out (mount_setattr(2), MOUNT_ATTR_IDMAP). overlayfs
accepts idmapped layers (5.19+), so `rootfs` mounts each layer idmapped and builds the overlay
from those; the container then sees the image's root-owned files as its own root's. The helper
mounts can go as soon as the overlay is mounted, because overlayfs keeps private clones of its
layers.

The kernel takes the mapping as a user namespace file descriptor, not as a table, and Python
cannot make one itself (the kernel refuses CLONE_NEWUSER to a multi-threaded process, which the
agent always is): `user_namespace` starts a short-lived `unshare --user` child, writes its maps,
opens its /proc/PID/ns/user and lets it exit; a mount keeps the namespace alive as long as it
needs it. That costs a fork and two execs per container start.

Not every filesystem can be idmapped (ext4, xfs, btrfs and tmpfs can; ramfs, most network and
FUSE filesystems, and kernels before 5.12 cannot): every failure here is `IdmapUnavailable`,
whose message says what failed, and the caller decides how to do without.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ID_LIMIT",
    "RANGE_SIZE",
    "IdRange",
    "IdmapUnavailable",
    "mount_idmapped",
    "user_namespace",
]

# Kubernetes gives each pod 65536 ids: every uid and gid an image can name in 16 bits.
RANGE_SIZE = 65536
# Host ids stay below 2**31: many tools still read uids as signed 32-bit numbers, and the
# kernel's own "invalid" id is 2**32 - 1.
ID_LIMIT = 1 << 31

# System call numbers of the mount API; they are the same on every architecture but alpha
# (the numbers from 424 up were allocated once for all of them).
_SYS_OPEN_TREE = 428
_SYS_MOVE_MOUNT = 429
_SYS_MOUNT_SETATTR = 442
_AT_FDCWD = -100
_AT_EMPTY_PATH = 0x1000
_OPEN_TREE_CLONE = 0x1
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_MOUNT_ATTR_IDMAP = 0x00100000
_MS_PRIVATE = 1 << 18
# How long the helper child may take to report that it is in its new namespace.
_HELPER_TIMEOUT = 10.0


class IdmapUnavailable(OSError):
    """An idmapped mount could not be made here; the message says which step failed and why."""


@dataclass(frozen=True)
class IdRange:
    """Container ids 0 .. size-1, which are host ids base .. base+size-1."""

    base: int
    size: int = RANGE_SIZE

    def __post_init__(self) -> None:
        if self.base <= 0 or self.size <= 0 or self.base + self.size > ID_LIMIT:
            raise ValueError(
                f"id range base={self.base} size={self.size}: need base > 0, size > 0 and "
                f"base + size <= {ID_LIMIT}"
            )

    @property
    def end(self) -> int:
        """The first host id after the range."""
        return self.base + self.size

    def host_id(self, inner: int) -> int:
        """The host id of container id `inner`; ids the range does not map become its root."""
        return self.base + inner if 0 <= inner < self.size else self.base

    def map_line(self) -> str:
        """The range as one line of /proc/PID/uid_map (and gid_map)."""
        return f"0 {self.base} {self.size}\n"


@contextlib.contextmanager
def user_namespace(ids: IdRange) -> Iterator[int]:
    """A file descriptor of a new user namespace mapping `ids` (uids and gids alike).

    The descriptor is closed on exit; mounts idmapped with it keep the namespace alive.
    """
    unshare = shutil.which("unshare")
    if unshare is None:
        raise IdmapUnavailable(errno.ENOENT, "no `unshare` (util-linux) to create a user namespace")
    # The child says it is in the namespace by printing a line (after unshare(2) and exec), then
    # waits for its stdin to close.
    try:
        child = subprocess.Popen(
            [unshare, "--user", "--", "/bin/sh", "-c", "echo ready; read _"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            close_fds=True, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        )  # fmt: skip
    except OSError as exc:
        raise IdmapUnavailable(
            exc.errno or errno.EIO, f"cannot start `unshare --user`: {exc}"
        ) from exc
    assert child.stdin is not None and child.stdout is not None and child.stderr is not None
    fd = -1
    try:
        if child.stdout.readline() != b"ready\n":
            child.wait(_HELPER_TIMEOUT)
            problem = child.stderr.read().decode(errors="replace").strip() or "no error output"
            raise IdmapUnavailable(errno.EPERM, f"`unshare --user` failed: {problem}")
        try:
            for name in ("uid_map", "gid_map"):
                with open(f"/proc/{child.pid}/{name}", "w") as handle:
                    handle.write(ids.map_line())
            fd = os.open(f"/proc/{child.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise IdmapUnavailable(
                exc.errno or errno.EIO, f"cannot map {ids.map_line().strip()!r}: {exc}"
            ) from exc
    finally:
        with contextlib.suppress(OSError):
            child.stdin.close()
        try:
            child.wait(_HELPER_TIMEOUT)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        for stream in (child.stdout, child.stderr):
            stream.close()
    try:
        yield fd
    finally:
        os.close(fd)


def mount_idmapped(source: Path, target: Path, userns_fd: int) -> None:
    """Mount `source` at the existing directory `target`, idmapped through `userns_fd`.

    Only the mount `source` is on is cloned, not mounts below it (an image layer has none).
    """
    tree = _syscall(
        "open_tree", _SYS_OPEN_TREE, _AT_FDCWD, os.fsencode(source), _OPEN_TREE_CLONE | os.O_CLOEXEC
    )
    try:
        # Private, so that attaching it propagates nowhere until it is gone again.
        attr = _MountAttr(_MOUNT_ATTR_IDMAP, 0, _MS_PRIVATE, userns_fd)
        _syscall(
            f"mount_setattr(MOUNT_ATTR_IDMAP) of {source}",
            _SYS_MOUNT_SETATTR, tree, b"", _AT_EMPTY_PATH, ctypes.byref(attr), ctypes.sizeof(attr),
        )  # fmt: skip
        _syscall(
            f"move_mount to {target}",
            _SYS_MOVE_MOUNT, tree, b"", _AT_FDCWD, os.fsencode(target), _MOVE_MOUNT_F_EMPTY_PATH,
        )  # fmt: skip
    finally:
        os.close(tree)


class _MountAttr(ctypes.Structure):
    # struct mount_attr, MOUNT_ATTR_SIZE_VER0.
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


@functools.cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def _syscall(what: str, number: int, *args: object) -> int:
    result = int(_libc().syscall(ctypes.c_long(number), *_arguments(args)))
    if result < 0:
        code = ctypes.get_errno()
        hint = " (this kernel has no mount API)" if code == errno.ENOSYS else ""
        raise IdmapUnavailable(code, f"{what}: {os.strerror(code)}{hint}")
    return result


def _arguments(args: tuple[object, ...]) -> list[object]:
    # Variadic syscall(): integers must be passed as C longs, or ctypes would pass them as ints.
    return [ctypes.c_long(arg) if isinstance(arg, int) else arg for arg in args]
