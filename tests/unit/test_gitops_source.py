"""Reading a GitSync's source with the real `git`: refs, paths, errors, deadlines, credentials.

Repositories are made here (these machines reach no git host). The credential plumbing is
tested end to end where it can be on one machine: a token reaches a local HTTPS server (which
runs `git http-backend`) as an Authorization header, and an ssh key reaches the ssh program
as a 0600 file, through a stand-in `ssh` that runs git-upload-pack locally. What cannot be
checked here is a real ssh server's host key and key exchange, and a real git host's token
scopes.
"""

from __future__ import annotations

import ast
import base64
import datetime
import http.server
import ipaddress
import os
import ssl
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hypermesh.gitops import credentials, git, source

GIT_ENV = {
    **os.environ,
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.invalid",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.invalid",
}


def sh(*args: str, cwd: Path) -> str:
    result = subprocess.run(args, cwd=cwd, env=GIT_ENV, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


class Origin:
    """A bare repository with a work tree pushing to it."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.bare, self.work = root / "origin.git", root / "work"
        sh("git", "init", "-q", "--bare", "-b", "main", str(self.bare), cwd=root)
        sh("git", "init", "-q", "-b", "main", str(self.work), cwd=root)

    def commit(self, files: dict[str, str | None], *, branch: str = "main") -> str:
        for name, text in files.items():
            path = self.work / name
            if text is None:
                path.unlink()
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        sh("git", "add", "-A", cwd=self.work)
        sh("git", "commit", "-q", "--allow-empty", "-m", "c", cwd=self.work)
        sh("git", "push", "-q", "-f", str(self.bare), f"HEAD:refs/heads/{branch}", cwd=self.work)
        return sh("git", "rev-parse", "HEAD", cwd=self.work)


@pytest.fixture
def origin(tmp_path: Path) -> Origin:
    return Origin(tmp_path / "origin")


async def fetch(origin: Origin, cache: Path, **kwargs: object) -> source.Snapshot:
    args: dict[str, object] = {"url": str(origin.bare), "ref": git.Ref(branch="main"), "path": "deploy", "cache": cache, "credentials": None, "timeout": 30.0}
    args.update(kwargs)
    return await source.fetch(**args)  # type: ignore[arg-type]


# -- refs, paths, files ----------------------------------------------------------------------


async def test_branch_tag_commit_and_default_branch(origin: Origin, tmp_path: Path) -> None:
    first = origin.commit({"deploy/a.yaml": "a: 1\n"})
    sh("git", "tag", "v1", first, cwd=origin.work)
    sh("git", "push", "-q", str(origin.bare), "refs/tags/v1", cwd=origin.work)
    second = origin.commit({"deploy/a.yaml": "a: 2\n"})
    cache = tmp_path / "cache"

    snap = await fetch(origin, cache)
    assert snap.revision == f"main@sha1:{second}"
    assert snap.files == {"deploy/a.yaml": b"a: 2\n"}
    snap = await fetch(origin, cache, ref=git.Ref(tag="v1"))
    assert (snap.revision, snap.files["deploy/a.yaml"]) == (f"v1@sha1:{first}", b"a: 1\n")
    # A commit wins over a branch, and is fetched by id.
    snap = await fetch(origin, cache, ref=git.Ref(branch="main", commit=first))
    assert snap.revision == f"sha1:{first}"
    snap = await fetch(origin, cache, ref=git.Ref(), url=f"file://{origin.bare}")
    assert snap.revision == f"HEAD@sha1:{second}"
    # The cache is one bare repository, without a work tree.
    assert (cache / "repo.git" / "HEAD").is_file() and not (cache / "repo.git" / "deploy").exists()


async def test_only_manifests_under_the_path_are_read(origin: Origin, tmp_path: Path) -> None:
    origin.commit({
        "deploy/a.yaml": "a\n", "deploy/sub/b.yml": "b\n", "deploy/c.json": "{}\n",
        "deploy/README.md": "x\n", "deploy/.hidden.yaml": "h\n", "other/d.yaml": "d\n",
    })  # fmt: skip
    os.symlink("/etc/passwd", origin.work / "deploy" / "link.yaml")
    commit = origin.commit({})
    snap = await fetch(origin, tmp_path / "cache", path="./deploy/")
    assert sorted(snap.files) == ["deploy/a.yaml", "deploy/c.json", "deploy/sub/b.yml"]
    assert snap.revision.endswith(commit)
    whole = await fetch(origin, tmp_path / "cache", path=None)
    assert "other/d.yaml" in whole.files


async def test_errors_say_what_failed_and_git_s_own_words(origin: Origin, tmp_path: Path) -> None:
    origin.commit({"deploy/a.yaml": "a\n"})
    cache = tmp_path / "cache"
    with pytest.raises(source.SourceError) as missing:
        await fetch(origin, cache, ref=git.Ref(branch="nope"))
    assert str(missing.value) == (
        f'fetching branch "nope" of {origin.bare} failed: fatal: couldn\'t find remote ref refs/heads/nope'
    )
    with pytest.raises(source.SourceError, match='path "nowhere" does not exist at commit'):
        await fetch(origin, cache, path="nowhere")
    with pytest.raises(source.SourceError, match=r'path "\.\./x" must stay inside the repository'):
        await fetch(origin, cache, path="../x")
    with pytest.raises(source.SourceError, match="no branch or tag of the repository contains it"):
        await fetch(origin, cache, ref=git.Ref(commit="0" * 40))
    with pytest.raises(source.SourceError, match="is not supported"):
        await fetch(origin, cache, url="ext::sh -c touch% /tmp/pwned")
    with pytest.raises(source.SourceError, match="local repositories are not allowed"):
        await fetch(origin, cache, allow_local=False)
    with pytest.raises(ValueError, match="must be a full commit id"):
        git.Ref(commit="abc123")


async def test_a_hanging_git_is_killed_at_the_deadline(origin: Origin, tmp_path: Path) -> None:
    slow = tmp_path / "slow-git"
    slow.write_text("#!/bin/sh\nsleep 30\n")
    slow.chmod(0o755)
    origin.commit({"deploy/a.yaml": "a\n"})
    with pytest.raises(source.SourceError, match=r"git init timed out after 0\.5s"):
        await fetch(origin, tmp_path / "cache", timeout=0.5, git_binary=str(slow))
    with pytest.raises(source.SourceError, match=r'the git program \("/nonexistent/git"\) is not installed'):
        await fetch(origin, tmp_path / "cache2", git_binary="/nonexistent/git")


async def test_a_plain_folder_is_read_as_it_is(tmp_path: Path) -> None:
    folder = tmp_path / "plain"
    (folder / "deploy").mkdir(parents=True)
    (folder / "deploy" / "a.yaml").write_text("a\n")
    first = await source.fetch(url=f"file://{folder}", ref=git.Ref(), path="deploy", cache=tmp_path / "c", credentials=None, timeout=5)
    assert first.files == {"deploy/a.yaml": b"a\n"} and first.revision.startswith("sha256:")
    (folder / "deploy" / "a.yaml").write_text("b\n")
    second = await source.fetch(url=str(folder), ref=git.Ref(), path="deploy", cache=tmp_path / "c", credentials=None, timeout=5)
    assert second.revision != first.revision
    with pytest.raises(source.SourceError, match="leave ref unset"):
        await source.fetch(url=str(folder), ref=git.Ref(branch="main"), path="", cache=tmp_path / "c", credentials=None, timeout=5)


def test_urls_are_checked_and_redacted() -> None:
    assert git.check_url("https://h/r.git") == "https"
    assert git.check_url("git@github.example:org/repo.git") == "ssh"
    assert git.check_url("ssh://git@h:2222/r.git") == "ssh"
    assert git.check_url("/srv/repo.git") == "local"
    for bad in ("-uhack", "ext::sh", "relative/path", "ftp://h/r"):
        with pytest.raises(ValueError):
            git.check_url(bad)
    assert git.redact("fatal: https://user:tok3n@h/r.git denied") == "fatal: https://***@h/r.git denied"


# -- credentials -------------------------------------------------------------------------------


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_credentials_from_a_secret_never_show_in_a_repr() -> None:
    creds = credentials.Credentials.from_secret({"data": {"token": b64("s3cret")}})
    assert (creds.username, creds.password) == ("git", "s3cret")
    assert "s3cret" not in repr(creds) and "password" in repr(creds)
    basic = credentials.Credentials.from_secret({"stringData": {"username": "u", "password": "p"}})
    with credentials.git_environment(basic, "https://h:8443/r.git", "https", scratch=Path("/tmp")) as env:
        assert env["GIT_CONFIG_KEY_0"] == "http.https://h:8443/.extraHeader"
        assert env["GIT_CONFIG_VALUE_0"] == "Authorization: Basic " + b64("u:p")
    bearer = credentials.Credentials.from_secret({"stringData": {"bearerToken": "tk"}})
    with credentials.git_environment(bearer, "https://h/r.git", "https", scratch=Path("/tmp")) as env:
        assert env["GIT_CONFIG_VALUE_0"] == "Authorization: Bearer tk"
    with pytest.raises(credentials.CredentialError, match="never sent over plain http"):
        with credentials.git_environment(basic, "http://h/r.git", "http", scratch=Path("/tmp")):
            pass
    with pytest.raises(credentials.CredentialError, match='key "token" of the Secret is not valid base64'):
        credentials.Credentials.from_secret({"data": {"token": "%%%"}})


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture
def https_git(origin: Origin, tmp_path: Path) -> Iterator[tuple[str, Path, list[str]]]:
    """An HTTPS git server over `origin` (git http-backend) that wants Basic u:s3cret; yields
    the repository URL, the CA file and the Authorization headers it received."""
    expected = "Basic " + b64("u:s3cret")
    seen: list[str] = []
    project_root = origin.bare.parent

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._serve()

        def do_POST(self) -> None:
            self._serve()

        def log_message(self, *args: object) -> None:
            pass

        def _serve(self) -> None:
            given = self.headers.get("Authorization", "")
            seen.append(given)
            if given != expected:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="git"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            path, _, query = self.path.partition("?")
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            env = {
                **GIT_ENV, "GIT_PROJECT_ROOT": str(project_root), "GIT_HTTP_EXPORT_ALL": "1",
                "PATH_INFO": path, "QUERY_STRING": query, "REQUEST_METHOD": self.command,
                "CONTENT_TYPE": self.headers.get("Content-Type", ""), "CONTENT_LENGTH": str(len(body)),
                "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""), "REMOTE_USER": "u",
            }  # fmt: skip
            out = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True).stdout
            head, _, payload = out.partition(b"\r\n\r\n")
            status = 200
            headers = []
            for line in head.decode().split("\r\n"):
                name, _, value = line.partition(":")
                if name.lower() == "status":
                    status = int(value.strip().split()[0])
                elif name:
                    headers.append((name, value.strip()))
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    cert, key = _self_signed(tmp_path)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{httpd.server_address[1]}/origin.git", cert, seen
    finally:
        httpd.shutdown()


async def test_a_token_reaches_an_https_server_as_a_header_only(
    origin: Origin, tmp_path: Path, https_git: tuple[str, Path, list[str]]
) -> None:
    url, ca, seen = https_git
    commit = origin.commit({"deploy/a.yaml": "a\n"})
    repo = git.Repository(tmp_path / "cache" / "repo.git", env={"GIT_SSL_CAINFO": str(ca)})
    good = credentials.Credentials.from_secret({"stringData": {"username": "u", "password": "s3cret"}})
    with credentials.git_environment(good, url, "https", scratch=tmp_path / "cache") as env:
        assert await repo.fetch(url, git.Ref(branch="main"), timeout=30, env=env) == commit
    assert "Basic " + b64("u:s3cret") in seen

    wrong = credentials.Credentials.from_secret({"stringData": {"username": "u", "password": "wr0ng"}})
    with pytest.raises(git.GitError) as refused:
        with credentials.git_environment(wrong, url, "https", scratch=tmp_path / "cache") as env:
            await repo.fetch(url, git.Ref(branch="main"), timeout=30, env=env)
    assert "wr0ng" not in str(refused.value) and b64("u:wr0ng") not in str(refused.value)
    assert "failed" in str(refused.value)
    # No credentials: git does not prompt, it fails and says so.
    with pytest.raises(git.GitError, match="terminal prompts disabled"):
        await repo.fetch(url, git.Ref(branch="main"), timeout=30)


async def test_an_ssh_key_reaches_ssh_as_a_private_file_and_is_removed_after(
    origin: Origin, tmp_path: Path
) -> None:
    commit = origin.commit({"deploy/a.yaml": "a\n"})
    record = tmp_path / "ssh-args"
    fake = tmp_path / "bin" / "ssh"
    fake.parent.mkdir()
    # A stand-in for ssh: records its arguments and the key file's mode and content, then runs
    # the remote command (git-upload-pack '<path>') here instead of on a host.
    fake.write_text(
        f"#!{sys.executable}\n"
        "import os, stat, subprocess, sys\n"
        "args = sys.argv[1:]\n"
        "key = args[args.index('-i') + 1]\n"
        "mode = oct(stat.S_IMODE(os.stat(key).st_mode))\n"
        f"open({str(record)!r}, 'w').write(repr((args, mode, open(key).read())))\n"
        "sys.exit(subprocess.call(['sh', '-c', args[-1]]))\n"
    )
    fake.chmod(0o755)
    secret = {"stringData": {"identity": "-----BEGIN OPENSSH PRIVATE KEY-----\nfake\n-----END OPENSSH PRIVATE KEY-----"}}
    creds = credentials.Credentials.from_secret(secret)
    snap = await source.fetch(
        url=f"ssh://git@example.invalid{origin.bare}", ref=git.Ref(branch="main"), path="deploy",
        cache=tmp_path / "cache", credentials=creds, timeout=30, ssh_binary=str(fake),
    )  # fmt: skip
    assert snap.revision == f"main@sha1:{commit}"
    args, mode, key_text = ast.literal_eval(record.read_text())
    assert mode == "0o600"
    assert key_text.endswith("-----END OPENSSH PRIVATE KEY-----\n")
    assert "BatchMode=yes" in args and "IdentitiesOnly=yes" in args
    assert "StrictHostKeyChecking=accept-new" in args
    assert f"UserKnownHostsFile={tmp_path / 'cache' / 'known_hosts'}" in args
    key_file = Path(args[args.index("-i") + 1])
    assert not key_file.exists() and not key_file.parent.exists()

    # With known_hosts in the Secret, host keys are checked strictly against it.
    secret["stringData"]["known_hosts"] = "example.invalid ssh-ed25519 AAAA\n"
    creds = credentials.Credentials.from_secret(secret)
    await source.fetch(
        url=f"ssh://git@example.invalid{origin.bare}", ref=git.Ref(branch="main"), path="deploy",
        cache=tmp_path / "cache", credentials=creds, timeout=30, ssh_binary=str(fake),
    )  # fmt: skip
    args, _, _ = ast.literal_eval(record.read_text())
    assert "StrictHostKeyChecking=yes" in args
    assert stat.S_IMODE(os.stat(tmp_path / "cache").st_mode) == 0o700
