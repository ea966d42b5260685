"""Credentials for private repositories, from a Secret to a git process, and nowhere else.

A GitSync names a Secret (`spec.secretRef`) in its own namespace; its keys follow Flux's:

- https: `username` and `password` (a password or an access token), or `token` alone (sent
  with the username `git`), or `bearerToken` (`Authorization: Bearer`);
- ssh: `identity` (a private key, unencrypted) and optionally `known_hosts`.

They reach git only through the environment of one process and private files: an https
credential becomes an `Authorization` header in per-process configuration
(`GIT_CONFIG_COUNT`/`GIT_CONFIG_KEY_n`/`GIT_CONFIG_VALUE_n`, scoped to the repository's host),
never a URL (URLs are logged and stored in reflogs), never an argument (arguments are visible
to every local user in /proc). An ssh key is written to a 0600 file in a 0700 directory made
for that one fetch and removed after it, and named in `GIT_SSH_COMMAND`. Without `known_hosts`
the host's key is trusted the first time and remembered in the GitSync's cache directory
(ssh's `accept-new`); with it, ssh checks strictly.

`Credentials` has no readable repr, so a stray log line of one shows nothing.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shlex
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = ["CredentialError", "Credentials", "git_environment"]


class CredentialError(ValueError):
    """The Secret cannot be used for this URL; the message names the keys, never the values."""


@dataclass(frozen=True, repr=False)
class Credentials:
    """What a Secret holds for git (all optional)."""

    username: str | None = None
    password: str | None = None
    bearer_token: str | None = None
    identity: bytes | None = None
    known_hosts: bytes | None = None

    def __repr__(self) -> str:
        present = [name for name, value in self._fields() if value]
        return f"Credentials(<{', '.join(present) or 'empty'}>)"

    def _fields(self) -> list[tuple[str, object]]:
        return [
            ("username", self.username),
            ("password", self.password),
            ("bearerToken", self.bearer_token),
            ("identity", self.identity),
            ("known_hosts", self.known_hosts),
        ]

    @property
    def empty(self) -> bool:
        """Whether the Secret held nothing this module uses."""
        return not any(value for _, value in self._fields())

    @classmethod
    def from_secret(cls, secret: Mapping[str, Any]) -> Credentials:
        """Read a core v1 Secret's `data` (base64) and `stringData`."""
        values: dict[str, bytes] = {}
        for key, value in ((secret.get("data") or {}) or {}).items():
            try:
                values[str(key)] = base64.b64decode(str(value), validate=True)
            except ValueError:
                raise CredentialError(f'key "{key}" of the Secret is not valid base64') from None
        for key, value in ((secret.get("stringData") or {}) or {}).items():
            values[str(key)] = str(value).encode()

        def text(key: str) -> str | None:
            raw = values.get(key)
            if raw is None:
                return None
            try:
                return raw.decode().strip()
            except UnicodeDecodeError:
                raise CredentialError(f'key "{key}" of the Secret is not UTF-8 text') from None

        username, password = text("username"), text("password")
        token = text("token")
        if token and not password:
            password = token
            username = username or "git"
        return cls(
            username=username,
            password=password,
            bearer_token=text("bearerToken"),
            identity=values.get("identity"),
            known_hosts=values.get("known_hosts"),
        )


@contextlib.contextmanager
def git_environment(
    credentials: Credentials | None,
    url: str,
    transport: str,
    *,
    scratch: Path,
    ssh: str = "ssh",
) -> Iterator[dict[str, str]]:
    """The environment additions for one git process reaching `url`; files made for it are
    removed on exit. `scratch` is the GitSync's private cache directory."""
    env: dict[str, str] = {}
    if transport == "ssh":
        with _ssh_files(credentials, scratch) as (key, known_hosts, strict):
            command = [ssh, "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={known_hosts}"]
            command += ["-o", f"StrictHostKeyChecking={'yes' if strict else 'accept-new'}"]
            if key is not None:
                command += ["-i", str(key), "-o", "IdentitiesOnly=yes"]
            env["GIT_SSH_COMMAND"] = shlex.join(command)
            yield env
        return
    if credentials is not None and not credentials.empty:
        header = _authorization(credentials, url, transport)
        if header is not None:
            parts = urlsplit(url)
            # Scoped to the repository's origin: a redirect elsewhere does not get it.
            scope = f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")
            env.update(
                {
                    "GIT_CONFIG_COUNT": "1",
                    "GIT_CONFIG_KEY_0": f"http.{scope}/.extraHeader",
                    "GIT_CONFIG_VALUE_0": header,
                }
            )
    yield env


def _authorization(credentials: Credentials, url: str, transport: str) -> str | None:
    if credentials.identity and not (credentials.password or credentials.bearer_token):
        raise CredentialError(
            f"the Secret holds an ssh identity but the url is {transport}: use an ssh:// url, "
            "or give username and password (or token) for https"
        )
    if transport == "http":
        raise CredentialError(
            "credentials are never sent over plain http: use an https:// url"
        )
    if transport != "https":
        return None  # local repositories need none
    if credentials.bearer_token:
        return f"Authorization: Bearer {credentials.bearer_token}"
    if credentials.password:
        pair = f"{credentials.username or 'git'}:{credentials.password}".encode()
        return f"Authorization: Basic {base64.b64encode(pair).decode()}"
    if credentials.username:
        raise CredentialError('the Secret has "username" but no "password" or "token"')
    return None


@contextlib.contextmanager
def _ssh_files(
    credentials: Credentials | None, scratch: Path
) -> Iterator[tuple[Path | None, Path, bool]]:
    """(private key file or None, known_hosts file, strict checking)."""
    scratch.mkdir(parents=True, exist_ok=True, mode=0o700)
    if credentials is not None and (credentials.password or credentials.bearer_token):
        if not credentials.identity:
            raise CredentialError(
                "the Secret holds https credentials but the url is ssh: add an \"identity\" "
                "(a private key) or use an https:// url"
            )
    private = Path(tempfile.mkdtemp(prefix="ssh-", dir=scratch))
    try:
        os.chmod(private, 0o700)
        key: Path | None = None
        if credentials is not None and credentials.identity:
            key = private / "identity"
            data = credentials.identity
            # OpenSSH refuses a key file without its final newline.
            _write_private(key, data if data.endswith(b"\n") else data + b"\n")
        if credentials is not None and credentials.known_hosts:
            known = private / "known_hosts"
            _write_private(known, credentials.known_hosts)
            yield key, known, True
        else:
            # Trust on first use, remembered across fetches of this GitSync.
            yield key, scratch / "known_hosts", False
    finally:
        shutil.rmtree(private, ignore_errors=True)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
