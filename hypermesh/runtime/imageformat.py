"""Image names and the OCI and Docker JSON documents, as the node's image store reads and writes them.

Nothing here touches the disk. The store (`images`), the archive reader (`imagearchive`) and the
agent's image routes (`imageapi`) all need the same two things: a reference parsed and
normalised the way Docker does it ("busybox" is "busybox:latest", "docker.io/library/x" is "x"),
and the OCI documents (index, manifest, config) and `docker save`'s manifest.json validated into
typed models whose errors name the field that is wrong. Keeping them in one pure module is what
lets the three agree on what a name and a digest are.

The models ignore fields they do not read (an image config carries history, labels, ports...),
so any conforming image imports; what they do read is checked, and only sha256 digests are
accepted: the store names its files by them.
"""

from __future__ import annotations

import json
import platform
import re
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

MEDIA_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"

# index.json, manifests and configs are small; anything bigger is not one of them.
MAX_DOCUMENT = 16 << 20

DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_DOMAIN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?(?::[0-9]+)?")
_TAG = re.compile(r"\w[\w.-]{0,127}")
_DOCKER_HUB = ("docker.io", "index.docker.io", "registry-1.docker.io")
_ARCHITECTURES = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}


class ImageError(ValueError):
    """An archive, reference or build input that cannot become an image; says where and why."""


# References


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
    if DIGEST.fullmatch(reference):
        return Reference("", None, reference)
    digest = None
    if "@" in reference:
        reference, digest = reference.split("@", 1)
        if not DIGEST.fullmatch(digest):
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


def checked_name(reference: str, where: str) -> str:
    """The normalised name `reference` files an image under; digests are refused."""
    try:
        parsed = parse_reference(reference)
    except ImageError as exc:
        raise ImageError(f"{where}: {exc}") from exc
    if parsed.digest is not None or not parsed.repository:
        raise ImageError(
            f"{where}: {reference!r} is a digest, not a name an image can be filed under"
        )
    return parsed.name


def host_architecture() -> str:
    """This machine's architecture in OCI's spelling (`amd64`, `arm64`)."""
    return _ARCHITECTURES.get(platform.machine(), platform.machine())


# The OCI and Docker JSON documents, as far as the store reads them.


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)


def _check_digest(value: str) -> str:
    if not DIGEST.fullmatch(value):
        raise ValueError(f"{value!r} is not a sha256 digest (the only algorithm supported)")
    return value


class Platform(_Model):
    """Which machines a manifest of a multi-platform index is for."""

    architecture: str = ""
    os: str = ""


class Descriptor(_Model):
    """A pointer to a blob: its digest and size, with what the pointer says about it."""

    media_type: str = Field("", alias="mediaType")
    digest: str
    size: int = Field(ge=0)
    annotations: dict[str, str] = Field(default_factory=dict)
    platform: Platform | None = None

    @field_validator("digest")
    @classmethod
    def _sha256(cls, value: str) -> str:
        return _check_digest(value)


class Index(_Model):
    """`index.json` of an OCI layout, or a multi-platform image index."""

    manifests: list[Descriptor]


class Manifest(_Model):
    """An image manifest: its config and layers."""

    schema_version: int = Field(alias="schemaVersion")
    config: Descriptor
    layers: list[Descriptor]

    @field_validator("schema_version")
    @classmethod
    def _version_2(cls, value: int) -> int:
        if value != 2:
            raise ValueError(f"schemaVersion {value} is not supported (only 2)")
        return value


class RunConfig(_Model):
    """The `config` section of an image config: how a container runs by default."""

    entrypoint: list[str] | None = Field(None, alias="Entrypoint")
    cmd: list[str] | None = Field(None, alias="Cmd")
    env: list[str] | None = Field(None, alias="Env")
    working_dir: str = Field("", alias="WorkingDir")
    user: str = Field("", alias="User")


class RootFS(_Model):
    """The uncompressed digests (diff_ids) of an image's layers, base first."""

    diff_ids: list[str]

    @field_validator("diff_ids")
    @classmethod
    def _digests(cls, values: list[str]) -> list[str]:
        return [_check_digest(value) for value in values]


class ConfigFile(_Model):
    """An image config (OCI and Docker share this shape)."""

    created: str | None = None
    config: RunConfig | None = None
    rootfs: RootFS


class DockerEntry(_Model):
    """One image of a `docker save` archive's manifest.json."""

    config: str = Field(alias="Config")
    repo_tags: list[str] | None = Field(None, alias="RepoTags")
    layers: list[str] = Field(alias="Layers")


_T = TypeVar("_T")
INDEX = TypeAdapter(Index)
MANIFEST = TypeAdapter(Manifest)
CONFIG = TypeAdapter(ConfigFile)
DOCKER = TypeAdapter(list[DockerEntry])


def parse(adapter: TypeAdapter[_T], data: bytes, where: str) -> _T:
    """Validate a JSON document; an ImageError names `where` and every field that is wrong."""
    try:
        return adapter.validate_json(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or '(document)'}: {error['msg']}"
            for error in exc.errors()
        )
        raise ImageError(f"{where}: {problems}") from exc


def manifest_document(config: str, config_size: int, layers: list[dict[str, Any]]) -> bytes:
    """The OCI manifest the store writes for an image it assembled itself."""
    return canonical(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_OCI_MANIFEST,
            "config": {"mediaType": MEDIA_OCI_CONFIG, "digest": config, "size": config_size},
            "layers": layers,
        }
    )


def canonical(document: dict[str, Any]) -> bytes:
    """Stable JSON bytes, so the same input always yields the same digest."""
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
