"""Secrets are encrypted at rest: the database file never holds their bytes, every client still
reads them, a key rotation leaves only the new key in use, and a lost key makes the server
report the object, not crash.

One real server process on one data directory, stopped and started between the steps, because
the file is only fully written (its WAL checkpointed) when the server stops, and the rotation
runs on a stopped server.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
from pathlib import Path

import httpx

from hypermesh.api import encryption, encryptionkeys, keyrotation
from tests.e2e.conftest import Server, free_port

VALUE = "zebra-quartz-7f3a91c2-plutonium"
CHANGED = "otter-basalt-41d09e6b-vanadium"
# Not a Secret, so stored in clear: proves that the search below can find what is there.
CONTROL = "plain-control-5be2c7"


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _database_bytes(data_dir: Path) -> bytes:
    files = [data_dir / name for name in ("state.db", "state.db-wal", "state.db-shm")]
    return b"".join(path.read_bytes() for path in files if path.exists())


def _assert_absent(blob: bytes, *texts: str) -> None:
    for text in texts:
        for form in (text.encode(), _b64(text).encode()):
            assert form not in blob, f"{form!r} found in the database file"


def _header(kek_id: str) -> bytes:
    return encryption.PREFIX + kek_id.encode() + b":"


def _password(server: Server) -> str:
    out = server.kubectl("get", "secret", "vault", "-o", "jsonpath={.data.password}").stdout
    return base64.b64decode(out).decode()


def _events(response: httpx.Response, count: int) -> list[dict]:
    events = []
    for line in response.iter_lines():
        if line:
            events.append(json.loads(line))
            if len(events) == count:
                break
    return events


def test_secrets_are_encrypted_at_rest_and_keys_rotate(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = Server(data_dir, free_port())

    # 1. A Secret written through kubectl never reaches the file in clear.
    server.start()
    try:
        server.kubectl("create", "secret", "generic", "vault", f"--from-literal=password={VALUE}")
        server.kubectl("create", "namespace", CONTROL)
        created_rv = int(server.kubectl_json("get", "secret", "vault")["metadata"]["resourceVersion"])
    finally:
        assert server.stop() == 0
    keys_file = encryptionkeys.keys_path(data_dir)
    assert keys_file.exists(), (
        f"the server made no {keys_file}: hypermesh/cli/daemon.py must open its store with "
        "encryptedstore.open_encrypted(data_dir)"
    )
    first = encryptionkeys.load(keys_file).primary.id
    blob = _database_bytes(data_dir)
    assert CONTROL.encode() in blob
    assert _header(first) in blob
    _assert_absent(blob, VALUE)

    # 2. After a restart every read path serves it decrypted.
    server.start()
    try:
        assert _password(server) == VALUE
        listed = server.kubectl_json("get", "secrets")["items"]
        assert [base64.b64decode(s["data"]["password"]).decode() for s in listed if s["metadata"]["name"] == "vault"] == [VALUE]
        with server.http() as http:
            # A watch resumed from before the create: replayed from the store's history.
            url = f"/api/v1/namespaces/default/secrets?watch=1&resourceVersion={created_rv - 1}&timeoutSeconds=30"
            with http.stream("GET", url) as response:
                (added,) = _events(response, 1)
            assert added["type"] == "ADDED" and added["object"]["data"]["password"] == _b64(VALUE)
            # A watch from now: its initial state, then a live change through the watch cache.
            with http.stream("GET", "/api/v1/namespaces/default/secrets?watch=1&timeoutSeconds=30") as response:
                # The watch is registered once the response has started: the patch cannot be missed.
                server.kubectl("patch", "secret", "vault", "-p", json.dumps({"data": {"password": _b64(CHANGED)}}))
                added, modified = _events(response, 2)
            assert added["type"] == "ADDED" and added["object"]["data"]["password"] == _b64(VALUE)
            assert modified["type"] == "MODIFIED" and modified["object"]["data"]["password"] == _b64(CHANGED)
    finally:
        assert server.stop() == 0
    _assert_absent(_database_bytes(data_dir), VALUE, CHANGED)

    # 3. Rotation (offline): a new key seals everything, the old one is gone from file and store.
    report = asyncio.run(keyrotation.rotate_data_dir(data_dir))
    assert report.retired == (first,) and report.primary != first
    assert encryptionkeys.load(keys_file).ids == [report.primary]
    blob = _database_bytes(data_dir)
    assert _header(report.primary) in blob and _header(first) not in blob
    _assert_absent(blob, VALUE, CHANGED)
    server.start()
    try:
        assert _password(server) == CHANGED
    finally:
        assert server.stop() == 0

    # 4. A lost key: the server still serves, and names the object, the key and the file.
    saved = tmp_path / "kek.json.saved"
    shutil.copy2(keys_file, saved)
    keys_file.unlink()
    server.start()
    try:
        with server.http() as http:
            response = http.get("/api/v1/namespaces/default/secrets/vault")
            assert response.status_code == 500
            message = response.json()["message"]
            assert message.startswith('secrets "vault" in namespace "default" cannot be read: ')
            assert f"\"{report.primary}\"" in message and str(keys_file) in message
            listed = http.get("/api/v1/namespaces/default/secrets")
            assert listed.status_code == 500 and f"\"{report.primary}\"" in listed.json()["message"]
            assert http.get("/readyz").status_code == 200
            assert http.get(f"/api/v1/namespaces/{CONTROL}").status_code == 200
        result = server.kubectl("get", "secret", "vault", check=False)
        assert result.returncode != 0 and report.primary in result.stderr
    finally:
        assert server.stop() == 0
    assert server.log_path is not None
    assert "1 stored objects cannot be decrypted" in server.log_path.read_text()

    # Putting the key back makes it readable again.
    shutil.copy2(saved, keys_file)
    server.start()
    try:
        assert _password(server) == CHANGED
    finally:
        assert server.stop() == 0
