"""The node's content-addressed image store: blobs, unpacked layers and names.

No registry is reachable from these machines, so images arrive as files (an OCI image layout
tarball or a `docker save` tarball), are built from a directory, or are made on the spot (the
built-in `busybox` image, from Debian's busybox-static). Whatever the source, an image ends up in
the one form the rest of the agent uses, the OCI one:

    <root>/blobs/sha256/<hex>   manifests, configs and layer tarballs, named by their digest
    <root>/layers/<hex>/        each layer unpacked once, named by its uncompressed digest
                                (diff_id), in the overlayfs form that `rootfs` mounts
    <root>/refs.json            image names ("busybox:latest") -> manifest digest
    <root>/tmp/                 staging; everything lands here first and is renamed into place

Naming layers by diff_id rather than by blob digest means a layer shared by a gzip-compressed
OCI archive and an uncompressed `docker save` of the same image is unpacked and stored once.
Every blob is verified against the digest its parent names before it is renamed into place, and
every layer against its diff_id while it is unpacked, so nothing in `blobs/` or `layers/` is
ever unverified. Blobs and refs.json are fsynced before their rename; layer directories are not
(a layer is thousands of files), so after a power cut a layer may need unpacking again: delete
its directory and the next `resolve` rebuilds it from the blob.

Several agent tasks call the store from threads, and a CLI may use the same directory from
another process, so the store guards itself with two flock(2) locks (which also exclude threads
of one process, since each acquisition opens its own file description): `refs.json` changes
under `.refs.lock`, and garbage collection holds `.gc.lock` exclusively while every writer
(import, build, lazy unpack) holds it shared, so a blob cannot be collected between being
written and being named. Readers need no lock: files only ever appear by rename.
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import gzip
import hashlib
import io
import json
import logging
import os
import platform
import re
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar, cast

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from hypermesh.runtime import busybox as busybox_image
from hypermesh.runtime import rootfs

log = logging.getLogger(__name__)

BUSYBOX_APPLETS = busybox_image.APPLETS
BUSYBOX_IMAGE = "busybox:latest"
DEFAULT_BUSYBOX = Path("/bin/busybox")
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

MEDIA_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
# Where tools put an image's full name in an OCI layout, most specific first.
_NAME_ANNOTATIONS = ("io.containerd.image.name", "org.opencontainers.image.ref.name")

_REFS_FILE = "refs.json"
_REFS_LOCK = ".refs.lock"
_GC_LOCK = ".gc.lock"
_CHUNK = 1 << 20
# index.json, manifests and configs are small; anything bigger is not one of them.
_MAX_JSON = 16 << 20
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_HEX_NAME = re.compile(r"(?:^|/)([0-9a-f]{64})(?:\.json)?$")
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_DOMAIN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?(?::[0-9]+)?")
_TAG = re.compile(r"\w[\w.-]{0,127}")
_DOCKER_HUB = ("docker.io", "index.docker.io", "registry-1.docker.io")
_ARCHITECTURES = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}


class ImageNotFound(LookupError):
    """No image in this node's store answers to the reference."""


class ImageError(ValueError):
    """An archive, reference or build input that cannot become an image; says where and why."""


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

    @property
    def layer_digests(self) -> tuple[str, ...]:
        """The diff_ids of the layers, base first: what `in_use` hooks report."""
        return tuple(f"sha256:{layer.name}" for layer in self.layers)


@dataclass(frozen=True)
class Reference:
    """A parsed image reference: `repository[:tag][@digest]`, or a bare digest."""

    repository: str  # "" for a bare digest; Docker Hub names in their short form ("busybox")
    tag: str | None
    digest: str | None

    @property
    def name(self) -> str:
        """The name the store files the image under; a missing tag means `latest`."""
        return f"{self.repository}:{self.tag or 'latest'}"


