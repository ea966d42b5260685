"""The image store's content: blobs named by their digest, and layers unpacked once.

    <root>/blobs/sha256/<hex>   manifests, configs and layer tarballs, named by their digest
    <root>/layers/<hex>/        each layer unpacked once, named by its uncompressed digest
                                (diff_id), in the overlayfs form that `rootfs` mounts
    <root>/tmp/                 staging; everything lands here first and is renamed into place

This module is the only writer of those directories, and it keeps one promise: nothing in
`blobs/` or `layers/` is unverified. A blob is copied to `tmp/`, hashed on the way, and renamed
into place only if it has the digest (and size) its parent document names; a layer is unpacked
into `tmp/` while its uncompressed bytes are hashed, and renamed into place only if that hash is
the diff_id the image config lists. Blobs are fsynced before their rename; layer directories are
not (a layer is thousands of files), so after a power cut a layer may need unpacking again:
delete its directory and the next `ensure_layer` rebuilds it from the blob.

Which blobs and layers are still needed is the store's business (`images`), as is locking:
`sweep` deletes what it is told is not needed and must run while no writer is staging.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import tempfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, cast

from hypermesh.runtime import rootfs
from hypermesh.runtime.imageformat import MAX_DOCUMENT, ImageError

CHUNK = 1 << 20
GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class Content:
    """The blobs and unpacked layers under one store root."""

    def __init__(self, root: Path) -> None:
        """Use (creating if needed) the content directories under `root`."""
        self.blobs = root / "blobs" / "sha256"
        self.layers = root / "layers"
        self.tmp = root / "tmp"
        for directory in (self.blobs, self.layers, self.tmp):
            directory.mkdir(parents=True, exist_ok=True)

    # Blobs

    def blob_path(self, digest: str) -> Path:
        """Where the blob `digest` is (or would be) stored."""
        return self.blobs / digest.removeprefix("sha256:")

    def has_blob(self, digest: str) -> bool:
        """Whether the blob is stored (and therefore verified)."""
        return self.blob_path(digest).is_file()

    def is_gzipped(self, digest: str) -> bool:
        """Whether a stored blob is gzip-compressed (by its magic bytes)."""
        with open(self.blob_path(digest), "rb") as stored:
            return stored.read(2) == GZIP_MAGIC

    def store_blob(
        self, source: IO[bytes], where: str, *, digest: str | None = None, size: int | None = None
    ) -> tuple[str, int]:
        """Copy `source` into the store; refuse it unless it has the `digest` and `size` given."""

        def check(actual: str, written: int) -> None:
            if digest is not None and actual != digest:
                raise ImageError(
                    f"{where}: content has digest {actual}, but {digest} was expected "
                    "(the archive is damaged or was altered)"
                )
            if size is not None and written != size:
                raise ImageError(f"{where}: {written} bytes, but its descriptor says {size}")

        def copy(out: IO[bytes]) -> None:
            while chunk := source.read(CHUNK):
                out.write(chunk)

        return self.write_blob(copy, check=check)

    def store_bytes(self, data: bytes) -> str:
        """Store a document the store generated itself; returns its digest."""
        return self.store_blob(io.BytesIO(data), "generated document")[0]

    def write_blob(
        self,
        produce: Callable[[IO[bytes]], None],
        *,
        check: Callable[[str, int], None] | None = None,
    ) -> tuple[str, int]:
        """Store whatever `produce` writes, named by its digest; `check(digest, size)` may
        refuse it (by raising) before it is renamed into place."""
        fd, staged = tempfile.mkstemp(dir=self.tmp, prefix="blob-")
        try:
            with os.fdopen(fd, "wb") as out:
                writer = _HashingWriter(out)
                produce(cast(IO[bytes], writer))
                out.flush()
                os.fsync(out.fileno())
            if check is not None:
                check(writer.digest, writer.size)
            os.chmod(staged, 0o644)
            # Identical content may already be there; replacing it changes nothing.
            os.replace(staged, self.blob_path(writer.digest))
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(staged)
            raise
        return writer.digest, writer.size

    def document(self, digest: str, where: str) -> bytes:
        """A stored JSON document (manifest, index, config), refusing anything too big to be one."""
        path = self.blob_path(digest)
        if path.stat().st_size > MAX_DOCUMENT:
            raise ImageError(f"{where}: larger than {MAX_DOCUMENT} bytes; not an image document")
        return path.read_bytes()

    # Layers

    def layer_path(self, diff_id: str) -> Path:
        """Where the layer `diff_id` is (or would be) unpacked."""
        return self.layers / diff_id.removeprefix("sha256:")

    def ensure_layer(self, diff_id: str, blob: str, where: str) -> Path:
        """The unpacked directory of a layer, unpacking its blob if this is the first use."""
        final = self.layer_path(diff_id)
        if final.is_dir():
            return final
        staging = Path(tempfile.mkdtemp(dir=self.tmp, prefix="layer-"))
        try:
            # A layer without an entry for its root still needs a traversable "/".
            os.chmod(staging, 0o755)
            with open(self.blob_path(blob), "rb") as raw:
                reader = _HashingReader(decompressed(raw, where))
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

    # Staging and collection

    @contextlib.contextmanager
    def staging_directory(self, prefix: str) -> Iterator[Path]:
        """A fresh directory under `tmp/`, removed afterwards (the caller holds the store's
        writer lock, so collection leaves it alone meanwhile)."""
        staging = Path(tempfile.mkdtemp(dir=self.tmp, prefix=prefix))
        try:
            yield staging
        finally:
            rootfs.remove_tree(staging)

    def digests(self) -> set[str]:
        """The digests of every stored blob and unpacked layer."""
        return {f"sha256:{path.name}" for path in (*self.blobs.iterdir(), *self.layers.iterdir())}

    def sweep(self, needed: set[str], *, among: set[str] | None = None) -> tuple[int, set[str]]:
        """Delete every blob and layer (of `among`, if given) whose digest is not in `needed`,
        and whatever is staged.

        Returns the bytes of blobs freed and the digests of the blobs deleted. Only safe while
        no writer is staging anything (the store's exclusive collection lock).
        """

        def doomed(path: Path) -> bool:
            digest = f"sha256:{path.name}"
            return digest not in needed and (among is None or digest in among)

        freed = 0
        deleted: set[str] = set()
        for blob in list(self.blobs.iterdir()):
            if doomed(blob):
                freed += blob.stat().st_size
                blob.unlink()
                deleted.add(f"sha256:{blob.name}")
        for layer in list(self.layers.iterdir()):
            if doomed(layer):
                rootfs.remove_tree(layer)
        # No writer is staging, so whatever is here was abandoned by a crash.
        for leftover in list(self.tmp.iterdir()):
            rootfs.remove_tree(leftover)
        return freed, deleted


def decompressed(raw: IO[bytes], where: str) -> rootfs.ByteStream:
    """`raw` itself, or its gzip decompression; zstd is refused by name."""
    magic = raw.read(4)
    raw.seek(0)
    if magic.startswith(GZIP_MAGIC):
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if magic == _ZSTD_MAGIC:
        raise ImageError(f"{where}: zstd-compressed layers are not supported (use gzip or none)")
    return raw


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data`, durably: staged beside it, fsynced, renamed."""
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
        while self.read(CHUNK):
            pass

    @property
    def digest(self) -> str:
        return f"sha256:{self._hasher.hexdigest()}"


class _HashingWriter:
    """Counts and hashes what is written on its way to a staged blob."""

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
