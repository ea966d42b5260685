"""Root filesystems from shared image layers: layers unpacked in overlayfs form, and mounted.

Every container of an image shares the image's layer directories; only its own writes are
private. overlayfs gives exactly that: the layers become read-only `lowerdir`s, and each
container gets an `upperdir` (its writes) and a `workdir` under its own directory. This module
owns both halves of that contract, because they must agree on one on-disk format:

- `unpack_layer` turns one OCI layer tarball into a directory overlayfs understands. OCI marks
  deletions with `.wh.<name>` files and opaque directories with `.wh..wh..opq`; overlayfs marks
  them with a character device 0/0 and the `trusted.overlay.opaque` xattr. Each layer is
  unpacked on its own and overlayfs applies the whiteouts at mount time, so a layer directory is
  never modified by the layers above it and can be shared by any image that contains it.
  Unpacking is the place where a hostile image could reach the host, so member paths are
  checked (no absolute paths, no `..`, never through a symlink), device nodes are refused
  (those under /dev are dropped instead: the runtime mounts its own /dev over them), and only
  harmless extended attributes are applied (a forged `trusted.overlay.*` xattr could redirect
  overlayfs lookups outside the layer).
- `mount_rootfs` / `unmount_rootfs` / `is_mounted` manage the overlay mount itself. They call
  mount(2) and umount2(2) through ctypes rather than running mount(8): the agent mounts on every
  container start, and measured here (busy 2-core machine, median of 20) mount_rootfs takes
  0.7 ms including its mkdirs where `mount -t overlay` takes 2.5 ms, mostly fork and exec; errors
  also arrive as an errno instead of text to parse.
- With a user namespace (`ids`, an Instance with `spec.hostUsers: false`), the container's root
  is an unprivileged host id, which changes three things. The layers are mounted idmapped
  (`idmap`), so the image's files belong to the container's own users; where the filesystem or
  kernel cannot idmap, only the writable layer is given to the container's root, and the
  image's files stay owned by nobody inside it (the log says which happened). The writable
  layer's root is owned by the container's root either way. And the overlay is mounted under
  `USERNS_MOUNT_DIR`, not in the container's directory: runc mounts the rootfs from inside the
  namespace, so every directory on the way to it must let the container's root pass, and the
  agent's data directory (like the server's, when `hypermesh up` puts the agent's inside it)
  is private to the host's root and must stay so. The last step on the way is a directory
  only the container's own group may enter.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import hashlib
import logging
import os
import shutil
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol, cast

from hypermesh.runtime import idmap

if TYPE_CHECKING:
    from hypermesh.runtime.images import Image

log = logging.getLogger(__name__)

ROOTFS_DIR = "rootfs"
UPPER_DIR = "upper"
WORK_DIR = "work"
# The image's layers, idmapped for one container, until its overlay holds them.
IDMAPPED_DIR = "idmapped"
# Where roots of containers with a user namespace are mounted: a directory of its own per
# container, named after a hash of the container's directory, inside a tree only root may list.
USERNS_MOUNT_DIR = Path("/run/hypermesh/rootfs")
# An overlay without an upperdir needs two lowerdirs; a one-layer read-only image gets this
# empty directory as its second, so every rootfs is an overlay with the same semantics.
EMPTY_DIR = "empty"

OPAQUE_XATTR = "trusted.overlay.opaque"
# Without CAP_SYS_ADMIN the trusted namespace is closed; this is the name overlayfs reads when
# mounted with `userxattr` inside a user namespace.
USER_OPAQUE_XATTR = "user.overlay.opaque"
WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"

# Extended attributes an image may set. security.capability is how images grant file
# capabilities (ping); user.* is inert, except user.overlay.*, which overlayfs obeys when mounted
# with `userxattr`. Everything else (trusted.*, security.selinux, ...) is either host policy or
# overlayfs's own metadata and is dropped.
_ALLOWED_XATTR_PREFIXES = ("user.",)
_FORBIDDEN_XATTR_PREFIXES = ("user.overlay.",)
_ALLOWED_XATTRS = frozenset({"security.capability"})
_PAX_XATTR = "SCHILY.xattr."

_MS_RDONLY = 0x1
_MNT_DETACH = 0x2
# mount(2) rejects option strings longer than a page.
_MAX_MOUNT_DATA = 4095
_COPY_CHUNK = 1 << 20


class ByteStream(Protocol):
    """Anything with a binary `read`: a file, a gzip stream, a hashing wrapper."""

    def read(self, size: int = -1, /) -> bytes: ...


class LayerError(ValueError):
    """A layer tarball that cannot be unpacked safely; the message names the member."""


class MountError(OSError):
    """mount(2) or umount2(2) failed; the message says which path and why."""


# Unpacking layers


def unpack_layer(stream: ByteStream, destination: Path) -> None:
    """Unpack the uncompressed tar `stream` into the existing, empty directory `destination`.

    The stream is read strictly in order, so the caller may hash it as it goes. Ownership is
    applied only when running as root (a non-root store cannot chown, and does not need to:
    it cannot mount overlays either).
    """
    as_root = os.geteuid() == 0
    # Directory modes and times are applied last: a directory without write permission (0555)
    # could not receive its children otherwise, and adding children changes its mtime.
    directories: list[tuple[Path, tarfile.TarInfo]] = []
    try:
        archive = tarfile.open(fileobj=cast(IO[bytes], stream), mode="r|")
    except tarfile.TarError as exc:
        raise LayerError(f"not a tar archive: {exc}") from exc
    with archive:
        try:
            for member in archive:
                _unpack_member(archive, member, destination, as_root, directories)
        except tarfile.TarError as exc:
            raise LayerError(f"truncated or damaged tar archive: {exc}") from exc
    for path, member in reversed(directories):
        _apply_metadata(path, member, as_root)


def _unpack_member(
    archive: tarfile.TarFile,
    member: tarfile.TarInfo,
    destination: Path,
    as_root: bool,
    directories: list[tuple[Path, tarfile.TarInfo]],
) -> None:
    parts = _member_parts(member.name)
    if not parts:
        # The archive's root entry ("./") carries the mode of the layer's root directory.
        if member.isdir():
            directories.append((destination, member))
        return
    parent = _ensure_directory(destination, parts[:-1], member.name)
    name = parts[-1]
    if name == OPAQUE_MARKER:
        _mark_opaque(parent, member.name)
        return
    if name.startswith(WHITEOUT_PREFIX):
        hidden = name[len(WHITEOUT_PREFIX) :]
        # ".wh..wh.*" names other than the opaque marker are AUFS bookkeeping, not content.
        if hidden.startswith(WHITEOUT_PREFIX):
            return
        if hidden in ("", ".", ".."):
            raise LayerError(f"{member.name}: a whiteout must name an entry of its directory")
        _make_whiteout(parent / hidden, member.name)
        return
    if member.ischr() or member.isblk():
        # The runtime mounts a fresh /dev over the image's, so nodes there are never seen.
        if parts[0] == "dev":
            return
        raise LayerError(f"{member.name}: device nodes are not allowed in image layers")
    target = parent / name
    _clear(target, keep_directory=member.isdir())
    if member.isdir():
        target.mkdir(mode=0o700, exist_ok=True)
        directories.append((target, member))
        _apply_xattrs(target, member, as_root)
        return
    if member.isreg():
        _write_regular(archive, member, target)
    elif member.issym():
        os.symlink(member.linkname, target)
    elif member.islnk():
        source = _existing_path(destination, member.linkname, member.name)
        try:
            os.link(source, target, follow_symlinks=False)
        except OSError as exc:
            raise LayerError(
                f"{member.name}: cannot hard link to {member.linkname}: {exc}"
            ) from exc
        # A hard link shares the inode, whose metadata was applied with the original.
        return
    elif member.isfifo():
        os.mkfifo(target, 0o600)
    else:
        raise LayerError(f"{member.name}: unsupported tar entry type {member.type!r}")
    _apply_metadata(target, member, as_root)
    _apply_xattrs(target, member, as_root)


def _member_parts(name: str) -> list[str]:
    """The path components of a member, refusing anything that could leave the layer."""
    if name.startswith("/"):
        raise LayerError(f"{name}: absolute paths are not allowed in image layers")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise LayerError(f"{name}: '..' would escape the layer directory")
    return parts


def _ensure_directory(root: Path, parts: list[str], member: str) -> Path:
    """The directory `root/parts`, created if missing; refuses to pass through a symlink."""
    current = root
    for part in parts:
        current = current / part
        try:
            info = os.lstat(current)
        except FileNotFoundError:
            current.mkdir(mode=0o755)
            continue
        if stat.S_ISLNK(info.st_mode):
            raise LayerError(f"{member}: path passes through the symlink {part!r}")
        if not stat.S_ISDIR(info.st_mode):
            raise LayerError(f"{member}: {part!r} is not a directory")
    return current


def _existing_path(root: Path, name: str, member: str) -> Path:
    """An entry already unpacked, named as in the archive (the target of a hard link)."""
    parts = _member_parts(name)
    if not parts:
        raise LayerError(f"{member}: hard link to the layer root")
    parent = _ensure_directory(root, parts[:-1], member)
    path = parent / parts[-1]
    if not os.path.lexists(path):
        raise LayerError(f"{member}: hard link to {name}, which is not in the layer before it")
    return path


def _clear(path: Path, *, keep_directory: bool) -> None:
    """Make room for a new entry; a later entry for the same path replaces the earlier one."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(info.st_mode):
        if not keep_directory:
            remove_tree(path)
    else:
        path.unlink()


