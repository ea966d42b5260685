"""The node's content-addressed image store: names over verified blobs and unpacked layers.

No registry is reachable from these machines, so images arrive as files (an OCI image layout
tarball or a `docker save` tarball, read by `imagearchive`), are built from a directory, or are
made on the spot (the built-in `busybox` image, from Debian's busybox-static). Whatever the
source, an image ends up in the one form the rest of the agent uses, the OCI one:

    <root>/blobs/, layers/, tmp/   the content, verified on the way in (see `imageblobs`)
    <root>/refs.json               image names ("busybox:latest") -> manifest digest

Layers are named by diff_id rather than by blob digest, so a layer shared by a gzip-compressed
OCI archive and an uncompressed `docker save` of the same image is unpacked and stored once.
Names and digests are parsed by `imageformat`, which the agent's image routes share.

Several agent tasks call the store from threads, and a CLI may use the same directory from
another process, so the store guards itself with two flock(2) locks (which also exclude threads
of one process, since each acquisition opens its own file description): `refs.json` changes
under `.refs.lock`, and garbage collection holds `.gc.lock` exclusively while every writer
(import, build, lazy unpack) holds it shared, so a blob cannot be collected between being
written and being named. Readers need no lock: files only ever appear by rename.

An import or build that fails leaves the store as it was: names are filed only once everything
is in, and what the failed attempt had already stored is collected at once (only that: older
unnamed content may still be mounted by a container whose image was removed).
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import gzip
import json
import logging
import os
import tarfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar, cast

from pydantic import TypeAdapter

from hypermesh.runtime import busybox as busybox_image
from hypermesh.runtime import imagearchive, rootfs
from hypermesh.runtime import imageformat as fmt
from hypermesh.runtime.imageblobs import Content, decompressed, write_atomic
from hypermesh.runtime.imageformat import ImageError, Reference, parse_reference

__all__ = [
    "BUSYBOX_APPLETS",
    "BUSYBOX_IMAGE",
    "Image",
    "ImageConfig",
    "ImageError",
    "ImageNotFound",
    "ImageStore",
    "Reference",
    "Removal",
    "parse_reference",
]

log = logging.getLogger(__name__)

BUSYBOX_APPLETS = busybox_image.APPLETS
BUSYBOX_IMAGE = "busybox:latest"
DEFAULT_BUSYBOX = Path("/bin/busybox")
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_REFS_FILE = "refs.json"
_REFS_LOCK = ".refs.lock"
_GC_LOCK = ".gc.lock"
_REFS = TypeAdapter(dict[str, str])
_T = TypeVar("_T")


class ImageNotFound(LookupError):
    """No image in this node's store answers to the reference."""


@dataclass(frozen=True)
class ImageConfig:
    """How a container of the image runs by default (the OCI config's `config` section)."""

    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ()  # "KEY=VALUE"
    working_dir: str = "/"
    user: str = ""


@dataclass(frozen=True)
class Image:
    """An image in the store, ready to mount."""

    name: str  # "busybox:latest"; for a digest reference, a name pointing at it if one does
    digest: str  # the manifest's digest: the image's identity
    config: ImageConfig
    layers: tuple[Path, ...]  # unpacked layer directories, base first
    size: int  # bytes of the manifest, config and layer blobs
    # When the image says it was made (its config's `created`); builds leave it out so the
    # same directory always builds to the same digest.
    created: str | None = None

    @property
    def layer_digests(self) -> tuple[str, ...]:
        """The diff_ids of the layers, base first: what `in_use` hooks report."""
        return tuple(f"sha256:{layer.name}" for layer in self.layers)


@dataclass(frozen=True)
class Removal:
    """What `remove` did: the names dropped, the image they named, the bytes freed."""

    names: tuple[str, ...]
    digest: str
    freed: int


@dataclass(frozen=True)
class _Parsed:
    """What a manifest digest means, read once: content under a digest never changes."""

    config: ImageConfig
    layers: tuple[tuple[str, str], ...]  # (diff_id, blob digest), base first
    blobs: frozenset[str]
    size: int
    created: str | None


