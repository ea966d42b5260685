"""The envelope that seals Secrets at rest, and the key file its keys live in."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hypermesh.api import encryption, encryptionkeys
from hypermesh.api.encryption import DecryptError, Envelope

KEY = "/registry/core/secrets/default/db"


@pytest.fixture
def keys(tmp_path: Path) -> encryptionkeys.KeyRing:
    return encryptionkeys.load_or_create(tmp_path)


def _nonce_and_header(value: bytes) -> tuple[bytes, bytes]:
    kek_id = encryption.kek_id_of(value)
    assert kek_id is not None
    header_end = len(encryption.PREFIX) + len(kek_id) + 1 + encryption.WRAPPED_DEK_BYTES
    return value[:header_end], value[header_end:header_end + encryption.NONCE_BYTES]


def test_round_trip_and_recognisable_header(keys: encryptionkeys.KeyRing) -> None:
    envelope = Envelope(keys)
    plaintext = b'{"metadata":{"name":"db"},"data":{"password":"aHVudGVyMg=="}}'
    sealed = envelope.encrypt(KEY, plaintext)
    assert sealed.startswith(encryption.PREFIX + keys.primary.id.encode() + b":")
    assert plaintext not in sealed and b"aHVudGVyMg==" not in sealed
    assert encryption.kek_id_of(sealed) == keys.primary.id
    assert envelope.decrypt(KEY, sealed) == plaintext
    # Another process (a restarted server) opens it with the key file alone.
    assert Envelope(encryptionkeys.load(keys.path)).decrypt(KEY, sealed) == plaintext


@settings(max_examples=50, deadline=None)
@given(plaintext=st.binary(max_size=4096), key=st.text(min_size=1, max_size=80))
def test_round_trip_any_value(tmp_path_factory: pytest.TempPathFactory, plaintext: bytes, key: str) -> None:
    envelope = Envelope(encryptionkeys.load_or_create(tmp_path_factory.mktemp("k")))
    assert envelope.decrypt(key, envelope.encrypt(key, plaintext)) == plaintext


def test_every_tampered_byte_is_refused(keys: encryptionkeys.KeyRing) -> None:
    envelope = Envelope(keys)
    sealed = envelope.encrypt(KEY, b'{"data":{"k":"dg=="}}')
    header_len = len(encryption.PREFIX) + len(keys.primary.id) + 1
    for position in range(header_len, len(sealed)):
        tampered = bytearray(sealed)
        tampered[position] ^= 0x01
        # A fresh envelope: the wrapped key must be opened (and checked) again.
        with pytest.raises(DecryptError) as failure:
            Envelope(keys).decrypt(KEY, bytes(tampered))
        assert keys.primary.id in str(failure.value)
    # A truncated value is refused with its length, not an index error.
    with pytest.raises(DecryptError, match="cut short"):
        envelope.decrypt(KEY, sealed[:header_len + 20])


def test_authenticated_data_binds_the_value_to_its_key(keys: encryptionkeys.KeyRing) -> None:
    envelope = Envelope(keys)
    sealed = envelope.encrypt(KEY, b'{"data":{}}')
    with pytest.raises(DecryptError, match="copied from another object"):
        envelope.decrypt("/registry/core/secrets/default/other", sealed)


def test_nonces_never_repeat_under_one_dek(keys: encryptionkeys.KeyRing) -> None:
    envelope = Envelope(keys, dek_max_seals=20_000)
    seen: set[tuple[bytes, bytes]] = set()
    headers: set[bytes] = set()
    for _ in range(50_000):
        header, nonce = _nonce_and_header(envelope.encrypt(KEY, b"{}"))
        assert (header, nonce) not in seen
        seen.add((header, nonce))
        headers.add(header)
    # The DEK was replaced after every 20,000 seals (its counter starts again, with a new key).
    assert len(headers) == 3
    # A second envelope (another server start) has its own DEK, so its nonces cannot collide.
    header, _ = _nonce_and_header(Envelope(keys).encrypt(KEY, b"{}"))
    assert header not in headers


def test_a_new_primary_kek_gets_a_new_dek(keys: encryptionkeys.KeyRing) -> None:
    envelope = Envelope(keys)
    old = envelope.encrypt(KEY, b"1")
    new_kek = keys.add_primary()
    new = envelope.encrypt(KEY, b"2")
    assert encryption.kek_id_of(old) != encryption.kek_id_of(new) == new_kek.id
    assert envelope.decrypt(KEY, old) == b"1" and envelope.decrypt(KEY, new) == b"2"


def test_missing_kek_names_the_key_and_the_file(tmp_path: Path, keys: encryptionkeys.KeyRing) -> None:
    sealed = Envelope(keys).encrypt(KEY, b"{}")
    other = encryptionkeys.load_or_create(tmp_path / "other")
    with pytest.raises(DecryptError) as failure:
        Envelope(other).decrypt(KEY, sealed)
    message = str(failure.value)
    assert f"key-encryption key \"{keys.primary.id}\"" in message
    assert str(other.path) in message and other.primary.id in message


def test_a_different_key_under_the_same_id_is_named(tmp_path: Path, keys: encryptionkeys.KeyRing) -> None:
    sealed = Envelope(keys).encrypt(KEY, b"{}")
    document = json.loads(keys.path.read_text())
    document["keys"][0]["secret"] = encryptionkeys.base64.b64encode(os.urandom(32)).decode()
    keys.path.write_text(json.dumps(document))
    with pytest.raises(DecryptError, match="does not open with key-encryption key") as failure:
        Envelope(encryptionkeys.load(keys.path)).decrypt(KEY, sealed)
    assert str(keys.path) in str(failure.value)


def test_plain_values_are_told_apart() -> None:
    assert not encryption.is_encrypted(b'{"metadata":{}}')
    assert encryption.kek_id_of(b'{"metadata":{}}') is None


def test_key_file_is_private_and_reloads(tmp_path: Path) -> None:
    keys = encryptionkeys.load_or_create(tmp_path)
    assert keys.path == tmp_path / "keys" / "kek.json"
    assert stat.S_IMODE(keys.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(keys.path.parent.stat().st_mode) == 0o700
    again = encryptionkeys.load_or_create(tmp_path)
    assert again.primary == keys.primary
    assert not [p for p in keys.path.parent.iterdir() if p.name.endswith(".tmp")]


def test_add_and_retire_keep_the_file_consistent(tmp_path: Path) -> None:
    keys = encryptionkeys.load_or_create(tmp_path)
    first = keys.primary
    second = keys.add_primary()
    reloaded = encryptionkeys.load(keys.path)
    assert reloaded.ids == [first.id, second.id] and reloaded.primary == second
    with pytest.raises(ValueError, match="primary"):
        keys.retire([second.id])
    keys.retire([first.id])
    assert encryptionkeys.load(keys.path).ids == [second.id]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(primary="nope"), 'primary key "nope" is not among its keys'),
        (lambda d: d["keys"][0].update(secret="c2hvcnQ="), "keys.0.secret holds 5 bytes"),
        (lambda d: d["keys"][0].update(secret="***"), "keys.0.secret is not base64"),
        (lambda d: d["keys"][0].update(id="a:b"), "keys.0.id"),
        (lambda d: d["keys"].append(dict(d["keys"][0])), 'keys.1.id ".*" appears twice'),
        (lambda d: d.update(extra=1), "extra"),
    ],
)
def test_a_bad_key_file_is_refused_precisely(tmp_path: Path, edit, message: str) -> None:
    keys = encryptionkeys.load_or_create(tmp_path)
    document = json.loads(keys.path.read_text())
    edit(document)
    keys.path.write_text(json.dumps(document))
    with pytest.raises(encryptionkeys.KeyFileError, match=message) as failure:
        encryptionkeys.load(keys.path)
    assert str(keys.path) in str(failure.value)


def test_a_readable_or_missing_key_file_is_refused(tmp_path: Path) -> None:
    keys = encryptionkeys.load_or_create(tmp_path)
    os.chmod(keys.path, 0o644)
    with pytest.raises(encryptionkeys.KeyFileError, match="chmod 600"):
        encryptionkeys.load(keys.path)
    keys.path.unlink()
    with pytest.raises(encryptionkeys.KeyFileError, match="does not exist"):
        encryptionkeys.load(keys.path)