def _write_regular(archive: tarfile.TarFile, member: tarfile.TarInfo, target: Path) -> None:
    source = archive.extractfile(member)
    if source is None:
        raise LayerError(f"{member.name}: regular file without content")
    # O_NOFOLLOW|O_EXCL: the path was just cleared, so anything there now is not ours to follow.
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        shutil.copyfileobj(source, out, _COPY_CHUNK)


def _apply_metadata(path: Path, member: tarfile.TarInfo, as_root: bool) -> None:
    if as_root:
        os.chown(path, member.uid, member.gid, follow_symlinks=False)
    # chmod after chown: chown clears setuid and setgid bits. Symlinks have no mode on Linux.
    if not member.issym():
        os.chmod(path, stat.S_IMODE(member.mode))
    mtime = float(member.mtime)
    os.utime(path, (mtime, mtime), follow_symlinks=False)


def _apply_xattrs(path: Path, member: tarfile.TarInfo, as_root: bool) -> None:
    for key, value in member.pax_headers.items():
        if not key.startswith(_PAX_XATTR):
            continue
        name = key[len(_PAX_XATTR) :]
        if name not in _ALLOWED_XATTRS and not name.startswith(_ALLOWED_XATTR_PREFIXES):
            continue
        if name.startswith(_FORBIDDEN_XATTR_PREFIXES):
            continue
        if name.startswith("security.") and not as_root:
            continue
        # tarfile decodes PAX values as UTF-8 with surrogateescape; this restores the bytes.
        raw = value.encode("utf-8", "surrogateescape")
        try:
            os.setxattr(path, name, raw, follow_symlinks=False)
        except OSError as exc:
            raise LayerError(f"{member.name}: cannot set xattr {name}: {exc}") from exc