def parse_reference(text: str) -> Reference:
    """Parse and normalise an image reference, as Docker does for familiar names."""
    reference = text.strip()
    if _DIGEST.fullmatch(reference):
        return Reference("", None, reference)
    digest = None
    if "@" in reference:
        reference, digest = reference.split("@", 1)
        if not _DIGEST.fullmatch(digest):
            raise ImageError(f"invalid image reference {text!r}: {digest!r} is not a sha256 digest")
    tag = None
    slash = reference.rfind("/")
    colon = reference.rfind(":")
    if colon > slash:
        reference, tag = reference[:colon], reference[colon + 1 :]
        if not _TAG.fullmatch(tag):
            raise ImageError(f"invalid image reference {text!r}: bad tag {tag!r}")
    parts = reference.split("/")
    domain = None
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        domain = parts.pop(0)
        if not _DOMAIN.fullmatch(domain):
            raise ImageError(f"invalid image reference {text!r}: bad registry {domain!r}")
    if domain in _DOCKER_HUB:
        domain = None
    if domain is None and len(parts) == 2 and parts[0] == "library":
        parts.pop(0)
    for part in parts:
        if not _COMPONENT.fullmatch(part):
            raise ImageError(
                f"invalid image reference {text!r}: {part!r} is not a valid name component "
                "(lowercase letters, digits and single separators . _ __ -)"
            )
    repository = "/".join(parts if domain is None else [domain, *parts])
    return Reference(repository, tag, digest)


# The OCI and Docker JSON documents, as far as the store reads them.


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)


def _check_digest(value: str) -> str:
    if not _DIGEST.fullmatch(value):
        raise ValueError(f"{value!r} is not a sha256 digest (the only algorithm supported)")
    return value


class _Platform(_Model):
    architecture: str = ""
    os: str = ""


class _Descriptor(_Model):
    media_type: str = Field("", alias="mediaType")
    digest: str
    size: int = Field(ge=0)
    annotations: dict[str, str] = Field(default_factory=dict)
    platform: _Platform | None = None

    @field_validator("digest")
    @classmethod
    def _sha256(cls, value: str) -> str:
        return _check_digest(value)


class _Index(_Model):
    manifests: list[_Descriptor]


class _Manifest(_Model):
    schema_version: int = Field(alias="schemaVersion")
    config: _Descriptor
    layers: list[_Descriptor]

    @field_validator("schema_version")
    @classmethod
    def _version_2(cls, value: int) -> int:
        if value != 2:
            raise ValueError(f"schemaVersion {value} is not supported (only 2)")
        return value


class _RunConfig(_Model):
    entrypoint: list[str] | None = Field(None, alias="Entrypoint")
    cmd: list[str] | None = Field(None, alias="Cmd")
    env: list[str] | None = Field(None, alias="Env")
    working_dir: str = Field("", alias="WorkingDir")
    user: str = Field("", alias="User")


class _RootFS(_Model):
    diff_ids: list[str]

    @field_validator("diff_ids")
    @classmethod
    def _digests(cls, values: list[str]) -> list[str]:
        return [_check_digest(value) for value in values]


class _ConfigFile(_Model):
    config: _RunConfig | None = None
    rootfs: _RootFS


class _DockerEntry(_Model):
    config: str = Field(alias="Config")
    repo_tags: list[str] | None = Field(None, alias="RepoTags")
    layers: list[str] = Field(alias="Layers")


_T = TypeVar("_T")
_INDEX = TypeAdapter(_Index)
_MANIFEST = TypeAdapter(_Manifest)
_CONFIG = TypeAdapter(_ConfigFile)
_DOCKER = TypeAdapter(list[_DockerEntry])
_REFS = TypeAdapter(dict[str, str])


def _parse(adapter: TypeAdapter[_T], data: bytes, where: str) -> _T:
    try:
        return adapter.validate_json(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or '(document)'}: {error['msg']}"
            for error in exc.errors()
        )
        raise ImageError(f"{where}: {problems}") from exc


