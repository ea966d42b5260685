"""Where manifests come from: a commit of a git repository, or a plain local folder.

`fetch` turns a GitSync's `url`, `ref`, `path` and credentials into a `Snapshot`: the revision
(`main@sha1:<commit>`, which status reports) and the manifest files under the path, by their
path in the repository (which messages name). A local directory that is not a git repository
is read as it is, its revision being a hash of its files (`sha256:<digest>`), so a folder on
the controller's machine can be synced without committing.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from hypermesh.gitops import credentials as creds
from hypermesh.gitops import git

__all__ = ["Snapshot", "SourceError", "fetch", "read_folder"]

_SUFFIXES = (".yaml", ".yml", ".json")


class SourceError(Exception):
    """The source could not be read; the message is for the Ready condition."""


@dataclass(frozen=True)
class Snapshot:
    """The manifests of one revision of a source."""

    revision: str
    files: dict[str, bytes]


async def fetch(
    *,
    url: str,
    ref: git.Ref,
    path: str | None,
    cache: Path,
    credentials: creds.Credentials | None,
    timeout: float,
    git_binary: str = "git",
    ssh_binary: str = "ssh",
    allow_local: bool = True,
) -> Snapshot:
    """Fetch `ref` of `url` into the cache directory `cache` and read the files under `path`."""
    try:
        transport = git.check_url(url, allow_local=allow_local)
        clean = git.normalize_path(path)
    except ValueError as exc:
        raise SourceError(str(exc)) from None
    if transport in ("local", "file"):
        folder = _local_path(url)
        if not folder.exists():
            raise SourceError(f'the directory "{folder}" does not exist')
        if not _is_git(folder):
            if ref != git.Ref():
                raise SourceError(
                    f'"{folder}" is a plain directory, not a git repository: leave ref unset'
                )
            return await asyncio.to_thread(read_folder, folder, clean)
    repository = git.Repository(cache / "repo.git", git=git_binary)
    try:
        with creds.git_environment(
            credentials, url, transport, scratch=cache, ssh=ssh_binary
        ) as env:
            sha = await repository.fetch(url, ref, timeout=timeout, env=env)
        files = await repository.files(sha, clean, timeout=timeout)
    except (git.GitError, creds.CredentialError) as exc:
        raise SourceError(str(exc)) from None
    return Snapshot(ref.revision(sha), files)


def read_folder(folder: Path, path: str = "") -> Snapshot:
    """The manifests of a plain directory (recursively, hidden entries skipped)."""
    base = folder / path if path else folder
    if not base.exists():
        raise SourceError(f'path "{path}" does not exist in "{folder}"')
    files: dict[str, bytes] = {}
    candidates = [base] if base.is_file() else sorted(base.rglob("*"))
    for file in candidates:
        relative = file.relative_to(folder).as_posix()
        if any(part.startswith(".") for part in relative.split("/")):
            continue
        if file.is_symlink() or not file.is_file() or file.suffix not in _SUFFIXES:
            continue
        files[relative] = file.read_bytes()
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    return Snapshot(f"sha256:{digest.hexdigest()}", files)


def _local_path(url: str) -> Path:
    if url.lower().startswith("file://"):
        return Path(unquote(urlsplit(url).path))
    return Path(url)


def _is_git(folder: Path) -> bool:
    """A work tree (with .git) or a bare repository."""
    if (folder / ".git").exists():
        return True
    return (folder / "HEAD").is_file() and (folder / "objects").is_dir()
