"""The key-encryption keys (KEKs) of Secrets at rest, and the one file that holds them.

The KEKs live in `<data dir>/keys/kek.json`, apart from the state engine's file, so that a copy
of the database (or a backup made by `hypermesh backup`) holds ciphertext without the keys that
open it. The file lists every KEK a stored value may name and says which one is primary (the
one new values are sealed under); the others are kept only until `hypermesh keys rotate` has
re-encrypted everything they sealed, and then dropped.

One file rather than a file per key, because the two changes a rotation makes (a new primary
key; then fewer keys) must each be atomic: the file is always replaced whole (temporary file with
mode 0600 from its first byte, fsync, rename, fsync of the directory). The directory fsync
matters here more than for certificates: a value sealed under a new key is durable in the store
as soon as its write is acknowledged, so the key must be durable before that, or a power loss
could keep the value and lose its key.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pydantic

from hypermesh.pki import files

KEYS_DIRNAME = "keys"
KEYS_FILENAME = "kek.json"
KEK_BYTES = 32  # AES-256
# A KEK id is written into every value it seals (between colons), so it may hold no colon.
_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class KeyFileError(Exception):
    """The key file is missing, unreadable, malformed or too widely readable."""


@dataclass(frozen=True, slots=True)
class Kek:
    """One key-encryption key."""

    id: str
    secret: bytes = field(repr=False)
    created: str


# The file's wire format.


class _KeyEntry(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")

    id: str = pydantic.Field(pattern=_ID_PATTERN)
    secret: str  # base64 of KEK_BYTES random bytes
    created: str


class _KeyFile(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")

    apiVersion: Literal["hypermesh.io/v1"] = "hypermesh.io/v1"
    kind: Literal["EncryptionKeys"] = "EncryptionKeys"
    primary: str
    keys: list[_KeyEntry]


class KeyRing:
    """The KEKs of one data directory, as the server and `hypermesh keys rotate` see them.

    A KeyRing changes only through `add_primary` and `retire`, which write the file before they
    change what this object answers: nothing is ever sealed under a key the file does not hold.
    """

    def __init__(self, path: Path, keks: list[Kek], primary_id: str) -> None:
        self.path = path
        self._keks = {kek.id: kek for kek in keks}
        if primary_id not in self._keks:
            raise KeyFileError(f"{path}: primary key \"{primary_id}\" is not among its keys")
        self.primary = self._keks[primary_id]

    @property
    def ids(self) -> list[str]:
        """Every KEK id, oldest first."""
        return list(self._keks)

    def get(self, kek_id: str) -> Kek | None:
        return self._keks.get(kek_id)

    def add_primary(self) -> Kek:
        """Make a new KEK, write it to the file as the primary, then start using it."""
        kek = _new_kek(exclude=self._keks)
        keks = [*self._keks.values(), kek]
        with files.locked(self.path.parent):
            _write(self.path, keks, kek.id)
        self._keks[kek.id] = kek
        self.primary = kek
        return kek

    def retire(self, kek_ids: list[str]) -> None:
        """Drop KEKs no stored value uses any more (never the primary)."""
        if self.primary.id in kek_ids:
            raise ValueError(f"the primary key \"{self.primary.id}\" cannot be retired")
        keks = [kek for kek in self._keks.values() if kek.id not in kek_ids]
        with files.locked(self.path.parent):
            _write(self.path, keks, self.primary.id)
        self._keks = {kek.id: kek for kek in keks}


def keys_path(data_dir: Path) -> Path:
    """Where the KEKs of `data_dir` live."""
    return Path(data_dir) / KEYS_DIRNAME / KEYS_FILENAME


def load_or_create(data_dir: Path) -> KeyRing:
    """The data directory's key ring, made with one fresh KEK on first use.

    Two processes starting at once on a new data directory must not both make a key (one would
    overwrite the other's after sealing values with it), so this holds the directory's lock.
    """
    path = keys_path(data_dir)
    files.ensure_private_dir(path.parent)
    with files.locked(path.parent):
        if path.exists():
            return load(path)
        kek = _new_kek(exclude={})
        _write(path, [kek], kek.id)
        return KeyRing(path, [kek], kek.id)


def load(path: Path) -> KeyRing:
    """Read a key file, refusing one that others could read or that does not parse."""
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"{path} does not exist: the encryption keys of this data directory are missing") from None
    except OSError as exc:
        raise KeyFileError(f"{path} cannot be read: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"{path} is accessible to group or others (mode {stat.S_IMODE(mode):04o}); "
            f"it holds encryption keys: chmod 600 {path}"
        )
    try:
        model = _KeyFile.model_validate_json(data)
    except pydantic.ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or '(file)'}: {error['msg']}" for error in exc.errors()
        )
        raise KeyFileError(f"{path} is not a valid key file: {problems}") from None
    keks: list[Kek] = []
    for index, entry in enumerate(model.keys):
        try:
            secret = base64.b64decode(entry.secret, validate=True)
        except binascii.Error:
            raise KeyFileError(f"{path}: keys.{index}.secret is not base64") from None
        if len(secret) != KEK_BYTES:
            raise KeyFileError(
                f"{path}: keys.{index}.secret holds {len(secret)} bytes; a key is {KEK_BYTES} bytes"
            )
        if any(kek.id == entry.id for kek in keks):
            raise KeyFileError(f"{path}: keys.{index}.id \"{entry.id}\" appears twice")
        keks.append(Kek(entry.id, secret, entry.created))
    return KeyRing(path, keks, model.primary)


def _new_kek(*, exclude: dict[str, Kek]) -> Kek:
    while True:
        kek_id = secrets.token_hex(4)
        if kek_id not in exclude:
            break
    created = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return Kek(kek_id, secrets.token_bytes(KEK_BYTES), created)


def _write(path: Path, keks: list[Kek], primary_id: str) -> None:
    model = _KeyFile(
        primary=primary_id,
        keys=[_KeyEntry(id=k.id, secret=base64.b64encode(k.secret).decode(), created=k.created) for k in keks],
    )
    files.ensure_private_dir(path.parent)
    files.write_private(path, model.model_dump_json(indent=2).encode() + b"\n")
    # The rename must be durable before any value sealed under a new key is.
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
