"""Envelope encryption of stored values: AES-256-GCM under data keys wrapped by the KEKs.

Why: without it the state engine's file, its WAL and every backup hold each Secret in clear, so
whoever reads the disk reads every password and private key. As kube-apiserver does with its
EncryptionConfiguration (the `aesgcm` provider, in the envelope shape of KMS v2), a value of an
encrypted resource is sealed before it reaches the store and opened after it leaves it.

The scheme, and the reason for each part:

- Data-encryption key (DEK): 32 random bytes made in memory when this process first seals a
  value, wrapped (AES-256-GCM, random nonce) by the primary key-encryption key (KEK, see
  `encryptionkeys`). It is never stored in clear and never reused by another process: the next
  server start makes its own. A new DEK is also made when the primary KEK changes and after
  `DEK_MAX_SEALS` values. So a write costs one AES-GCM seal of the value, nothing more.
- Nonces: a counter per DEK, from 0, 96 bits big-endian. A DEK exists in one process only and
  its counter only grows (`itertools.count`, atomic under the GIL), so no nonce is ever used
  twice with one key; random nonces would need a 2^32 bound per key and a good random source
  on every write for nothing. Wrapping nonces under a KEK are random: a KEK wraps one DEK per
  server start, far below the birthday bound.
- Authenticated data: the store key (`/registry/core/secrets/ns/name`). A value copied to
  another key fails to open instead of silently becoming another Secret.
- Format, self-contained so that any value opens with the key file alone, and recognisable so
  that values stored before encryption was enabled (plain JSON, which starts with `{`) still
  read:

      k8s:enc:aesgcm-envelope:v1:<kek id>:<wrapped DEK (60 bytes)><nonce (12)><ciphertext+tag>

  The header names the KEK, which is how a rotation finds the values still sealed under an old
  one without decrypting anything.
- Opening: the wrapped DEK (with its header) is the key of a small cache of opened DEKs, so a
  read costs one AES-GCM open of the value; a KEK is used once per DEK, not once per value.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hypermesh.api.encryptionkeys import KeyRing

PREFIX = b"k8s:enc:aesgcm-envelope:v1:"
NONCE_BYTES = 12
DEK_BYTES = 32
TAG_BYTES = 16
WRAPPED_DEK_BYTES = NONCE_BYTES + DEK_BYTES + TAG_BYTES
# NIST SP 800-38D allows far more invocations with deterministic nonces; a new DEK now and then
# also bounds how much one leaked DEK would open.
DEK_MAX_SEALS = 1 << 32
# Opened DEKs kept for reads: one per server start and rotation, so a few in practice.
DEK_CACHE_SIZE = 256
_WRAP_AAD = b"hypermesh dek for kek "


class DecryptError(Exception):
    """A stored value cannot be opened; the message says which key and why."""

    def __init__(self, kek_id: str | None, reason: str) -> None:
        super().__init__(reason)
        self.kek_id = kek_id
        self.reason = reason


class UnreadableValue(bytes):
    """A stored value that could not be decrypted, passed on unchanged with the reason.

    The store wrapper cannot fail a watch or a whole list for one bad value, so it hands the
    ciphertext on marked like this; whoever turns it into an object (`storage.decode_at`, the
    watch cache) then reports that object as unreadable with this reason, instead of trying to
    parse ciphertext as JSON.
    """

    reason: str

    def __new__(cls, value: bytes, reason: str) -> UnreadableValue:
        self = super().__new__(cls, value)
        self.reason = reason
        return self


@dataclass(slots=True)
class _Dek:
    """The DEK this process seals with."""

    kek_id: str
    header: bytes  # PREFIX, the KEK id, ":" and the wrapped DEK: the first bytes of every value
    aead: AESGCM
    nonces: itertools.count[int] = field(default_factory=itertools.count)


def is_encrypted(value: bytes) -> bool:
    """Whether a stored value is sealed (otherwise it is plain JSON)."""
    return value.startswith(PREFIX)


def kek_id_of(value: bytes) -> str | None:
    """The id of the KEK that sealed `value`, or None for a plain value (no decryption)."""
    if not value.startswith(PREFIX):
        return None
    end = value.find(b":", len(PREFIX))
    if end < 0:
        raise DecryptError(None, "its encryption header is cut short (no key id)")
    return value[len(PREFIX):end].decode("ascii", "replace")


class Envelope:
    """Seals and opens values with one key ring."""

    def __init__(self, keys: KeyRing, *, dek_max_seals: int = DEK_MAX_SEALS) -> None:
        self.keys = keys
        self.dek_max_seals = dek_max_seals
        self._dek: _Dek | None = None
        self._opened: dict[bytes, AESGCM] = {}

    def encrypt(self, key: str, plaintext: bytes) -> bytes:
        """`plaintext` sealed for store key `key` under the primary KEK."""
        dek = self._dek
        if dek is None or dek.kek_id != self.keys.primary.id:
            dek = self._new_dek()
        counter = next(dek.nonces)
        if counter >= self.dek_max_seals:
            dek = self._new_dek()
            counter = next(dek.nonces)
        nonce = counter.to_bytes(NONCE_BYTES, "big")
        return b"".join((dek.header, nonce, dek.aead.encrypt(nonce, plaintext, key.encode())))

    def decrypt(self, key: str, value: bytes) -> bytes:
        """The plaintext of a sealed value stored at `key`; DecryptError when it cannot be."""
        kek_id = kek_id_of(value)
        if kek_id is None:
            raise DecryptError(None, "it is not encrypted")
        body = len(PREFIX) + len(kek_id) + 1
        if len(value) < body + WRAPPED_DEK_BYTES + NONCE_BYTES + TAG_BYTES:
            raise DecryptError(kek_id, f"its encrypted value is cut short ({len(value)} bytes)")
        header_end = body + WRAPPED_DEK_BYTES
        header = value[:header_end]
        aead = self._opened.get(header)
        if aead is None:
            aead = self._open_dek(kek_id, value[body:header_end], header)
        nonce = value[header_end:header_end + NONCE_BYTES]
        try:
            return aead.decrypt(nonce, value[header_end + NONCE_BYTES:], key.encode())
        except InvalidTag:
            raise DecryptError(
                kek_id,
                f"its ciphertext fails authentication (key-encryption key \"{kek_id}\"): the stored "
                "value was altered, or was copied from another object",
            ) from None

    def _open_dek(self, kek_id: str, wrapped: bytes, header: bytes) -> AESGCM:
        kek = self.keys.get(kek_id)
        if kek is None:
            held = ", ".join(f"\"{i}\"" for i in self.keys.ids)
            raise DecryptError(
                kek_id,
                f"it is encrypted with key-encryption key \"{kek_id}\", which {self.keys.path} does "
                f"not hold (it holds {held})",
            )
        try:
            dek = AESGCM(kek.secret).decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], _WRAP_AAD + kek_id.encode())
        except InvalidTag:
            raise DecryptError(
                kek_id,
                f"its data-encryption key does not open with key-encryption key \"{kek_id}\" from "
                f"{self.keys.path}: that file holds a different key under this id, or the stored "
                "value was altered",
            ) from None
        aead = AESGCM(dek)
        self._remember(header, aead)
        return aead

    def _new_dek(self) -> _Dek:
        kek = self.keys.primary
        secret = AESGCM.generate_key(bit_length=DEK_BYTES * 8)
        wrap_nonce = os.urandom(NONCE_BYTES)
        wrapped = wrap_nonce + AESGCM(kek.secret).encrypt(wrap_nonce, secret, _WRAP_AAD + kek.id.encode())
        header = b"%s%s:%s" % (PREFIX, kek.id.encode(), wrapped)
        dek = _Dek(kek.id, header, AESGCM(secret))
        self._remember(header, dek.aead)
        self._dek = dek
        return dek

    def _remember(self, header: bytes, aead: AESGCM) -> None:
        if len(self._opened) >= DEK_CACHE_SIZE:
            self._opened.clear()
        self._opened[header] = aead