def _make_whiteout(path: Path, member: str) -> None:
    _clear(path, keep_directory=False)
    try:
        # Linux allows this 0/0 device without CAP_MKNOD precisely because it is a whiteout.
        os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))
    except OSError as exc:
        raise LayerError(
            f"{member}: cannot create the overlay whiteout {path.name}: {exc}"
        ) from exc


def _mark_opaque(directory: Path, member: str) -> None:
    names = (OPAQUE_XATTR, USER_OPAQUE_XATTR) if os.geteuid() == 0 else (USER_OPAQUE_XATTR,)
    for name in names:
        try:
            os.setxattr(directory, name, b"y", follow_symlinks=False)
            return
        except OSError as exc:
            failure = exc
    raise LayerError(f"{member}: cannot mark {directory.name or '/'} opaque: {failure}")


def is_whiteout(path: Path) -> bool:
    """Whether `path` is an overlayfs whiteout (a character device 0/0)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    return stat.S_ISCHR(info.st_mode) and info.st_rdev == os.makedev(0, 0)


def is_opaque(directory: Path) -> bool:
    """Whether `directory` carries overlayfs's opaque mark (trusted or user namespace)."""
    for name in (OPAQUE_XATTR, USER_OPAQUE_XATTR):
        try:
            if os.getxattr(directory, name, follow_symlinks=False) == b"y":
                return True
        except OSError:
            continue
    return False


def remove_tree(path: Path) -> None:
    """Delete a file or directory tree, including read-only directories a non-root unpack made."""
    if not os.path.lexists(path):
        return
    if os.path.islink(path) or not os.path.isdir(path):
        path.unlink()
        return
    if os.geteuid() != 0:
        # Without CAP_DAC_OVERRIDE a 0555 directory cannot be emptied. Symlinks are skipped:
        # chmod would follow them out of the tree.
        os.chmod(path, 0o700)
        for current, dirnames, _ in os.walk(path):
            for name in dirnames:
                child = os.path.join(current, name)
                if not os.path.islink(child):
                    os.chmod(child, 0o700)
    shutil.rmtree(path)


# Mounting