class ImageStore:
    """The images of one node, under `root`."""

    def __init__(self, root: Path, *, in_use: Callable[[], Iterable[str]] | None = None) -> None:
        """Open (creating if needed) the store at `root`.

        `in_use` reports the digests running containers still need (layer diff_ids, as in
        `Image.layer_digests`, or image digests); garbage collection never deletes those, even
        when no name refers to them any more.
        """
        # Absolute, because layer paths end up in overlay mount options.
        self.root = Path(root).absolute()
        self._in_use = in_use
        # Layers hold setuid binaries owned by root; host users have no business in them.
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._content = Content(self.root)
        # Reads and writes of one dict key are atomic under the GIL; no lock is needed.
        self._parsed: dict[str, _Parsed] = {}

    # Reading

    def resolve(self, reference: str) -> Image:
        """The image `reference` names: "busybox", "busybox:1", "docker.io/library/x", "x@sha256:…"."""
        parsed = parse_reference(reference)
        refs = self.names()
        if parsed.digest is None:
            digest = refs.get(parsed.name)
            if digest is None:
                raise self._not_found(reference, refs)
            return self._load(parsed.name, digest)
        try:
            self._parse_manifest(parsed.digest)
        except (ImageError, FileNotFoundError):
            raise self._not_found(reference, refs) from None
        names = sorted(name for name, digest in refs.items() if digest == parsed.digest)
        if parsed.repository and parsed.name in names:
            name = parsed.name
        elif names:
            name = names[0]
        else:
            name = f"{parsed.repository}@{parsed.digest}" if parsed.repository else parsed.digest
        return self._load(name, parsed.digest)

    def list(self) -> list[Image]:
        """Every named image, sorted by name; an image whose files are damaged is skipped."""
        images = []
        for name, digest in sorted(self.names().items()):
            try:
                images.append(self._load(name, digest))
            except (ImageError, OSError) as exc:
                log.warning("image %s (%s) is unusable: %s", name, digest, exc)
        return images

    def names(self) -> dict[str, str]:
        """Every image name and the manifest digest it points at."""
        try:
            data = (self.root / _REFS_FILE).read_bytes()
        except FileNotFoundError:
            return {}
        return fmt.parse(_REFS, data, str(self.root / _REFS_FILE))

    # Adding

    def import_archive(self, path: Path) -> builtins.list[Image]:
        """Import every image in an OCI image layout tarball or a `docker save` tarball.

        The archive itself may be gzip-compressed, and so may its layers. An image the archive
        does not name is filed under the archive's file name (`web.tar` -> `web:latest`).
        """
        path = Path(path)
        if not path.is_file():
            raise ImageError(f"{path}: no such file")
        with open(path, "rb") as source:
            return self.import_file(source, label=str(path))

    def import_file(self, source: IO[bytes], *, label: str) -> builtins.list[Image]:
        """`import_archive` of an open, seekable archive; `label` is the file name messages
        give and unnamed images borrow (an upload's temporary file has none of its own)."""

        def write() -> imagearchive.Named:
            named = imagearchive.read_archive(source, label, self._content)
            self._name(named)
            return named

        return [self._load(name, digest) for name, digest in self._adding(write)]

    def build(
        self,
        directory: Path,
        tag: str,
        *,
        entrypoint: Sequence[str] = (),
        cmd: Sequence[str] = (),
        env: Sequence[str] = (),
        working_dir: str = "/",
        user: str = "",
    ) -> Image:
        """Make an image of one layer holding `directory`'s contents (owned by root) and name it."""
        config = ImageConfig(tuple(entrypoint), tuple(cmd), tuple(env), working_dir, user)
        return self._adding(lambda: self._build(Path(directory), tag, config, str(directory)))

    def build_from_tar(
        self,
        source: IO[bytes],
        tag: str,
        *,
        label: str,
        entrypoint: Sequence[str] = (),
        cmd: Sequence[str] = (),
        env: Sequence[str] = (),
        working_dir: str = "/",
        user: str = "",
    ) -> Image:
        """`build` of a directory that arrives as a tar of its contents (plain or gzip).

        The tar is unpacked with the same checks as an image layer (nothing outside the
        directory, no device nodes), then built exactly as `build` builds a directory, so the
        result does not depend on how the client ordered or owned the entries.
        """
        config = ImageConfig(tuple(entrypoint), tuple(cmd), tuple(env), working_dir, user)
        fmt.checked_name(tag, f"build of {label}")
        _check_build_input(config, label)

        def build() -> Image:
            with self._content.staging_directory("context-") as staging:
                os.chmod(staging, 0o755)
                _unpack_context(source, label, staging)
                return self._build(staging, tag, config, label)

        return self._adding(build)

    def ensure_busybox(self, *, busybox: Path = DEFAULT_BUSYBOX) -> Image:
        """The built-in `busybox:latest`, made from the host's static busybox if it is missing."""
        with contextlib.suppress(ImageNotFound):
            return self.resolve(BUSYBOX_IMAGE)
        if not busybox.is_file():
            raise ImageError(
                f"the built-in busybox image is made from {busybox}, which does not exist: "
                "install Debian's busybox-static (apt-get install busybox-static)"
            )
        if not busybox_image.is_static_elf(busybox):
            raise ImageError(
                f"{busybox} is not a statically linked executable and cannot run in an image "
                "without a C library: install busybox-static instead of busybox"
            )

        def build() -> Image:
            with self._content.staging_directory("busybox-") as staging:
                busybox_image.lay_out(staging, busybox)
                config = ImageConfig(cmd=("sh",), env=(DEFAULT_PATH,))
                return self._build(staging, BUSYBOX_IMAGE, config, "the built-in busybox image")

        return self._adding(build)

    # Removing

    def remove(self, reference: str) -> Removal:
        """Drop a name (or, for a digest, every name of that image), then collect garbage."""
        parsed = parse_reference(reference)
        with self._lock(_REFS_LOCK, fcntl.LOCK_EX):
            refs = self.names()
            if parsed.digest is not None:
                doomed = sorted(name for name, digest in refs.items() if digest == parsed.digest)
            else:
                doomed = [parsed.name] if parsed.name in refs else []
            if not doomed:
                raise self._not_found(reference, refs)
            digest = refs[doomed[0]]
            for name in doomed:
                del refs[name]
            self._write_refs(refs)
        return Removal(tuple(doomed), digest, self.collect_garbage())

    def collect_garbage(self) -> int:
        """Delete blobs and layers no name and no running container needs; returns bytes freed."""
        return self._collect(among=None)

    # Names

    def _write_refs(self, refs: dict[str, str]) -> None:
        data = json.dumps(refs, indent=2, sort_keys=True).encode() + b"\n"
        write_atomic(self.root / _REFS_FILE, data)

    def _name(self, named: Iterable[tuple[str, str]]) -> None:
        with self._lock(_REFS_LOCK, fcntl.LOCK_EX):
            refs = self.names()
            refs.update(named)
            self._write_refs(refs)

    def _not_found(self, reference: str, refs: dict[str, str]) -> ImageNotFound:
        names = sorted(refs)
        known = ", ".join(names[:10]) or "none"
        if len(names) > 10:
            known += f", and {len(names) - 10} more"
        return ImageNotFound(
            f"ImageNotFound: no image {reference!r} in this node's store (known: {known})"
        )

    @contextlib.contextmanager
    def _lock(self, name: str, mode: int) -> Iterator[None]:
        fd = os.open(self.root / name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, mode)
            yield
        finally:
            os.close(fd)

    # Writing and collecting

    def _adding(self, write: Callable[[], _T]) -> _T:
        """Run `write` as a writer (shared collection lock); if it fails, collect what it had
        stored so far, so a refused archive or build (or a full disk) leaves no trace."""
        before = self._content.digests()
        try:
            with self._lock(_GC_LOCK, fcntl.LOCK_SH):
                return write()
        except Exception:
            with contextlib.suppress(OSError, ImageError):
                self._collect(among=self._content.digests() - before)
            raise

    def _collect(self, *, among: set[str] | None) -> int:
        with self._lock(_GC_LOCK, fcntl.LOCK_EX):
            needed = set(self._in_use()) if self._in_use is not None else set()
            roots = set(self.names().values()) | {d for d in needed if fmt.DIGEST.fullmatch(d)}
            for digest in roots:
                try:
                    parsed = self._parse_manifest(digest)
                except (ImageError, FileNotFoundError):
                    # A layer digest from `in_use`, or a damaged image: nothing below it to keep.
                    continue
                needed |= parsed.blobs
                needed.update(diff_id for diff_id, _ in parsed.layers)
            freed, deleted = self._content.sweep(needed, among=among)
            for digest in deleted:
                self._parsed.pop(digest, None)
            return freed

    # Reading manifests

    def _parse_manifest(self, digest: str) -> _Parsed:
        cached = self._parsed.get(digest)
        if cached is not None:
            return cached
        where = f"manifest {digest}"
        manifest = fmt.parse(fmt.MANIFEST, self._content.document(digest, where), where)
        config_where = f"config {manifest.config.digest}"
        config_bytes = self._content.document(manifest.config.digest, config_where)
        config = fmt.parse(fmt.CONFIG, config_bytes, config_where)
        diff_ids = config.rootfs.diff_ids
        if len(diff_ids) != len(manifest.layers):
            raise ImageError(
                f"{where}: {len(manifest.layers)} layers, but its config lists "
                f"{len(diff_ids)} diff_ids"
            )
        run = config.config or fmt.RunConfig.model_validate({})
        parsed = _Parsed(
            config=ImageConfig(
                entrypoint=tuple(run.entrypoint or ()),
                cmd=tuple(run.cmd or ()),
                env=tuple(run.env or ()),
                working_dir=run.working_dir or "/",
                user=run.user,
            ),
            layers=tuple(zip(diff_ids, (layer.digest for layer in manifest.layers), strict=True)),
            blobs=frozenset(
                {digest, manifest.config.digest, *(layer.digest for layer in manifest.layers)}
            ),
            size=self._content.blob_path(digest).stat().st_size
            + manifest.config.size
            + sum(layer.size for layer in manifest.layers),
            created=config.created,
        )
        self._parsed[digest] = parsed
        return parsed

    def _load(self, name: str, digest: str) -> Image:
        try:
            parsed = self._parse_manifest(digest)
        except FileNotFoundError as exc:
            raise ImageError(
                f"image {name} ({digest}) is damaged: {exc.filename} is missing; import it again"
            ) from exc
        layers = []
        for diff_id, blob in parsed.layers:
            path = self._content.layer_path(diff_id)
            if not path.is_dir():
                # Collected while only in use, or lost in a crash: the blob can rebuild it.
                with self._lock(_GC_LOCK, fcntl.LOCK_SH):
                    path = self._content.ensure_layer(diff_id, blob, f"layer {blob} of {name}")
            layers.append(path)
        return Image(name, digest, parsed.config, tuple(layers), parsed.size, parsed.created)

    # Building

    def _build(self, directory: Path, tag: str, config: ImageConfig, label: str) -> Image:
        """One layer of `directory`, a config, a manifest, a name; the caller is a writer."""
        if not directory.is_dir():
            raise ImageError(f"cannot build {tag}: {directory} is not a directory")
        name = fmt.checked_name(tag, f"build of {label}")
        _check_build_input(config, label)

        def write_layer(out: IO[bytes]) -> None:
            with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                for child in sorted(os.listdir(directory)):
                    tar.add(directory / child, arcname=child, filter=_owned_by_root)

        layer, layer_size = self._content.write_blob(write_layer)
        self._content.ensure_layer(layer, layer, f"build of {label}")
        document = {
            "architecture": fmt.host_architecture(),
            "os": "linux",
            "config": {
                "Entrypoint": list(config.entrypoint) or None,
                "Cmd": list(config.cmd) or None,
                "Env": list(config.env),
                "WorkingDir": config.working_dir,
                "User": config.user,
            },
            "rootfs": {"type": "layers", "diff_ids": [layer]},
            "history": [{"created_by": "hypermesh image build"}],
        }
        config_bytes = fmt.canonical(document)
        config_digest = self._content.store_bytes(config_bytes)
        layers = [{"mediaType": fmt.MEDIA_OCI_LAYER, "digest": layer, "size": layer_size}]
        manifest = self._content.store_bytes(
            fmt.manifest_document(config_digest, len(config_bytes), layers)
        )
        self._name([(name, manifest)])
        return self._load(name, manifest)