@dataclass(frozen=True)
class _Parsed:
    """What a manifest digest means, read once: content under a digest never changes."""

    config: ImageConfig
    layers: tuple[tuple[str, str], ...]  # (diff_id, blob digest), base first
    blobs: frozenset[str]
    size: int


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
        self._blobs = self.root / "blobs" / "sha256"
        self._layers = self.root / "layers"
        self._tmp = self.root / "tmp"
        # Layers hold setuid binaries owned by root; host users have no business in them.
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        for directory in (self._blobs, self._layers, self._tmp):
            directory.mkdir(parents=True, exist_ok=True)
        # Reads and writes of one dict key are atomic under the GIL; no lock is needed.
        self._parsed: dict[str, _Parsed] = {}

    # Reading

    def resolve(self, reference: str) -> Image:
        """The image `reference` names: "busybox", "busybox:1", "docker.io/library/x", "x@sha256:…"."""
        parsed = parse_reference(reference)
        refs = self._read_refs()
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
        for name, digest in sorted(self._read_refs().items()):
            try:
                images.append(self._load(name, digest))
            except (ImageError, OSError) as exc:
                log.warning("image %s (%s) is unusable: %s", name, digest, exc)
        return images

    # Adding

    def import_archive(self, path: Path) -> builtins.list[Image]:
        """Import every image in an OCI image layout tarball or a `docker save` tarball.

        The archive itself may be gzip-compressed, and so may its layers. An image the archive
        does not name is filed under the archive's file name (`web.tar` -> `web:latest`).
        """
        path = Path(path)
        if not path.is_file():
            raise ImageError(f"{path}: no such file")
        with self._lock(_GC_LOCK, fcntl.LOCK_SH), self._open_archive(path) as archive:
            members = {_member_key(member.name): member for member in archive.getmembers()}
            if "index.json" in members:
                named = self._import_oci(archive, members, path)
            elif "manifest.json" in members:
                named = self._import_docker(archive, members, path)
            else:
                raise ImageError(
                    f"{path}: neither an OCI image layout (no index.json) "
                    "nor a `docker save` archive (no manifest.json)"
                )
            self._name(named)
        return [self._load(name, digest) for name, digest in named]

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
        with self._lock(_GC_LOCK, fcntl.LOCK_SH):
            return self._build(
                Path(directory),
                tag,
                ImageConfig(tuple(entrypoint), tuple(cmd), tuple(env), working_dir, user),
            )

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
        with self._lock(_GC_LOCK, fcntl.LOCK_SH):
            staging = Path(tempfile.mkdtemp(dir=self._tmp, prefix="busybox-"))
            try:
                busybox_image.lay_out(staging, busybox)
                config = ImageConfig(cmd=("sh",), env=(DEFAULT_PATH,))
                return self._build(staging, BUSYBOX_IMAGE, config)
            finally:
                rootfs.remove_tree(staging)

    # Removing

    def remove(self, reference: str) -> None:
        """Drop a name (or, for a digest, every name of that image), then collect garbage."""
        parsed = parse_reference(reference)
        with self._lock(_REFS_LOCK, fcntl.LOCK_EX):
            refs = self._read_refs()
            if parsed.digest is not None:
                doomed = [name for name, digest in refs.items() if digest == parsed.digest]
            else:
                doomed = [parsed.name] if parsed.name in refs else []
            if not doomed:
                raise self._not_found(reference, refs)
            for name in doomed:
                del refs[name]
            self._write_refs(refs)
        self.collect_garbage()

    def collect_garbage(self) -> int:
        """Delete blobs and layers no name and no running container needs; returns bytes freed."""
        with self._lock(_GC_LOCK, fcntl.LOCK_EX):
            needed = set(self._in_use()) if self._in_use is not None else set()
            roots = set(self._read_refs().values()) | {d for d in needed if _DIGEST.fullmatch(d)}
            for digest in roots:
                try:
                    parsed = self._parse_manifest(digest)
                except (ImageError, FileNotFoundError):
                    # A layer digest from `in_use`, or a damaged image: nothing below it to keep.
                    continue
                needed |= parsed.blobs
                needed.update(diff_id for diff_id, _ in parsed.layers)
            freed = 0
            for blob in list(self._blobs.iterdir()):
                if f"sha256:{blob.name}" not in needed:
                    freed += blob.stat().st_size
                    blob.unlink()
                    self._parsed.pop(f"sha256:{blob.name}", None)
            for layer in list(self._layers.iterdir()):
                if f"sha256:{layer.name}" not in needed:
                    rootfs.remove_tree(layer)
            # No writer holds the shared lock now, so whatever is staged was abandoned by a crash.
            for leftover in list(self._tmp.iterdir()):
                rootfs.remove_tree(leftover)
            return freed

    # Names

    def _read_refs(self) -> dict[str, str]:
        try:
            data = (self.root / _REFS_FILE).read_bytes()
        except FileNotFoundError:
            return {}
        return _parse(_REFS, data, str(self.root / _REFS_FILE))

    def _write_refs(self, refs: dict[str, str]) -> None:
        data = json.dumps(refs, indent=2, sort_keys=True).encode() + b"\n"
        _write_atomic(self.root / _REFS_FILE, data)

    def _name(self, named: Iterable[tuple[str, str]]) -> None:
        with self._lock(_REFS_LOCK, fcntl.LOCK_EX):
            refs = self._read_refs()
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

    # Blobs and layers

    def _blob_path(self, digest: str) -> Path:
        return self._blobs / digest.removeprefix("sha256:")

    def _store_blob(
        self, source: IO[bytes], where: str, *, digest: str | None = None, size: int | None = None
    ) -> tuple[str, int]:
        """Copy `source` into the store; refuse it unless it has the `digest` and `size` given."""
        fd, staged = tempfile.mkstemp(dir=self._tmp, prefix="blob-")
        try:
            hasher = hashlib.sha256()
            written = 0
            with os.fdopen(fd, "wb") as out:
                while chunk := source.read(_CHUNK):
                    hasher.update(chunk)
                    out.write(chunk)
                    written += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            actual = f"sha256:{hasher.hexdigest()}"
            if digest is not None and actual != digest:
                raise ImageError(
                    f"{where}: content has digest {actual}, but {digest} was expected "
                    "(the archive is damaged or was altered)"
                )
            if size is not None and written != size:
                raise ImageError(f"{where}: {written} bytes, but its descriptor says {size}")
            os.chmod(staged, 0o644)
            # Identical content may already be there; replacing it changes nothing.
            os.replace(staged, self._blob_path(actual))
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(staged)
            raise
        return actual, written

    def _store_bytes(self, data: bytes) -> str:
        return self._store_blob(io.BytesIO(data), "generated document")[0]

    def _ensure_layer(self, diff_id: str, blob: str, where: str) -> Path:
        """The unpacked directory of a layer, unpacking its blob if this is the first use."""
        final = self._layers / diff_id.removeprefix("sha256:")
        if final.is_dir():
            return final
        staging = Path(tempfile.mkdtemp(dir=self._tmp, prefix="layer-"))
        try:
            # A layer without an entry for its root still needs a traversable "/".
            os.chmod(staging, 0o755)
            with open(self._blob_path(blob), "rb") as raw:
                reader = _HashingReader(_decompressed(raw, where))
                try:
                    rootfs.unpack_layer(reader, staging)
                    reader.drain()
                except rootfs.LayerError as exc:
                    raise ImageError(f"{where}: {exc}") from exc
                except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
                    raise ImageError(f"{where}: damaged gzip stream: {exc}") from exc
            if reader.digest != diff_id:
                raise ImageError(
                    f"{where}: unpacks to {reader.digest}, but the image config lists the "
                    f"layer as {diff_id} (the archive is damaged or was altered)"
                )
            try:
                os.rename(staging, final)
            except OSError:
                # Another thread unpacked the same layer first; its copy is as good as ours.
                if not final.is_dir():
                    raise
                rootfs.remove_tree(staging)
        except BaseException:
            rootfs.remove_tree(staging)
            raise
        return final

    def _document(self, digest: str, where: str) -> bytes:
        """A stored JSON document (manifest, index, config), refusing anything too big to be one."""
        path = self._blob_path(digest)
        if path.stat().st_size > _MAX_JSON:
            raise ImageError(f"{where}: larger than {_MAX_JSON} bytes; not an image document")
        return path.read_bytes()

    def _parse_manifest(self, digest: str) -> _Parsed:
        cached = self._parsed.get(digest)
        if cached is not None:
            return cached
        where = f"manifest {digest}"
        manifest = _parse(_MANIFEST, self._document(digest, where), where)
        config_where = f"config {manifest.config.digest}"
        config = _parse(_CONFIG, self._document(manifest.config.digest, config_where), config_where)
        diff_ids = config.rootfs.diff_ids
        if len(diff_ids) != len(manifest.layers):
            raise ImageError(
                f"{where}: {len(manifest.layers)} layers, but its config lists "
                f"{len(diff_ids)} diff_ids"
            )
        run = config.config or _RunConfig.model_validate({})
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
            size=self._blob_path(digest).stat().st_size
            + manifest.config.size
            + sum(layer.size for layer in manifest.layers),
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
            path = self._layers / diff_id.removeprefix("sha256:")
            if not path.is_dir():
                # Collected while only in use, or lost in a crash: the blob can rebuild it.
                with self._lock(_GC_LOCK, fcntl.LOCK_SH):
                    path = self._ensure_layer(diff_id, blob, f"layer {blob} of {name}")
            layers.append(path)
        return Image(name, digest, parsed.config, tuple(layers), parsed.size)

    # Archives

    @contextlib.contextmanager
    def _open_archive(self, path: Path) -> Iterator[tarfile.TarFile]:
        with open(path, "rb") as raw:
            compressed = raw.read(2) == _GZIP_MAGIC
        source = path
        if compressed:
            # Reading blobs out of order seeks backwards, and a backward seek in a gzip stream
            # decompresses from the start again; one plain copy is read once.
            fd, name = tempfile.mkstemp(dir=self._tmp, prefix="archive-")
            source = Path(name)
            try:
                with os.fdopen(fd, "wb") as out, gzip.open(path, "rb") as unzipped:
                    shutil.copyfileobj(unzipped, out, _CHUNK)
            except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
                source.unlink()
                raise ImageError(f"{path}: damaged gzip compression: {exc}") from exc
        try:
            try:
                archive = tarfile.open(source, "r:")
            except tarfile.TarError as exc:
                raise ImageError(f"{path}: not a tar archive ({exc})") from exc
            with archive:
                yield archive
        finally:
            if compressed:
                source.unlink(missing_ok=True)

    def _import_oci(
        self, archive: tarfile.TarFile, members: dict[str, tarfile.TarInfo], path: Path
    ) -> builtins.list[tuple[str, str]]:
        index = _parse(
            _INDEX, _read_json(archive, members, "index.json", path), f"{path}: index.json"
        )
        named: builtins.list[tuple[str, str]] = []
        for descriptor in index.manifests:
            manifest = self._copy_blob(archive, members, descriptor, path)
            where = f"{path}: blobs/sha256/{manifest.removeprefix('sha256:')}"
            document = self._document(manifest, where)
            if b'"manifests"' in document:
                # A multi-platform index: this node runs the manifest for its own platform.
                nested = _parse(_INDEX, document, where)
                manifest = self._copy_blob(archive, members, _for_this_host(nested, path), path)
            self._import_manifest(archive, members, manifest, path)
            named.append((_oci_name(descriptor.annotations, path), manifest))
        return named

    def _import_manifest(
        self, archive: tarfile.TarFile, members: dict[str, tarfile.TarInfo], digest: str, path: Path
    ) -> None:
        where = f"{path}: manifest {digest}"
        manifest = _parse(_MANIFEST, self._document(digest, where), where)
        self._copy_blob(archive, members, manifest.config, path)
        where = f"{path}: config {manifest.config.digest}"
        config = _parse(_CONFIG, self._document(manifest.config.digest, where), where)
        if len(config.rootfs.diff_ids) != len(manifest.layers):
            raise ImageError(
                f"{path}: manifest {digest} has {len(manifest.layers)} layers, but its config "
                f"lists {len(config.rootfs.diff_ids)} diff_ids"
            )
        for layer, diff_id in zip(manifest.layers, config.rootfs.diff_ids, strict=True):
            self._copy_blob(archive, members, layer, path)
            self._ensure_layer(diff_id, layer.digest, f"{path}: layer {layer.digest}")

    def _copy_blob(
        self,
        archive: tarfile.TarFile,
        members: dict[str, tarfile.TarInfo],
        descriptor: _Descriptor,
        path: Path,
    ) -> str:
        """Copy the blob a descriptor names from an OCI layout into the store, verified."""
        stored = self._blob_path(descriptor.digest)
        if stored.is_file():
            return descriptor.digest
        member = f"blobs/sha256/{descriptor.digest.removeprefix('sha256:')}"
        with _open_member(archive, members, member, path) as source:
            self._store_blob(
                source, f"{path}: {member}", digest=descriptor.digest, size=descriptor.size
            )
        return descriptor.digest

    def _import_docker(
        self, archive: tarfile.TarFile, members: dict[str, tarfile.TarInfo], path: Path
    ) -> builtins.list[tuple[str, str]]:
        where = f"{path}: manifest.json"
        entries = _parse(_DOCKER, _read_json(archive, members, "manifest.json", path), where)
        named: builtins.list[tuple[str, str]] = []
        for entry in entries:
            # `docker save` names the config and (since Docker 25) the layers by their digest.
            config_bytes = _read_json(archive, members, entry.config, path)
            config_digest = self._store_blob(
                io.BytesIO(config_bytes), f"{path}: {entry.config}", digest=_digest_in(entry.config)
            )[0]
            config = _parse(_CONFIG, config_bytes, f"{path}: {entry.config}")
            diff_ids = config.rootfs.diff_ids
            if len(diff_ids) != len(entry.layers):
                raise ImageError(
                    f"{where}: {len(entry.layers)} layers, but {entry.config} lists "
                    f"{len(diff_ids)} diff_ids"
                )
            layers = []
            for member, diff_id in zip(entry.layers, diff_ids, strict=True):
                with _open_member(archive, members, member, path) as source:
                    blob, size = self._store_blob(
                        source, f"{path}: {member}", digest=_digest_in(member)
                    )
                self._ensure_layer(diff_id, blob, f"{path}: {member}")
                with open(self._blob_path(blob), "rb") as stored:
                    gzipped = stored.read(2) == _GZIP_MAGIC
                media_type = MEDIA_OCI_LAYER_GZIP if gzipped else MEDIA_OCI_LAYER
                layers.append({"mediaType": media_type, "digest": blob, "size": size})
            manifest = self._store_bytes(
                _manifest_document(config_digest, len(config_bytes), layers)
            )
            tags = entry.repo_tags or [_oci_name({}, path)]
            named.extend((_checked_name(tag, where), manifest) for tag in tags)
        return named

    # Building

    def _build(self, directory: Path, tag: str, config: ImageConfig) -> Image:
        if not directory.is_dir():
            raise ImageError(f"cannot build {tag}: {directory} is not a directory")
        name = _checked_name(tag, f"build of {directory}")
        for entry in config.env:
            if "=" not in entry:
                raise ImageError(f"build of {directory}: env entry {entry!r} is not KEY=VALUE")
        fd, staged = tempfile.mkstemp(dir=self._tmp, prefix="build-")
        try:
            with os.fdopen(fd, "wb") as out:
                writer = _HashingWriter(out)
                stream = cast(IO[bytes], writer)
                with tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                    for child in sorted(os.listdir(directory)):
                        tar.add(directory / child, arcname=child, filter=_owned_by_root)
                out.flush()
                os.fsync(out.fileno())
            layer = writer.digest
            os.chmod(staged, 0o644)
            os.replace(staged, self._blob_path(layer))
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(staged)
            raise
        self._ensure_layer(layer, layer, f"build of {directory}")
        document = {
            "architecture": _ARCHITECTURES.get(platform.machine(), platform.machine()),
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
        config_bytes = _canonical(document)
        config_digest = self._store_bytes(config_bytes)
        layers = [{"mediaType": MEDIA_OCI_LAYER, "digest": layer, "size": writer.size}]
        manifest = self._store_bytes(_manifest_document(config_digest, len(config_bytes), layers))
        self._name([(name, manifest)])
        return self._load(name, manifest)


# Helpers without state


class _HashingReader:
    """Passes a stream through while hashing it, so a layer is verified as it is unpacked."""

    def __init__(self, source: rootfs.ByteStream) -> None:
        self._source = source
        self._hasher = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        chunk = self._source.read(size)
        self._hasher.update(chunk)
        return chunk

    def drain(self) -> None:
        """Read to the end: tar stops at its end marker, but the digest covers any padding."""
        while self.read(_CHUNK):
            pass

    @property
    def digest(self) -> str:
        return f"sha256:{self._hasher.hexdigest()}"


class _HashingWriter:
    """Counts and hashes what tarfile writes on its way to the staged blob."""

    def __init__(self, target: IO[bytes]) -> None:
        self._target = target
        self._hasher = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._hasher.update(data)
        self.size += len(data)
        return self._target.write(data)

    @property
    def digest(self) -> str:
        return f"sha256:{self._hasher.hexdigest()}"


def _decompressed(raw: IO[bytes], where: str) -> rootfs.ByteStream:
    magic = raw.read(4)
    raw.seek(0)
    if magic.startswith(_GZIP_MAGIC):
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if magic == _ZSTD_MAGIC:
        raise ImageError(f"{where}: zstd-compressed layers are not supported (use gzip or none)")
    return raw


def _member_key(name: str) -> str:
    return "/".join(part for part in name.split("/") if part not in ("", "."))


@contextlib.contextmanager
def _open_member(
    archive: tarfile.TarFile, members: dict[str, tarfile.TarInfo], name: str, path: Path
) -> Iterator[IO[bytes]]:
    member = members.get(_member_key(name))
    if member is None:
        raise ImageError(f"{path}: {name} is referenced but missing from the archive")
    try:
        # extractfile follows links, which newer `docker save` uses for legacy layer paths.
        source = archive.extractfile(member)
    except KeyError as exc:
        raise ImageError(f"{path}: {name} is a link to a missing member") from exc
    if source is None:
        raise ImageError(f"{path}: {name} is not a regular file")
    with source:
        yield source


def _read_json(
    archive: tarfile.TarFile, members: dict[str, tarfile.TarInfo], name: str, path: Path
) -> bytes:
    with _open_member(archive, members, name, path) as source:
        data = source.read(_MAX_JSON + 1)
    if len(data) > _MAX_JSON:
        raise ImageError(f"{path}: {name} is larger than {_MAX_JSON} bytes; not an image document")
    return data


def _digest_in(member: str) -> str | None:
    """The digest a member's name promises (`<hex>.json`, `blobs/sha256/<hex>`), if any."""
    match = _HEX_NAME.search(member)
    return f"sha256:{match.group(1)}" if match else None


def _for_this_host(index: _Index, path: Path) -> _Descriptor:
    architecture = _ARCHITECTURES.get(platform.machine(), platform.machine())
    for descriptor in index.manifests:
        if descriptor.platform is None and len(index.manifests) == 1:
            return descriptor
        if descriptor.platform and (descriptor.platform.os, descriptor.platform.architecture) == (
            "linux",
            architecture,
        ):
            return descriptor
    offered = ", ".join(
        f"{d.platform.os}/{d.platform.architecture}" for d in index.manifests if d.platform
    )
    raise ImageError(f"{path}: no manifest for linux/{architecture} (offered: {offered or 'none'})")


def _oci_name(annotations: dict[str, str], path: Path) -> str:
    """An image's name from its annotations; a bare tag, or none, borrows the file's name."""
    stem = path.name
    for suffix in (".gz", ".tgz", ".tar", ".oci"):
        stem = stem.removesuffix(suffix)
    for key in _NAME_ANNOTATIONS:
        value = annotations.get(key)
        if value is None:
            continue
        # A tag can contain neither '/' nor ':'; a value with either is a full reference.
        reference = value if ("/" in value or ":" in value) else f"{stem.lower()}:{value}"
        return _checked_name(reference, f"{path}: annotation {key}")
    return _checked_name(f"{stem.lower()}:latest", f"{path}: an unnamed image (file name)")


def _checked_name(reference: str, where: str) -> str:
    try:
        parsed = parse_reference(reference)
    except ImageError as exc:
        raise ImageError(f"{where}: {exc}") from exc
    if parsed.digest is not None or not parsed.repository:
        raise ImageError(
            f"{where}: {reference!r} is a digest, not a name an image can be filed under"
        )
    return parsed.name


def _manifest_document(config: str, config_size: int, layers: list[dict[str, Any]]) -> bytes:
    return _canonical(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_OCI_MANIFEST,
            "config": {"mediaType": MEDIA_OCI_CONFIG, "digest": config, "size": config_size},
            "layers": layers,
        }
    )


def _canonical(document: dict[str, Any]) -> bytes:
    """Stable JSON bytes, so the same input always yields the same digest."""
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def _owned_by_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _write_atomic(path: Path, data: bytes) -> None:
    fd, staged = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(staged, 0o644)
        os.replace(staged, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staged)
        raise