def mount_rootfs(
    image: Image,
    container_dir: Path,
    *,
    read_only: bool = False,
    ids: idmap.IdRange | None = None,
) -> Path:
    """Mount the image's layers as the container's root filesystem and return where.

    That is `container_dir/rootfs`, or with `ids` (the container runs in a user namespace
    mapping them) a directory under USERNS_MOUNT_DIR that only the container's root may reach;
    see the module docstring. Writes land in `container_dir/upper` (scratch space in
    `container_dir/work`); with `read_only` there is no upper layer at all. A rootfs that is
    already mounted is returned as it is, so an agent that restarts can call this again for a
    container it adopts.
    """
    if not image.layers:
        raise MountError(errno.EINVAL, f"image {image.name} has no layers to mount")
    # The kernel would resolve relative overlay paths against whatever the cwd is at the time.
    container_dir = container_dir.absolute()
    container_dir.mkdir(parents=True, exist_ok=True)
    if ids is None:
        target = container_dir / ROOTFS_DIR
        target.mkdir(exist_ok=True)
    else:
        target = _userns_mount_point(container_dir, ids)
    if is_mounted(target):
        return target
    layers = list(image.layers)
    idmapped = _idmap_layers(image, container_dir, ids) if ids is not None else None
    try:
        _mount_overlay(image, container_dir, target, idmapped or layers, read_only, ids)
    finally:
        # overlayfs holds private clones of its layers: the helper mounts are done with.
        if idmapped is not None:
            _unmount_idmapped(container_dir)
    if ids is not None:
        how = "idmapped layers" if idmapped is not None else "the writable layer chowned only"
        log.info(
            "rootfs of %s at %s: ids 0-%d are host ids %d-%d, %s",
            container_dir, target, ids.size - 1, ids.base, ids.end - 1, how,
        )  # fmt: skip
    return target


def _mount_overlay(
    image: Image,
    container_dir: Path,
    target: Path,
    layers: list[Path],
    read_only: bool,
    ids: idmap.IdRange | None,
) -> None:
    # overlayfs lists lowerdirs top-most first; images list layers base first.
    lower = [str(layer) for layer in reversed(layers)]
    if read_only:
        if len(lower) == 1:
            empty = container_dir / EMPTY_DIR
            empty.mkdir(exist_ok=True)
            lower.append(str(empty))
        options = f"lowerdir={':'.join(lower)}"
        flags = _MS_RDONLY
    else:
        upper = container_dir / UPPER_DIR
        work = container_dir / WORK_DIR
        upper.mkdir(exist_ok=True)
        work.mkdir(exist_ok=True)
        # The merged "/" takes its owner and mode from the upper directory, not from the image;
        # copy the top layer's, or an agent running with umask 077 would lock users out of "/".
        # In a user namespace the owner is the image's as the container sees it: the upper
        # directory is not idmapped, so it holds host ids of the container's range.
        top = os.stat(image.layers[-1])
        if ids is not None:
            os.chown(upper, ids.host_id(top.st_uid), ids.host_id(top.st_gid))
        elif os.geteuid() == 0:
            os.chown(upper, top.st_uid, top.st_gid)
        os.chmod(upper, stat.S_IMODE(top.st_mode))
        options = f"lowerdir={':'.join(lower)},upperdir={upper},workdir={work}"
        flags = 0
    for path in (*lower, str(container_dir)):
        if any(character in path for character in ",:\\"):
            raise MountError(errno.EINVAL, f"overlay paths cannot contain ',', ':' or '\\': {path}")
    if len(options) > _MAX_MOUNT_DATA:
        raise MountError(
            errno.E2BIG,
            f"overlay options for {len(lower)} layers exceed a page ({len(options)} bytes): "
            "keep the image store at a shorter path or flatten the image",
        )
    _mount("overlay", str(target), "overlay", flags, options)


def unmount_rootfs(container_dir: Path) -> None:
    """Unmount the container's rootfs (either place) and any helper mounts a crash left behind.

    Detaches lazily what is still busy; doing it twice, or for a container never mounted, is
    harmless.
    """
    _peel(container_dir / ROOTFS_DIR)
    userns_target = userns_mount_point(container_dir)
    _peel(userns_target)
    for directory in (userns_target, userns_target.parent):
        with contextlib.suppress(FileNotFoundError):
            directory.rmdir()
    _unmount_idmapped(container_dir)


def userns_mount_point(container_dir: Path) -> Path:
    """Where the rootfs of the container in `container_dir` is mounted when it has a user
    namespace: a function of the directory's real path alone, so that unmounting finds it."""
    digest = hashlib.sha256(os.fsencode(os.path.realpath(container_dir))).hexdigest()[:32]
    return USERNS_MOUNT_DIR / digest / ROOTFS_DIR


