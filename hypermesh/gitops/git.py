"""Git through the `git` command line: fetch one ref into a cache repository, read its files.

The CLI rather than a library because it speaks every transport a user means (a local path,
file://, https, ssh) with the authentication they already know, and its messages are the ones a
user can look up. Each GitSync owns one bare cache repository; a sync fetches only the ref it
wants, shallowly (`--depth 1`), into `refs/gitsync/target`, and reads files straight from the
commit's tree (`ls-tree`, `cat-file --batch`). There is no work tree, so nothing can be left
half checked out, and a fetch that fails leaves the previous commit readable.

Every git process gets a closed environment: no user or system configuration, no prompts
(GIT_TERMINAL_PROMPT=0), only the transports file, http(s) and ssh (GIT_ALLOW_PROTOCOL: `ext::`
URLs would run commands), and a deadline after which its whole process group is killed. The
processes run from threads with the standard library's `subprocess`, which closes inherited
descriptors (uvloop's subprocess support does not, see hypermesh/runtime/runc.py).

Credentials never appear on a command line or in a message: `hypermesh.gitops.credentials`
passes them through the environment and private files, and `redact` strips any user
information a URL carries before it reaches an error.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "GitError",
    "Ref",
    "Repository",
    "check_url",
    "redact",
]

# The ref every fetch lands in: one name, overwritten each time.
TARGET_REF = "refs/gitsync/target"
# A manifest larger than this is refused: it is a mistake (a binary committed by accident).
MAX_FILE_BYTES = 8 << 20
_ALLOWED_PROTOCOLS = "file:http:https:ssh"
_SHA = re.compile(r"^([0-9a-f]{40}|[0-9a-f]{64})$")
_SCP_LIKE = re.compile(r"^[A-Za-z0-9._~-]+@[A-Za-z0-9.-]+:(?!//)")
_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]*@")


class GitError(Exception):
    """A git operation failed; the message says which, against what, and git's own words."""


def redact(text: str) -> str:
    """`text` with the user information of any URL in it removed (`https://***@host/...`)."""
    return _USERINFO.sub(r"\g<scheme>***@", text)


def check_url(url: str, *, allow_local: bool = True) -> str:
    """The transport of `url` (local, file, http, https, ssh), or ValueError saying why not."""
    if url.startswith("-"):
        raise ValueError(f'url "{redact(url)}" must not start with "-"')
    lowered = url.lower()
    for scheme in ("https", "http", "ssh", "file"):
        if lowered.startswith(f"{scheme}://"):
            kind = scheme
            break
    else:
        if url.startswith("/"):
            kind = "local"
        elif _SCP_LIKE.match(url):
            kind = "ssh"
        else:
            raise ValueError(
                f'url "{redact(url)}" is not supported: use https://, ssh://, user@host:path, '
                "file:// or an absolute path"
            )
    if kind in ("local", "file") and not allow_local:
        raise ValueError(f'url "{url}": local repositories are not allowed by this controller')
    return kind


@dataclass(frozen=True)
class Ref:
    """What to check out: commit wins over tag over branch; the remote's HEAD when all unset."""

    branch: str | None = None
    tag: str | None = None
    commit: str | None = None

    def __post_init__(self) -> None:
        if self.commit is not None and not _SHA.match(self.commit):
            raise ValueError(
                f'ref.commit "{self.commit}" must be a full commit id (40 or 64 hex digits)'
            )
        for what, value in (("branch", self.branch), ("tag", self.tag)):
            if value is not None and (not value or value.startswith("-") or ".." in value):
                raise ValueError(f'ref.{what} "{value}" is not a valid git ref name')

    @property
    def refspec_source(self) -> str:
        """What the remote is asked for."""
        if self.commit:
            return self.commit
        if self.tag:
            return f"refs/tags/{self.tag}"
        if self.branch:
            return f"refs/heads/{self.branch}"
        return "HEAD"

    def describe(self) -> str:
        """For messages: `branch "main"`, `tag "v1"`, `commit 0a1b2c3`, `the default branch`."""
        if self.commit:
            return f"commit {self.commit[:12]}"
        if self.tag:
            return f'tag "{self.tag}"'
        if self.branch:
            return f'branch "{self.branch}"'
        return "the default branch (HEAD)"

    def revision(self, sha: str) -> str:
        """Flux's revision string: `main@sha1:<sha>`, `v1@sha1:<sha>`, `sha1:<sha>`."""
        algorithm = "sha256" if len(sha) == 64 else "sha1"
        if self.commit:
            return f"{algorithm}:{sha}"
        name = self.tag or self.branch or "HEAD"
        return f"{name}@{algorithm}:{sha}"


