"""Reading image archives: OCI image layout tarballs and `docker save` tarballs.

No registry is reachable from these machines, so images arrive as files. Two layouts are in
use, and this module turns either into verified content of the store (`imageblobs.Content`)
plus the names the archive gives its images; the store files the names once everything is in.

- OCI image layout (skopeo, buildah, `docker save` since 25): `index.json` lists manifests by
  digest, every document and layer is under `blobs/sha256/<hex>`. A manifest may itself be a
  multi-platform index, of which this node takes the manifest for its own platform. Names come
  from the `io.containerd.image.name` or `org.opencontainers.image.ref.name` annotation.
- `docker save` (legacy): `manifest.json` lists each image's config file, its `RepoTags` and
  its layer tarballs by member path. There is no manifest blob, so the store writes one.

The archive itself may be gzip-compressed (then it is decompressed once into staging: blobs are
read out of order, and a backward seek in a gzip stream decompresses from the start again), and
so may its layers. Every message names the archive (`label`, the file name the user gave) and
the member at fault, so a user knows which file is wrong and why.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import re
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePath
from typing import IO

from hypermesh.runtime import imageformat as fmt
from hypermesh.runtime.imageblobs import CHUNK, GZIP_MAGIC, Content
from hypermesh.runtime.imageformat import ImageError

# Where tools put an image's full name in an OCI layout, most specific first.
_NAME_ANNOTATIONS = ("io.containerd.image.name", "org.opencontainers.image.ref.name")
_HEX_NAME = re.compile(r"(?:^|/)([0-9a-f]{64})(?:\.json)?$")

# What an archive names: (image name, manifest digest) pairs.
Named = list[tuple[str, str]]


def read_archive(source: IO[bytes], label: str, content: Content) -> Named:
    """Copy every image of the archive in `source` (a seekable binary file) into `content`.

    Returns the names the archive gives, not yet filed; an image it does not name is named after
    `label`'s file name (`web.tar` -> `web:latest`). The caller holds the store's writer lock.
    """
    with _opened(source, label, content.tmp) as archive:
        reader = _Reader(archive, label, content)
        if "index.json" in reader.members:
            return reader.oci()
        if "manifest.json" in reader.members:
            return reader.docker()
        raise ImageError(
            f"{label}: neither an OCI image layout (no index.json) "
            "nor a `docker save` archive (no manifest.json)"
        )


@contextlib.contextmanager
def _opened(source: IO[bytes], label: str, tmp: Path) -> Iterator[tarfile.TarFile]:
    compressed = source.read(2) == GZIP_MAGIC
    source.seek(0)
    plain: IO[bytes] = source
    staged: Path | None = None
    if compressed:
        fd, name = tempfile.mkstemp(dir=tmp, prefix="archive-")
        staged = Path(name)
        try:
            with os.fdopen(fd, "wb") as out, gzip.GzipFile(fileobj=source, mode="rb") as unzipped:
                shutil.copyfileobj(unzipped, out, CHUNK)
        except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
            staged.unlink()
            raise ImageError(f"{label}: damaged gzip compression: {exc}") from exc
        except BaseException:
            staged.unlink()
            raise
        plain = open(staged, "rb")  # closed in the finally below
    try:
        try:
            archive = tarfile.open(fileobj=plain, mode="r:")
        except tarfile.TarError as exc:
            raise ImageError(f"{label}: not a tar archive ({exc})") from exc
        with archive:
            yield archive
    finally:
        if staged is not None:
            plain.close()
            staged.unlink(missing_ok=True)


class _Reader:
    """One open archive: its members by normalised path, and where to put what it holds."""

    def __init__(self, archive: tarfile.TarFile, label: str, content: Content) -> None:
        self.archive = archive
        self.label = label
        self.content = content
        try:
            self.members = {_member_key(member.name): member for member in archive.getmembers()}
        except tarfile.TarError as exc:
            raise ImageError(f"{label}: truncated or damaged tar archive ({exc})") from exc

    # OCI image layout

    def oci(self) -> Named:
        where = f"{self.label}: index.json"
        index = fmt.parse(fmt.INDEX, self._read_json("index.json"), where)
        named: Named = []
        for descriptor in index.manifests:
            manifest = self._copy_blob(descriptor)
            where = f"{self.label}: blobs/sha256/{manifest.removeprefix('sha256:')}"
            document = self.content.document(manifest, where)
            if b'"manifests"' in document:
                # A multi-platform index: this node runs the manifest for its own platform.
                nested = fmt.parse(fmt.INDEX, document, where)
                manifest = self._copy_blob(self._for_this_host(nested))
            self._import_manifest(manifest)
            named.append((self._oci_name(descriptor.annotations), manifest))
        return named

    def _import_manifest(self, digest: str) -> None:
        where = f"{self.label}: manifest {digest}"
        manifest = fmt.parse(fmt.MANIFEST, self.content.document(digest, where), where)
        self._copy_blob(manifest.config)
        where = f"{self.label}: config {manifest.config.digest}"
        config = fmt.parse(fmt.CONFIG, self.content.document(manifest.config.digest, where), where)
        if len(config.rootfs.diff_ids) != len(manifest.layers):
            raise ImageError(
                f"{self.label}: manifest {digest} has {len(manifest.layers)} layers, but its "
                f"config lists {len(config.rootfs.diff_ids)} diff_ids"
            )
        for layer, diff_id in zip(manifest.layers, config.rootfs.diff_ids, strict=True):
            self._copy_blob(layer)
            self.content.ensure_layer(diff_id, layer.digest, f"{self.label}: layer {layer.digest}")

    def _copy_blob(self, descriptor: fmt.Descriptor) -> str:
        """Copy the blob a descriptor names into the store, verified."""
        if self.content.has_blob(descriptor.digest):
            return descriptor.digest
        member = f"blobs/sha256/{descriptor.digest.removeprefix('sha256:')}"
        with self._open_member(member) as source:
            self.content.store_blob(
                source, f"{self.label}: {member}", digest=descriptor.digest, size=descriptor.size
            )
        return descriptor.digest

    def _for_this_host(self, index: fmt.Index) -> fmt.Descriptor:
        architecture = fmt.host_architecture()
        for descriptor in index.manifests:
            if descriptor.platform is None and len(index.manifests) == 1:
                return descriptor
            wanted = ("linux", architecture)
            if descriptor.platform and (descriptor.platform.os, descriptor.platform.architecture) == wanted:
                return descriptor
        offered = ", ".join(
            f"{d.platform.os}/{d.platform.architecture}" for d in index.manifests if d.platform
        )
        raise ImageError(
            f"{self.label}: no manifest for linux/{architecture} (offered: {offered or 'none'})"
        )

    def _oci_name(self, annotations: dict[str, str]) -> str:
        """An image's name from its annotations; a bare tag, or none, borrows the file's name."""
        stem = _stem(self.label)
        for key in _NAME_ANNOTATIONS:
            value = annotations.get(key)
            if value is None:
                continue
            # A tag can contain neither '/' nor ':'; a value with either is a full reference.
            reference = value if ("/" in value or ":" in value) else f"{stem}:{value}"
            return fmt.checked_name(reference, f"{self.label}: annotation {key}")
        return fmt.checked_name(f"{stem}:latest", f"{self.label}: an unnamed image (file name)")

    # docker save

    def docker(self) -> Named:
        where = f"{self.label}: manifest.json"
        entries = fmt.parse(fmt.DOCKER, self._read_json("manifest.json"), where)
        named: Named = []
        for entry in entries:
            # `docker save` names the config and (since Docker 25) the layers by their digest.
            config_bytes = self._read_json(entry.config)
            config_where = f"{self.label}: {entry.config}"
            config_digest = self.content.store_blob(
                io.BytesIO(config_bytes), config_where, digest=_digest_in(entry.config)
            )[0]
            config = fmt.parse(fmt.CONFIG, config_bytes, config_where)
            diff_ids = config.rootfs.diff_ids
            if len(diff_ids) != len(entry.layers):
                raise ImageError(
                    f"{where}: {len(entry.layers)} layers, but {entry.config} lists "
                    f"{len(diff_ids)} diff_ids"
                )
            layers = []
            for member, diff_id in zip(entry.layers, diff_ids, strict=True):
                member_where = f"{self.label}: {member}"
                with self._open_member(member) as source:
                    blob, size = self.content.store_blob(
                        source, member_where, digest=_digest_in(member)
                    )
                self.content.ensure_layer(diff_id, blob, member_where)
                gzipped = self.content.is_gzipped(blob)
                media_type = fmt.MEDIA_OCI_LAYER_GZIP if gzipped else fmt.MEDIA_OCI_LAYER
                layers.append({"mediaType": media_type, "digest": blob, "size": size})
            manifest = self.content.store_bytes(
                fmt.manifest_document(config_digest, len(config_bytes), layers)
            )
            tags = entry.repo_tags or [self._oci_name({})]
            named.extend((fmt.checked_name(tag, where), manifest) for tag in tags)
        return named

    # Members

    @contextlib.contextmanager
    def _open_member(self, name: str) -> Iterator[IO[bytes]]:
        member = self.members.get(_member_key(name))
        if member is None:
            raise ImageError(f"{self.label}: {name} is referenced but missing from the archive")
        try:
            # extractfile follows links, which newer `docker save` uses for legacy layer paths.
            source = self.archive.extractfile(member)
        except KeyError as exc:
            raise ImageError(f"{self.label}: {name} is a link to a missing member") from exc
        if source is None:
            raise ImageError(f"{self.label}: {name} is not a regular file")
        with source:
            try:
                yield source
            except tarfile.TarError as exc:
                raise ImageError(f"{self.label}: {name} is truncated or damaged ({exc})") from exc

    def _read_json(self, name: str) -> bytes:
        with self._open_member(name) as source:
            data = source.read(fmt.MAX_DOCUMENT + 1)
        if len(data) > fmt.MAX_DOCUMENT:
            raise ImageError(
                f"{self.label}: {name} is larger than {fmt.MAX_DOCUMENT} bytes; not an image document"
            )
        return data


def _member_key(name: str) -> str:
    return "/".join(part for part in name.split("/") if part not in ("", "."))


def _stem(label: str) -> str:
    """The repository an unnamed image borrows from the archive's file name."""
    stem = PurePath(label).name
    for suffix in (".gz", ".tgz", ".tar", ".oci"):
        stem = stem.removesuffix(suffix)
    return stem.lower()


def _digest_in(member: str) -> str | None:
    """The digest a member's name promises (`<hex>.json`, `blobs/sha256/<hex>`), if any."""
    match = _HEX_NAME.search(member)
    return f"sha256:{match.group(1)}" if match else None