def _userns_mount_point(container_dir: Path, ids: idmap.IdRange) -> Path:
    """The mount point for a container in a user namespace, with the directories on the way.

    Everyone may pass through USERNS_MOUNT_DIR but not list it; the container's own directory
    below it lets only its group in, which is the container's root group (host gid `ids.base`).
    """
    target = userns_mount_point(container_dir)
    for directory in (USERNS_MOUNT_DIR.parent, USERNS_MOUNT_DIR):
        directory.mkdir(mode=0o711, exist_ok=True)
        os.chmod(directory, 0o711)
    gate = target.parent
    gate.mkdir(mode=0o710, exist_ok=True)
    os.chown(gate, 0, ids.base)
    os.chmod(gate, 0o710)
    target.mkdir(exist_ok=True)
    return target


def _idmap_layers(image: Image, container_dir: Path, ids: idmap.IdRange) -> list[Path] | None:
    """The image's layers mounted idmapped to `ids` under `container_dir/idmapped`, base first;
    None, after a warning, where this host cannot idmap them."""
    helpers = container_dir / IDMAPPED_DIR
    # Leftovers of an agent that died between these mounts and the overlay's.
    _unmount_idmapped(container_dir)
    helpers.mkdir(mode=0o700)
    mounted: list[Path] = []
    try:
        with idmap.user_namespace(ids) as userns_fd:
            for index, layer in enumerate(image.layers):
                point = helpers / str(index)
                point.mkdir()
                idmap.mount_idmapped(layer, point, userns_fd)
                mounted.append(point)
    except idmap.IdmapUnavailable as exc:
        _unmount_idmapped(container_dir)
        log.warning(
            "cannot idmap the layers of image %s for %s (%s): falling back to chowning the "
            "writable layer only; the image's own files read as owned by nobody in the container",
            image.name, container_dir, exc,
        )  # fmt: skip
        return None
    return mounted


def _unmount_idmapped(container_dir: Path) -> None:
    helpers = container_dir / IDMAPPED_DIR
    if not helpers.is_dir():
        return
    for point in sorted(helpers.iterdir()):
        _peel(point)
        with contextlib.suppress(OSError):
            point.rmdir()
    with contextlib.suppress(OSError):
        helpers.rmdir()


def _peel(target: Path) -> None:
    """Unmount everything mounted at `target`; detach lazily if it is still busy."""
    # Mounts can be stacked on one path; peel until none is left.
    while is_mounted(target):
        try:
            _umount(str(target), 0)
        except MountError as exc:
            if exc.errno == errno.EBUSY:
                _umount(str(target), _MNT_DETACH)
            elif exc.errno == errno.EINVAL:
                # Someone else unmounted it between the check and the call.
                continue
            else:
                raise


def is_mounted(path: Path) -> bool:
    """Whether something is mounted exactly at `path`, from /proc/self/mountinfo."""
    wanted = os.path.realpath(path)
    return any(point == wanted for point in _mount_points())


def _mount_points() -> Iterator[str]:
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as mountinfo:
        for line in mountinfo:
            fields = line.split(" ", 5)
            if len(fields) > 4:
                yield unescape_mountinfo(fields[4])


def unescape_mountinfo(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash in paths as octal escapes."""
    if "\\" not in field:
        return field
    out: list[str] = []
    index = 0
    while index < len(field):
        chunk = field[index : index + 4]
        if chunk[0] == "\\" and len(chunk) == 4 and chunk[1:].isdigit():
            out.append(chr(int(chunk[1:], 8)))
            index += 4
        else:
            out.append(field[index])
            index += 1
    return "".join(out)


@functools.cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    char_p = ctypes.c_char_p
    libc.mount.argtypes = (char_p, char_p, char_p, ctypes.c_ulong, char_p)
    libc.mount.restype = ctypes.c_int
    libc.umount2.argtypes = (char_p, ctypes.c_int)
    libc.umount2.restype = ctypes.c_int
    return libc


def _mount(source: str, target: str, fstype: str, flags: int, data: str) -> None:
    result = _libc().mount(source.encode(), target.encode(), fstype.encode(), flags, data.encode())
    if result != 0:
        code = ctypes.get_errno()
        raise MountError(code, f"mount {fstype} at {target} ({data}): {os.strerror(code)}")


def _umount(target: str, flags: int) -> None:
    if _libc().umount2(target.encode(), flags) != 0:
        code = ctypes.get_errno()
        raise MountError(code, f"umount {target}: {os.strerror(code)}")