class Repository:
    """A bare cache repository at `directory`, driven by the git binary `git`."""

    def __init__(
        self,
        directory: Path,
        *,
        git: str = "git",
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.directory = directory
        self.git = git
        self.env = _base_env(env)

    # Running git

    async def run(
        self,
        *args: str,
        timeout: float,
        what: str,
        input: bytes | None = None,
        env: Mapping[str, str] | None = None,
    ) -> bytes:
        """Run `git --git-dir=<cache> ARGS`; stdout, or GitError naming `what` failed."""
        argv = [self.git, f"--git-dir={self.directory}", *args]
        full_env = {**self.env, **(env or {})}
        try:
            code, out, err = await asyncio.to_thread(_run, argv, input, full_env, timeout)
        except FileNotFoundError:
            raise GitError(
                f'{what} failed: the git program ("{self.git}") is not installed '
                "(Debian package: git)"
            ) from None
        except subprocess.TimeoutExpired:
            raise GitError(f"{what} timed out after {timeout:g}s") from None
        if code != 0:
            raise GitError(f"{what} failed: {_last_words(err)}")
        return out

    async def init(self, *, timeout: float) -> None:
        """Create the cache repository if it is not there yet."""
        if (self.directory / "HEAD").is_file():
            return
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        await self.run("init", "--bare", "--quiet", timeout=timeout, what="git init")
        # A cache has no use for reflogs; shallow fetches keep it small.
        await self.run(
            "config", "core.logAllRefUpdates", "false", timeout=timeout, what="git config"
        )

    # Fetching

    async def fetch(
        self,
        url: str,
        ref: Ref,
        *,
        timeout: float,
        env: Mapping[str, str] | None = None,
    ) -> str:
        """Fetch `ref` from `url` into the cache; returns the commit id it points at."""
        await self.init(timeout=timeout)
        where = f"{ref.describe()} of {redact(url)}"
        refspec = f"+{ref.refspec_source}:{TARGET_REF}"
        args = ["fetch", "--depth=1", "--no-tags", "--force", "--quiet", "--", url, refspec]
        try:
            await self.run(*args, timeout=timeout, what=f"fetching {where}", env=env)
        except GitError:
            if not ref.commit:
                raise
            # A server that refuses to serve a commit by id (uploadpack.allowAnySHA1InWant off)
            # still serves its branches and tags: fetch them all and look for the commit there.
            await self.run(
                "fetch", "--force", "--quiet", "--", url,
                "+refs/heads/*:refs/gitsync/heads/*", "+refs/tags/*:refs/gitsync/tags/*",
                timeout=timeout, what=f"fetching {where}", env=env,
            )  # fmt: skip
            try:
                await self.run(
                    "update-ref", TARGET_REF, f"{ref.commit}^{{commit}}",
                    timeout=timeout, what="git update-ref",
                )  # fmt: skip
            except GitError:
                raise GitError(
                    f"fetching {where} failed: no branch or tag of the repository contains it"
                ) from None
        out = await self.run(
            "rev-parse", "--verify", "--quiet", f"{TARGET_REF}^{{commit}}",
            timeout=timeout, what=f"resolving {where}",
        )  # fmt: skip
        return out.decode().strip()

    # Reading

    async def files(self, sha: str, path: str, *, timeout: float) -> dict[str, bytes]:
        """The manifests (.yaml, .yml, .json) under `path` at commit `sha`, by repository path.

        Symbolic links and submodules are skipped: they could point outside the repository.
        """
        clean = normalize_path(path)
        spec = [clean] if clean else []
        listing = await self.run(
            "ls-tree", "-r", "-z", "--full-tree", sha, "--", *spec,
            timeout=timeout, what=f"listing {clean or 'the repository'} at {sha[:12]}",
        )  # fmt: skip
        wanted: list[tuple[str, str]] = []
        seen_any = False
        for entry in listing.split(b"\0"):
            if not entry:
                continue
            head, _, name_bytes = entry.partition(b"\t")
            mode, kind, object_id = head.decode().split(" ")
            name = name_bytes.decode("utf-8", "surrogateescape")
            if clean and name != clean and not name.startswith(clean + "/"):
                continue
            seen_any = True
            if kind != "blob" or mode == "120000":
                continue
            if name.rsplit("/", 1)[-1].startswith("."):
                continue
            if name.endswith((".yaml", ".yml", ".json")):
                wanted.append((name, object_id))
        if clean and not seen_any:
            raise GitError(f'path "{clean}" does not exist at commit {sha[:12]}')
        if not wanted:
            return {}
        batch = "".join(f"{object_id}\n" for _, object_id in wanted).encode()
        out = await self.run(
            "cat-file", "--batch", input=batch, timeout=timeout, what="reading manifests"
        )
        return _split_batch(out, wanted)

    async def remove(self) -> None:
        """Delete the cache (the GitSync is gone)."""
        import shutil

        await asyncio.to_thread(shutil.rmtree, self.directory, True)


def normalize_path(path: str | None) -> str:
    """`./deploy/` -> `deploy`; ValueError for a path that leaves the repository."""
    parts = [p for p in (path or "").replace("\\", "/").split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise ValueError(f'path "{path}" must stay inside the repository (no "..")')
    return "/".join(parts)


def _split_batch(out: bytes, wanted: list[tuple[str, str]]) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    position = 0
    for name, object_id in wanted:
        newline = out.index(b"\n", position)
        header = out[position:newline].decode().split(" ")
        if len(header) != 3 or header[0] != object_id:
            raise GitError(f"reading {name}: unexpected answer from git cat-file: {header}")
        size = int(header[2])
        if size > MAX_FILE_BYTES:
            raise GitError(f"{name} is {size} bytes; manifests may be at most {MAX_FILE_BYTES}")
        start = newline + 1
        files[name] = out[start : start + size]
        position = start + size + 1
    return files


def _base_env(extra: Mapping[str, str] | None) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/nonexistent"),
        "LANG": "C",
        "LC_ALL": "C",
        # Nobody's personal or system-wide configuration (aliases, url rewrites, helpers).
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ALLOW_PROTOCOL": _ALLOWED_PROTOCOLS,
        "GIT_SSH_COMMAND": "ssh -o BatchMode=yes",
    }
    env.update(extra or {})
    return env


def _run(
    argv: list[str], input: bytes | None, env: dict[str, str], timeout: float
) -> tuple[int, bytes, bytes]:
    """Runs in a thread: one git process in its own session, killed whole at the deadline."""
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        # git fetch runs helpers (ssh, git-remote-https): take the whole group down.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.communicate()
        raise
    return proc.returncode, out, err


def _last_words(stderr: bytes) -> str:
    """git's own explanation: its `fatal:`/`error:` lines, else its last line (redacted)."""
    lines = [line.strip() for line in stderr.decode("utf-8", "replace").splitlines() if line.strip()]
    important = [line for line in lines if line.startswith(("fatal:", "error:"))]
    chosen = important or lines[-1:] or ["git gave no message"]
    # Repeated lines (fatal: X / fatal: git upload-pack: X) say one thing.
    unique = list(dict.fromkeys(chosen))
    return redact("; ".join(unique[-3:]))