# Helpers without state


def _check_build_input(config: ImageConfig, label: str) -> None:
    for entry in config.env:
        if "=" not in entry or entry.startswith("="):
            raise ImageError(f"build of {label}: env entry {entry!r} is not KEY=VALUE")
    if config.working_dir and not config.working_dir.startswith("/"):
        raise ImageError(
            f"build of {label}: working directory {config.working_dir!r} must be an absolute path"
        )


def _unpack_context(source: IO[bytes], label: str, staging: Path) -> None:
    """Unpack a build context tar into `staging`, refusing what a directory cannot hold."""
    # A first pass names the member at fault before anything is written: OCI whiteout
    # markers would turn into deletions, and a damaged tar is better refused whole.
    try:
        stream = cast(IO[bytes], decompressed(source, label))
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                base = member.name.rstrip("/").rpartition("/")[2]
                if base.startswith(rootfs.WHITEOUT_PREFIX):
                    raise ImageError(
                        f"{label}: {member.name}: names starting with "
                        f"{rootfs.WHITEOUT_PREFIX!r} are OCI whiteout markers and cannot be "
                        "in a build directory"
                    )
        source.seek(0)
        rootfs.unpack_layer(decompressed(source, label), staging)
    except rootfs.LayerError as exc:
        raise ImageError(f"{label}: {exc}") from exc
    except tarfile.TarError as exc:
        raise ImageError(f"{label}: not a tar archive of a directory ({exc})") from exc
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise ImageError(f"{label}: damaged gzip compression: {exc}") from exc


def _owned_by_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info
