"""The node image store: archives in, verified blobs and unpacked layers out, names, GC.

Archives are built here byte by byte with tarfile and hashlib, the way skopeo (OCI image layout)
and `docker save` lay them out, so every test knows exactly which digest should come out and
which corruption it planted. Nothing here needs root: whiteouts are character devices 0/0,
which Linux lets anyone create.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import platform
import stat
import sys
import tarfile
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hypermesh.runtime import images, rootfs
from hypermesh.runtime.images import ImageError, ImageNotFound, ImageStore, parse_reference

ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


# Building archives


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def file(name: str, data: bytes = b"", mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    return info, data


def directory(name: str, mode: int = 0o755) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, mode
    return info, b""


def link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, b""


def device(name: str) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
    return info, b""


@dataclass
class Layer:
    """A layer tarball: `blob` as stored in the archive, `diff_id` of its uncompressed form."""

    blob: bytes
    diff_id: str
    gzipped: bool

    @property
    def digest(self) -> str:
        return sha256(self.blob)


def layer(*entries: tuple[tarfile.TarInfo, bytes], gzipped: bool = False) -> Layer:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    plain = raw.getvalue()
    blob = gzip.compress(plain, mtime=0) if gzipped else plain
    return Layer(blob, sha256(plain), gzipped)


@dataclass
class Spec:
    """One image to put in an archive."""

    layers: list[Layer]
    entrypoint: list[str] | None = None
    cmd: list[str] | None = field(default_factory=lambda: ["/bin/hello"])
    env: list[str] = field(default_factory=lambda: ["PATH=/bin", "MODE=test"])
    working_dir: str = "/srv"
    user: str = "nobody"

    def config(self) -> bytes:
        document = {
            "architecture": ARCH,
            "os": "linux",
            "config": {
                "Entrypoint": self.entrypoint,
                "Cmd": self.cmd,
                "Env": self.env,
                "WorkingDir": self.working_dir,
                "User": self.user,
            },
            "rootfs": {"type": "layers", "diff_ids": [item.diff_id for item in self.layers]},
        }
        return json.dumps(document).encode()

    def manifest(self) -> bytes:
        config = self.config()
        layer_type = "application/vnd.oci.image.layer.v1.tar"
        document = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": sha256(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": layer_type + ("+gzip" if item.gzipped else ""),
                    "digest": item.digest,
                    "size": len(item.blob),
                }
                for item in self.layers
            ],
        }
        return json.dumps(document).encode()


def write_tar(path: Path, files: dict[str, bytes], *, compress: bool = False) -> Path:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(gzip.compress(raw.getvalue()) if compress else raw.getvalue())
    return path


def oci_archive(
    path: Path,
    images_by_ref: dict[str, Spec],
    *,
    annotation: str = "org.opencontainers.image.ref.name",
    tamper: str | None = None,
    compress: bool = False,
) -> Path:
    """An OCI image layout tarball; `tamper` names a blob digest whose bytes get flipped."""
    blobs: dict[str, bytes] = {}
    manifests = []
    for ref, spec in images_by_ref.items():
        for item in spec.layers:
            blobs[item.digest] = item.blob
        blobs[sha256(spec.config())] = spec.config()
        manifest = spec.manifest()
        blobs[sha256(manifest)] = manifest
        manifests.append(
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": sha256(manifest),
                "size": len(manifest),
                "annotations": {annotation: ref} if ref else {},
            }
        )
    if tamper is not None:
        blobs[tamper] = bytes([blobs[tamper][0] ^ 0xFF]) + blobs[tamper][1:]
    files = {
        "oci-layout": b'{"imageLayoutVersion": "1.0.0"}',
        "index.json": json.dumps({"schemaVersion": 2, "manifests": manifests}).encode(),
    }
    files.update({f"blobs/sha256/{digest[7:]}": data for digest, data in blobs.items()})
    return write_tar(path, files, compress=compress)


def docker_archive(path: Path, tags: list[str] | None, spec: Spec, *, tamper: int = -1) -> Path:
    """A legacy `docker save` tarball; `tamper` is the index of a layer whose bytes get flipped."""
    config = spec.config()
    files = {f"{sha256(config)[7:]}.json": config}
    names = []
    for position, item in enumerate(spec.layers):
        name = f"{position:064x}/layer.tar"
        blob = item.blob
        if position == tamper:
            blob = blob[:600] + bytes([blob[600] ^ 0xFF]) + blob[601:]
        files[name] = blob
        names.append(name)
    entry = {"Config": f"{sha256(config)[7:]}.json", "RepoTags": tags, "Layers": names}
    files["manifest.json"] = json.dumps([entry]).encode()
    return write_tar(path, files)


def base_layer() -> Layer:
    return layer(
        directory("bin"),
        file("bin/hello", b"#!/bin/sh\necho hello\n", 0o755),
        directory("etc"),
        file("etc/motd", b"base\n"),
        file("etc/gone", b"deleted above\n"),
        directory("var/cache"),
        file("var/cache/old", b"stale\n"),
        gzipped=True,
    )


def top_layer() -> Layer:
    return layer(
        file("etc/motd", b"top\n"),
        file("etc/.wh.gone"),
        file("var/cache/.wh..wh..opq"),
        file("var/cache/new", b"fresh\n"),
        link("bin/hi", "hello"),
        file("bin/tool", b"tool\n", 0o755),
        link("bin/tool-again", "bin/tool", tarfile.LNKTYPE),
    )


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "store")


def staged(store: ImageStore) -> list[Path]:
    return list((store.root / "tmp").iterdir())


# References


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("busybox", "busybox:latest"),
        ("busybox:1.36", "busybox:1.36"),
        ("library/busybox", "busybox:latest"),
        ("docker.io/library/busybox:latest", "busybox:latest"),
        ("docker.io/someone/app:v2", "someone/app:v2"),
        ("localhost:5000/team/app", "localhost:5000/team/app:latest"),
        ("registry.example.org/app:1", "registry.example.org/app:1"),
    ],
)
def test_references_are_normalised_as_docker_does(text: str, name: str) -> None:
    assert parse_reference(text).name == name


def test_digest_references_parse() -> None:
    digest = "sha256:" + "ab" * 32
    assert parse_reference(digest) == images.Reference("", None, digest)
    assert parse_reference(f"busybox:1@{digest}") == images.Reference("busybox", "1", digest)


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("BusyBox", "'BusyBox' is not a valid name component"),
        ("busybox@sha256:1234", "is not a sha256 digest"),
        ("busybox:bad!tag", "bad tag"),
        ("busybox:-x", "bad tag"),
    ],
)
def test_invalid_references_say_what_is_wrong(text: str, complaint: str) -> None:
    with pytest.raises(ImageError, match="invalid image reference") as caught:
        parse_reference(text)
    assert complaint in str(caught.value)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.from_regex(r"[a-z0-9]{1,5}(?:[._-][a-z0-9]{1,3})?", fullmatch=True),
        min_size=1,
        max_size=3,
    ),
    st.one_of(st.none(), st.from_regex(r"\w[\w.-]{0,10}", fullmatch=True)),
    st.sampled_from(
        ["", "docker.io/", "docker.io/library/", "localhost:5000/", "reg.example.org/"]
    ),
)
def test_normalised_names_are_fixed_points(path: list[str], tag: str | None, prefix: str) -> None:
    text = prefix + "/".join(path) + (f":{tag}" if tag else "")
    name = parse_reference(text).name
    assert parse_reference(name).name == name
    assert name.endswith(f":{tag or 'latest'}")


# Importing


def test_oci_layout_import_verifies_unpacks_and_names(store: ImageStore, tmp_path: Path) -> None:
    spec = Spec([base_layer(), top_layer()], entrypoint=["/bin/sh", "-c"])
    [image] = store.import_archive(oci_archive(tmp_path / "demo.tar", {"1.0": spec}))

    # A bare tag annotation borrows the repository from the file name.
    assert image.name == "demo:1.0"
    assert image.digest == sha256(spec.manifest())
    assert image.config == images.ImageConfig(
        entrypoint=("/bin/sh", "-c"),
        cmd=("/bin/hello",),
        env=("PATH=/bin", "MODE=test"),
        working_dir="/srv",
        user="nobody",
    )
    assert image.layer_digests == tuple(item.diff_id for item in spec.layers)
    blob_bytes = sum(len(item.blob) for item in spec.layers)
    assert image.size == len(spec.manifest()) + len(spec.config()) + blob_bytes

    base, top = image.layers
    assert (base / "etc" / "motd").read_bytes() == b"base\n"
    assert (base / "etc" / "gone").exists()
    assert os.access(base / "bin" / "hello", os.X_OK)
    # Each layer is unpacked on its own; the top one carries whiteouts in overlayfs form.
    assert (top / "etc" / "motd").read_bytes() == b"top\n"
    assert rootfs.is_whiteout(top / "etc" / "gone")
    assert not (top / "etc" / ".wh.gone").exists()
    assert rootfs.is_opaque(top / "var" / "cache")
    assert not (top / "var" / "cache" / ".wh..wh..opq").exists()
    assert os.readlink(top / "bin" / "hi") == "hello"
    assert (top / "bin" / "tool-again").stat().st_ino == (top / "bin" / "tool").stat().st_ino

    # Everything is content-addressed and nothing is left in staging.
    for item in spec.layers:
        assert (store.root / "blobs" / "sha256" / item.digest[7:]).read_bytes() == item.blob
    assert not staged(store)


def test_oci_layout_full_names_and_compressed_archives(store: ImageStore, tmp_path: Path) -> None:
    spec = Spec([base_layer()])
    archive = oci_archive(
        tmp_path / "anything.tar.gz",
        {"docker.io/library/web:2": spec},
        annotation="io.containerd.image.name",
        compress=True,
    )
    [image] = store.import_archive(archive)
    assert image.name == "web:2"


def test_multi_platform_index_imports_this_hosts_manifest(
    store: ImageStore, tmp_path: Path
) -> None:
    ours, theirs = Spec([base_layer()]), Spec([top_layer()], cmd=["other"])
    blobs = {sha256(spec.config()): spec.config() for spec in (ours, theirs)}
    blobs.update({sha256(spec.manifest()): spec.manifest() for spec in (ours, theirs)})
    blobs.update({item.digest: item.blob for spec in (ours, theirs) for item in spec.layers})
    nested = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {
                    "digest": sha256(spec.manifest()),
                    "size": len(spec.manifest()),
                    "platform": {"os": "linux", "architecture": arch},
                }
                for spec, arch in ((theirs, "s390x"), (ours, ARCH))
            ],
        }
    ).encode()
    blobs[sha256(nested)] = nested
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "digest": sha256(nested),
                "size": len(nested),
                "annotations": {"org.opencontainers.image.ref.name": "multi:3"},
            }
        ],
    }
    files = {"index.json": json.dumps(index).encode()}
    files.update({f"blobs/sha256/{digest[7:]}": data for digest, data in blobs.items()})
    [image] = store.import_archive(write_tar(tmp_path / "multi.tar", files))
    assert (image.name, image.digest) == ("multi:3", sha256(ours.manifest()))
    assert image.config.cmd == ("/bin/hello",)


def test_docker_save_import_shares_layers_with_oci(store: ImageStore, tmp_path: Path) -> None:
    base = base_layer()
    plain_base = layer(*_base_entries())
    assert plain_base.diff_id == base.diff_id  # the same content, once gzipped, once not

    [from_oci] = store.import_archive(oci_archive(tmp_path / "a.tar", {"a:1": Spec([base])}))
    saved = docker_archive(
        tmp_path / "b.tar", ["docker.io/library/b:1", "b:latest"], Spec([plain_base])
    )
    imported = store.import_archive(saved)

    assert [image.name for image in imported] == ["b:1", "b:latest"]
    assert imported[0].digest == imported[1].digest
    assert imported[0].config.env == ("PATH=/bin", "MODE=test")
    # Layers are filed by diff_id, so the gzip and the plain blob share one directory.
    assert imported[0].layers == from_oci.layers
    assert len(list((store.root / "layers").iterdir())) == 1
    assert store.resolve("b").digest == imported[0].digest


def _base_entries() -> list[tuple[tarfile.TarInfo, bytes]]:
    return [
        directory("bin"),
        file("bin/hello", b"#!/bin/sh\necho hello\n", 0o755),
        directory("etc"),
        file("etc/motd", b"base\n"),
        file("etc/gone", b"deleted above\n"),
        directory("var/cache"),
        file("var/cache/old", b"stale\n"),
    ]


def test_untagged_docker_save_is_named_after_the_file(store: ImageStore, tmp_path: Path) -> None:
    [image] = store.import_archive(docker_archive(tmp_path / "Tool.tar", None, Spec([top_layer()])))
    assert image.name == "tool:latest"


# Verification


def test_a_corrupted_blob_is_refused_precisely(store: ImageStore, tmp_path: Path) -> None:
    spec = Spec([base_layer(), top_layer()])
    bad = spec.layers[1].digest
    archive = oci_archive(tmp_path / "demo.tar", {"1": spec}, tamper=bad)
    with pytest.raises(ImageError) as caught:
        store.import_archive(archive)
    message = str(caught.value)
    assert str(archive) in message
    assert f"blobs/sha256/{bad[7:]}" in message
    assert f"but {bad} was expected" in message
    # Nothing is named, and the refused bytes never reach the blob directory.
    with pytest.raises(ImageNotFound):
        store.resolve("demo:1")
    assert not (store.root / "blobs" / "sha256" / bad[7:]).exists()
    assert not staged(store)


def test_a_layer_that_does_not_match_its_diff_id_is_refused(
    store: ImageStore, tmp_path: Path
) -> None:
    spec = Spec([layer(file("data", b"x" * 4000))])
    archive = docker_archive(tmp_path / "bad.tar", ["bad:1"], spec, tamper=0)
    with pytest.raises(ImageError, match="0/layer.tar: unpacks to sha256:") as caught:
        store.import_archive(archive)
    assert f"lists the layer as {spec.layers[0].diff_id}" in str(caught.value)
    assert not list((store.root / "layers").iterdir())
    assert not staged(store)


def test_a_wrong_size_in_a_descriptor_is_refused(store: ImageStore, tmp_path: Path) -> None:
    spec = Spec([base_layer()])
    manifest = json.loads(spec.manifest())
    manifest["layers"][0]["size"] += 1
    manifest_bytes = json.dumps(manifest).encode()
    index = {
        "schemaVersion": 2,
        "manifests": [{"digest": sha256(manifest_bytes), "size": len(manifest_bytes)}],
    }
    files = {
        "index.json": json.dumps(index).encode(),
        f"blobs/sha256/{sha256(manifest_bytes)[7:]}": manifest_bytes,
        f"blobs/sha256/{sha256(spec.config())[7:]}": spec.config(),
        f"blobs/sha256/{spec.layers[0].digest[7:]}": spec.layers[0].blob,
    }
    with pytest.raises(ImageError, match="but its descriptor says"):
        store.import_archive(write_tar(tmp_path / "sized.tar", files))


def test_an_archive_of_neither_format_is_refused(store: ImageStore, tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="neither an OCI image layout"):
        store.import_archive(write_tar(tmp_path / "x.tar", {"hello.txt": b"hi"}))
    (tmp_path / "junk.tar").write_bytes(b"not a tar at all" * 100)
    with pytest.raises(ImageError, match="not a tar archive"):
        store.import_archive(tmp_path / "junk.tar")


def test_a_malformed_manifest_names_the_field(store: ImageStore, tmp_path: Path) -> None:
    files = {"index.json": json.dumps({"schemaVersion": 2, "manifests": [{"size": 3}]}).encode()}
    with pytest.raises(ImageError, match=r"index.json: manifests\.0\.digest: Field required"):
        store.import_archive(write_tar(tmp_path / "x.tar", files))


@pytest.mark.parametrize(
    ("entries", "complaint"),
    [
        ([file("../escape", b"x")], "'..' would escape the layer directory"),
        ([file("etc/../../escape", b"x")], "'..' would escape the layer directory"),
        ([file("/etc/escape", b"x")], "absolute paths are not allowed"),
        ([link("out", "/"), file("out/escape", b"x")], "passes through the symlink 'out'"),
        ([link("up", ".."), link("up/escape", "x")], "passes through the symlink 'up'"),
        ([link("hard", "../escape", tarfile.LNKTYPE)], "'..' would escape"),
        ([device("etc/mem")], "device nodes are not allowed"),
        ([file("etc/.wh..."), file("etc/x")], "a whiteout must name an entry"),
    ],
    ids=[
        "dotdot",
        "nested-dotdot",
        "absolute",
        "via-symlink",
        "via-symlink-up",
        "hardlink",
        "device",
        "whiteout-dotdot",
    ],
)
def test_unsafe_layers_are_refused(
    store: ImageStore,
    tmp_path: Path,
    entries: list[tuple[tarfile.TarInfo, bytes]],
    complaint: str,
) -> None:
    archive = oci_archive(tmp_path / "evil.tar", {"1": Spec([layer(*entries)])})
    with pytest.raises(ImageError, match="evil.tar: layer sha256:") as caught:
        store.import_archive(archive)
    assert complaint in str(caught.value)
    assert not (tmp_path / "escape").exists()
    assert not (store.root / "escape").exists()
    assert not list((store.root / "layers").iterdir())
    assert not staged(store)


_PARTS = st.sampled_from(["a", "b", "..", ".", "", "/", ".wh.a", ".wh..wh..opq", "out"])
_ENTRY = st.tuples(
    st.sampled_from(["file", "dir", "symlink", "hardlink"]),
    st.lists(_PARTS, min_size=1, max_size=4).map("/".join),
    st.sampled_from(["a", "/", "..", "../..", "../out", "/tmp", "out/a"]),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_ENTRY, min_size=1, max_size=6))
def test_unpacking_never_writes_outside_the_layer(
    entries: list[tuple[str, str, str]],
) -> None:
    with tempfile.TemporaryDirectory() as sandbox:
        outside = Path(sandbox) / "out"
        outside.mkdir()
        destination = Path(sandbox) / "layer"
        destination.mkdir()
        members = []
        for kind, name, target in entries:
            if kind == "file":
                members.append(file(name, b"data"))
            elif kind == "dir":
                members.append(directory(name))
            else:
                members.append(
                    link(name, target, tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE)
                )
        try:
            rootfs.unpack_layer(io.BytesIO(layer(*members).blob), destination)
        except (rootfs.LayerError, OSError):
            pass
        # Whatever the archive said, only the layer directory may have changed.
        assert sorted(os.listdir(sandbox)) == ["layer", "out"]
        assert os.listdir(outside) == []


def test_an_index_entry_that_is_not_a_document_is_refused(
    store: ImageStore, tmp_path: Path
) -> None:
    blob = base_layer().blob
    index = {"schemaVersion": 2, "manifests": [{"digest": sha256(blob), "size": len(blob)}]}
    files = {"index.json": json.dumps(index).encode(), f"blobs/sha256/{sha256(blob)[7:]}": blob}
    with pytest.raises(ImageError, match=f"manifest {sha256(blob)}: .*Invalid JSON"):
        store.import_archive(write_tar(tmp_path / "odd.tar", files))


def test_device_nodes_under_dev_are_dropped(store: ImageStore, tmp_path: Path) -> None:
    # The runtime mounts its own /dev over the image's, so these would never be seen anyway.
    spec = Spec([layer(directory("dev"), device("dev/null"), file("ok", b"1"))])
    [image] = store.import_archive(oci_archive(tmp_path / "dev.tar", {"1": spec}))
    assert not (image.layers[0] / "dev" / "null").exists()
    assert (image.layers[0] / "ok").read_bytes() == b"1"


def test_only_harmless_xattrs_are_applied(store: ImageStore, tmp_path: Path) -> None:
    info, data = file("tagged", b"x")
    info.pax_headers = {
        "SCHILY.xattr.user.note": "kept",
        "SCHILY.xattr.trusted.overlay.redirect": "/etc",
        "SCHILY.xattr.user.overlay.redirect": "/etc",
    }
    [image] = store.import_archive(
        oci_archive(tmp_path / "x.tar", {"1": Spec([layer((info, data))])})
    )
    path = image.layers[0] / "tagged"
    assert os.getxattr(path, "user.note") == b"kept"
    assert os.listxattr(path) == ["user.note"]


# Building


def test_build_makes_a_one_layer_image_owned_by_root(store: ImageStore, tmp_path: Path) -> None:
    source = tmp_path / "site"
    (source / "www").mkdir(parents=True)
    (source / "www" / "index.html").write_text("<h1>hi</h1>\n")
    (source / "run.sh").write_text("#!/bin/sh\nexec httpd -f\n")
    os.chmod(source / "run.sh", 0o755)
    os.symlink("www/index.html", source / "index")

    image = store.build(
        source,
        "site:v1",
        entrypoint=["/run.sh"],
        env=["PORT=8080"],
        working_dir="/www",
        user="1000",
    )

    assert image.name == "site:v1"
    assert image.config == images.ImageConfig(("/run.sh",), (), ("PORT=8080",), "/www", "1000")
    [root] = image.layers
    assert (root / "www" / "index.html").read_text() == "<h1>hi</h1>\n"
    assert stat.S_IMODE((root / "run.sh").stat().st_mode) == 0o755
    assert os.readlink(root / "index") == "www/index.html"
    if os.geteuid() == 0:
        assert (root / "run.sh").stat().st_uid == 0
    assert store.resolve("site:v1") == image
    # The same directory builds to the same digest: nothing time-dependent goes in.
    assert (
        store.build(
            source,
            "site:v2",
            entrypoint=["/run.sh"],
            env=["PORT=8080"],
            working_dir="/www",
            user="1000",
        ).digest
        == image.digest
    )


def test_build_refuses_bad_input(store: ImageStore, tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="is not a directory"):
        store.build(tmp_path / "missing", "x:1")
    with pytest.raises(ImageError, match="env entry 'NOVALUE' is not KEY=VALUE"):
        store.build(tmp_path, "x:1", env=["NOVALUE"])
    with pytest.raises(ImageError, match="not a valid name component"):
        store.build(tmp_path, "Bad:1")


# Names, listing, removal


def test_resolve_by_name_tag_and_digest(store: ImageStore, tmp_path: Path) -> None:
    [image] = store.import_archive(oci_archive(tmp_path / "demo.tar", {"2": Spec([base_layer()])}))
    assert store.resolve("demo:2") == image
    assert store.resolve("docker.io/library/demo:2") == image
    assert store.resolve(image.digest) == image
    assert store.resolve(f"demo@{image.digest}") == image
    assert store.resolve(f"other@{image.digest}").name == "demo:2"


def test_image_not_found_says_what_is_known(store: ImageStore, tmp_path: Path) -> None:
    with pytest.raises(ImageNotFound) as caught:
        store.resolve("nginx")
    assert str(caught.value) == "ImageNotFound: no image 'nginx' in this node's store (known: none)"

    store.import_archive(oci_archive(tmp_path / "demo.tar", {"2": Spec([base_layer()])}))
    with pytest.raises(ImageNotFound) as caught:
        store.resolve("demo")  # means demo:latest
    assert str(caught.value) == (
        "ImageNotFound: no image 'demo' in this node's store (known: demo:2)"
    )
    with pytest.raises(ImageNotFound):
        store.resolve("sha256:" + "0" * 64)
    # A layer blob is content of the store, but not an image.
    with pytest.raises(ImageNotFound):
        store.resolve(base_layer().digest)


def test_remove_collects_what_nothing_references(store: ImageStore, tmp_path: Path) -> None:
    shared, only_a = base_layer(), top_layer()
    only_b = layer(file("b", b"b"))
    archive = oci_archive(
        tmp_path / "two.tar", {"a:1": Spec([shared, only_a]), "b:1": Spec([shared, only_b])}
    )
    a, b = store.import_archive(archive)
    assert [image.name for image in store.list()] == ["a:1", "b:1"]

    store.remove("a:1")
    assert [image.name for image in store.list()] == ["b:1"]
    assert not a.layers[1].exists()
    assert a.layers[0].exists()  # shared with b
    blobs = {path.name for path in (store.root / "blobs" / "sha256").iterdir()}
    assert a.digest[7:] not in blobs and only_a.digest[7:] not in blobs
    assert shared.digest[7:] in blobs and b.digest[7:] in blobs

    with pytest.raises(ImageNotFound):
        store.remove("a:1")
    store.remove(b.digest)
    assert store.list() == []
    assert not list((store.root / "blobs" / "sha256").iterdir())
    assert not list((store.root / "layers").iterdir())


def test_layers_in_use_survive_removal(tmp_path: Path) -> None:
    running: set[str] = set()
    store = ImageStore(tmp_path / "store", in_use=lambda: running)
    [image] = store.import_archive(oci_archive(tmp_path / "d.tar", {"1": Spec([base_layer()])}))
    running.update(image.layer_digests)

    store.remove("d:1")
    assert image.layers[0].is_dir()
    with pytest.raises(ImageNotFound):
        store.resolve("d:1")

    running.clear()
    store.collect_garbage()
    assert not image.layers[0].exists()


def test_an_image_digest_in_use_keeps_the_whole_image(tmp_path: Path) -> None:
    running: set[str] = set()
    store = ImageStore(tmp_path / "store", in_use=lambda: running)
    [image] = store.import_archive(oci_archive(tmp_path / "d.tar", {"1": Spec([base_layer()])}))
    running.add(image.digest)
    store.remove("d:1")
    # Still resolvable by digest, e.g. for a container that restarts after its tag was removed.
    assert store.resolve(image.digest).layers == image.layers


def test_a_lost_layer_directory_is_unpacked_again(store: ImageStore, tmp_path: Path) -> None:
    [image] = store.import_archive(oci_archive(tmp_path / "d.tar", {"1": Spec([base_layer()])}))
    rootfs.remove_tree(image.layers[0])
    assert (store.resolve("d:1").layers[0] / "etc" / "motd").read_bytes() == b"base\n"


def test_concurrent_imports_agree(store: ImageStore, tmp_path: Path) -> None:
    archive = oci_archive(tmp_path / "c.tar", {"1": Spec([base_layer(), top_layer()])})
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: store.import_archive(archive)[0], range(8)))
    assert len({image.digest for image in results}) == 1
    assert len(list((store.root / "layers").iterdir())) == 2
    assert not staged(store)


def test_refs_survive_reopening(store: ImageStore, tmp_path: Path) -> None:
    [image] = store.import_archive(oci_archive(tmp_path / "d.tar", {"1": Spec([base_layer()])}))
    assert ImageStore(store.root).resolve("d:1") == image


# The built-in busybox image

needs_busybox = pytest.mark.skipif(
    not Path("/bin/busybox").is_file(),
    reason="/bin/busybox missing (apt-get install busybox-static)",
)


@needs_busybox
def test_ensure_busybox_builds_a_usable_rootfs_once(store: ImageStore) -> None:
    image = store.ensure_busybox()
    assert image.name == "busybox:latest"
    assert image.config.cmd == ("sh",)
    assert any(entry.startswith("PATH=") for entry in image.config.env)
    [root] = image.layers
    for applet in images.BUSYBOX_APPLETS:
        assert os.readlink(root / "bin" / applet) == "busybox", applet
    assert stat.S_IMODE((root / "tmp").stat().st_mode) == 0o1777
    passwd = (root / "etc" / "passwd").read_text()
    assert passwd.startswith("root:x:0:0:") and "\nnobody:x:65534:65534:" in passwd
    assert "nobody:x:65534:" in (root / "etc" / "group").read_text()
    for mountpoint in ("proc", "sys", "dev"):
        assert (root / mountpoint).is_dir()

    # Idempotent: the second call finds it, and a second store builds the same bytes.
    assert store.ensure_busybox() == image
    assert ImageStore(store.root.parent / "other").ensure_busybox().digest == image.digest


def test_ensure_busybox_explains_what_to_install(store: ImageStore, tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=r"apt-get install busybox-static"):
        store.ensure_busybox(busybox=tmp_path / "busybox")
    # A dynamically linked executable would not start in an image without a C library.
    with pytest.raises(ImageError, match="not a statically linked executable"):
        store.ensure_busybox(busybox=Path(os.path.realpath(sys.executable)))


# Uploads: archives and build directories that arrive as open files


def test_an_open_archive_is_named_and_reported_by_its_label(store: ImageStore, tmp_path: Path) -> None:
    archive = oci_archive(tmp_path / "anything", {"": Spec([base_layer()])})
    with open(archive, "rb") as source:
        [image] = store.import_file(source, label="web.tar")
    assert image.name == "web:latest"
    bad = oci_archive(tmp_path / "x", {"1": Spec([top_layer()])}, tamper=top_layer().digest)
    with open(bad, "rb") as source, pytest.raises(ImageError, match=r"^web\.tar: blobs/sha256/"):
        store.import_file(source, label="web.tar")


def test_a_failed_import_collects_only_what_it_stored(store: ImageStore, tmp_path: Path) -> None:
    [kept] = store.import_archive(oci_archive(tmp_path / "kept.tar", {"1": Spec([base_layer()])}))
    # Unnamed but still on disk, as an image removed while a container used it would be.
    (store.root / "refs.json").write_text("{}")
    fresh = layer(file("fresh", b"new content"))
    broken = oci_archive(tmp_path / "b.tar", {"1": Spec([fresh, top_layer()])}, tamper=top_layer().digest)
    with pytest.raises(ImageError, match="was expected"):
        store.import_archive(broken)
    blobs = {path.name for path in (store.root / "blobs" / "sha256").iterdir()}
    assert fresh.digest[7:] not in blobs
    assert kept.digest[7:] in blobs and kept.layers[0].is_dir()
    assert not staged(store)


def test_a_directory_sent_as_a_tar_builds_the_same_image(store: ImageStore, tmp_path: Path) -> None:
    source = tmp_path / "site"
    (source / "www").mkdir(parents=True)
    (source / "www" / "index.html").write_text("<h1>hi</h1>\n")
    (source / "run.sh").write_text("#!/bin/sh\n")
    os.symlink("www/index.html", source / "index")
    for path in (source / "www" / "index.html", source / "run.sh", source / "www"):
        os.utime(path, (1_700_000_000, 1_700_000_000))
    local = store.build(source, "site:local", env=["A=1"])
    packed = io.BytesIO()
    with tarfile.open(fileobj=packed, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for child in sorted(source.iterdir()):
            tar.add(child, arcname=child.name)
    for data in (packed.getvalue(), gzip.compress(packed.getvalue())):
        sent = store.build_from_tar(io.BytesIO(data), "site:sent", label="site/", env=["A=1"])
        assert (sent.digest, sent.layer_digests) == (local.digest, local.layer_digests)

    whiteout = io.BytesIO()
    with tarfile.open(fileobj=whiteout, mode="w") as tar:
        tar.addfile(tarfile.TarInfo("etc/.wh.passwd"))
    with pytest.raises(ImageError, match=r"^ctx/: etc/\.wh\.passwd: names starting with '\.wh\.'"):
        store.build_from_tar(whiteout, "x:1", label="ctx/")
    with pytest.raises(ImageError, match="^ctx/: not a tar archive of a directory"):
        store.build_from_tar(io.BytesIO(b"junk" * 200), "x:1", label="ctx/")
    with pytest.raises(ImageError, match="working directory 'www' must be an absolute path"):
        store.build_from_tar(io.BytesIO(packed.getvalue()), "x:1", label="ctx/", working_dir="www")
    assert [image.name for image in store.list()] == ["site:local", "site:sent"]
    assert not staged(store)


def test_remove_says_which_names_went_and_what_was_freed(store: ImageStore, tmp_path: Path) -> None:
    [image] = store.import_archive(oci_archive(tmp_path / "d.tar", {"1": Spec([base_layer()])}))
    [again] = store.import_archive(oci_archive(tmp_path / "e.tar", {"2": Spec([base_layer()])}))
    assert again.digest == image.digest
    (tmp_path / "other").mkdir()
    store.build(tmp_path / "other", "other:1")
    assert store.remove("e:2") == images.Removal(("e:2",), image.digest, 0)
    removal = store.remove(image.digest)
    assert (removal.names, removal.digest) == (("d:1",), image.digest)
    assert removal.freed == image.size
    assert store.names() == {"other:1": store.resolve("other:1").digest}
