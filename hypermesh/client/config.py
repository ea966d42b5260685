"""Kubeconfig files: which cluster to talk to, as whom, and what to trust there.

`nexus` reads the same files kubectl reads, found the same way: `--kubeconfig`, else every file
in `$KUBECONFIG` merged (the first file to define a name or `current-context` wins, missing
files are skipped), else HyperMesh's own `$HYPERMESH_HOME/admin.kubeconfig` (the file
`hypermesh up` writes), else `~/.kube/config`. Certificates may be embedded (`*-data`, base64)
or named by path; a relative path is relative to the file that names it, as in kubectl.

Every problem is a `ConfigError` whose message says what is wrong, where (file, line, entry)
and what to do about it, because a wrong kubeconfig is the first thing a newcomer meets.

PyYAML is imported only when a file is actually read, so importing the client stays cheap.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hypermesh.client import localstate


class ConfigError(Exception):
    """The kubeconfig is missing, unreadable or wrong; the message says how to fix it."""


@dataclass(frozen=True)
class ClusterConfig:
    """Everything needed to reach one cluster as one user: a resolved kubeconfig context."""

    server: str
    ca_pem: bytes
    cert_pem: bytes | None
    key_pem: bytes | None
    namespace: str
    context: str
    cluster: str
    user: str
    source: Path
    # The name to verify in the server's certificate when it differs from the URL's host.
    tls_server_name: str | None = None
    # A bearer token (a kubeconfig user's `token`), sent only on connections without a client
    # certificate; the asyncio client sends it (a joining node's bootstrap token). Never shown.
    token: str | None = field(default=None, repr=False)
    # Do not verify the server at all. Never read from a file: only a joining node sets it, to
    # fetch the cluster CA that it then accepts or refuses by its public key hash.
    insecure: bool = False


# Finding files


def kubeconfig_paths(explicit: str | None = None) -> list[Path]:
    """The kubeconfig files to consider, in precedence order."""
    return _candidates(explicit)[0]


_Mode = Literal["explicit", "env", "default"]


def _candidates(explicit: str | None) -> tuple[list[Path], _Mode]:
    if explicit:
        return [Path(explicit).expanduser()], "explicit"
    env = os.environ.get("KUBECONFIG")
    if env:
        paths: list[Path] = []
        for part in env.split(os.pathsep):
            if part and Path(part).expanduser() not in paths:
                paths.append(Path(part).expanduser())
        if paths:
            return paths, "env"
    return [localstate.home() / "admin.kubeconfig", Path("~/.kube/config").expanduser()], "default"


def _existing(explicit: str | None) -> list[Path]:
    """The files to read: all existing ones for $KUBECONFIG, else exactly one."""
    paths, mode = _candidates(explicit)
    if mode == "explicit":
        if not paths[0].exists():
            raise ConfigError(
                f"kubeconfig {paths[0]} does not exist; check the --kubeconfig path "
                "(a running server writes admin.kubeconfig into its data directory)"
            )
        return paths
    found = [p for p in paths if p.exists()]
    if mode == "env":
        if not found:
            raise ConfigError(
                f"no kubeconfig found: none of the files in $KUBECONFIG exist "
                f"({os.environ.get('KUBECONFIG')}); fix $KUBECONFIG, start a cluster with "
                "`make up`, or pass --kubeconfig"
            )
        return found
    if not found:
        raise ConfigError(
            f"no kubeconfig found: looked in $KUBECONFIG (unset), {paths[0]}, {paths[1]}; "
            "start a cluster with `make up` or pass --kubeconfig"
        )
    return found[:1]


# Reading and merging


def _load_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_bytes()
    except PermissionError:
        raise ConfigError(
            f"cannot read kubeconfig {path}: permission denied; it must be readable by you "
            f"(check its owner, and `chmod 600 {path}`)"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read kubeconfig {path}: {exc.strerror or exc}") from None
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        data = yaml.load(text, Loader=loader)  # noqa: S506 - a safe loader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(
            f"kubeconfig {path} is not valid YAML{where}: {problem}; fix the file or point "
            "--kubeconfig at another one"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"kubeconfig {path} is not a kubeconfig: expected a mapping with clusters, users and "
            f"contexts, found a {type(data).__name__}"
        )
    return data


@dataclass
class _Named:
    """One `clusters`, `users` or `contexts` entry and the file that defined it."""

    body: dict[str, Any]
    source: Path


@dataclass
class _Merged:
    documents: list[tuple[Path, dict[str, Any]]]
    current_context: str | None = None
    clusters: dict[str, _Named] = field(default_factory=dict)
    users: dict[str, _Named] = field(default_factory=dict)
    contexts: dict[str, _Named] = field(default_factory=dict)


_SECTIONS = (("clusters", "cluster"), ("users", "user"), ("contexts", "context"))


def _merge(paths: list[Path]) -> _Merged:
    merged = _Merged(documents=[])
    for path in paths:
        doc = _load_yaml(path)
        merged.documents.append((path, doc))
        current = doc.get("current-context")
        if merged.current_context is None and isinstance(current, str) and current:
            merged.current_context = current
        for section, inner in _SECTIONS:
            entries = doc.get(section) or []
            if not isinstance(entries, list):
                raise ConfigError(f"kubeconfig {path}: `{section}` must be a list of entries")
            table: dict[str, _Named] = getattr(merged, section)
            for index, entry in enumerate(entries):
                if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                    raise ConfigError(
                        f"kubeconfig {path}: {section}[{index}] needs a `name` and a `{inner}` "
                        "mapping"
                    )
                body = entry.get(inner) or {}
                if not isinstance(body, dict):
                    raise ConfigError(
                        f"kubeconfig {path}: {section}[{index}] ({entry['name']}): `{inner}` must "
                        "be a mapping"
                    )
                table.setdefault(entry["name"], _Named(body, path))
    return merged


def _where(merged: _Merged) -> str:
    return ", ".join(str(p) for p, _ in merged.documents)


def _pem(owner: _Named, what: str, data_key: str, file_key: str, *, required: bool) -> bytes | None:
    """The PEM bytes of `data_key` (base64) or `file_key` (a path relative to the file)."""
    body = owner.body
    data = body.get(data_key)
    if data:
        if not isinstance(data, str):
            raise ConfigError(f"kubeconfig {owner.source}: {what}: {data_key} must be a string")
        try:
            pem = base64.b64decode("".join(data.split()), validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError(
                f"kubeconfig {owner.source}: {what}: {data_key} is not valid base64; "
                "re-copy it from a working kubeconfig"
            ) from None
        return _check_pem(pem, f"kubeconfig {owner.source}: {what}: {data_key}")
    name = body.get(file_key)
    if name:
        if not isinstance(name, str):
            raise ConfigError(f"kubeconfig {owner.source}: {what}: {file_key} must be a path")
        path = Path(name).expanduser()
        if not path.is_absolute():
            path = owner.source.parent / path
        try:
            pem = path.read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"kubeconfig {owner.source}: {what}: {file_key} {path} cannot be read "
                f"({exc.strerror or exc}); fix the path (relative paths are relative to the "
                "kubeconfig's directory)"
            ) from None
        return _check_pem(pem, f"kubeconfig {owner.source}: {what}: {file_key} {path}")
    if required:
        raise ConfigError(
            f"kubeconfig {owner.source}: {what} has neither {data_key} nor {file_key}; "
            "the server's CA certificate is needed to trust it"
        )
    return None


def _check_pem(pem: bytes, where: str) -> bytes:
    if b"-----BEGIN " not in pem:
        raise ConfigError(f"{where} is not PEM (expected a -----BEGIN ...----- block)")
    return pem


def _choose_context(merged: _Merged, context: str | None) -> str:
    names = sorted(merged.contexts)
    listing = ", ".join(names) if names else "none"
    if context is not None:
        if context not in merged.contexts:
            raise ConfigError(
                f'context "{context}" not found in {_where(merged)} (contexts: {listing}); '
                "see `nexus config get-contexts`"
            )
        return context
    if merged.current_context is not None:
        if merged.current_context not in merged.contexts:
            raise ConfigError(
                f'current-context "{merged.current_context}" is not defined in {_where(merged)} '
                f"(contexts: {listing}); pick one with `nexus config use-context NAME`"
            )
        return merged.current_context
    if len(names) == 1:
        return names[0]
    if not names:
        raise ConfigError(
            f"kubeconfig {_where(merged)} defines no contexts; regenerate it (a server writes "
            "admin.kubeconfig into its data directory) or pass another --kubeconfig"
        )
    raise ConfigError(
        f"no current-context in {_where(merged)} (contexts: {listing}); pick one with "
        "`nexus config use-context NAME` or pass --context"
    )


def load_config(kubeconfig: str | None = None, *, context: str | None = None) -> ClusterConfig:
    """Resolve a kubeconfig context (the current one unless `context` is given)."""
    merged = _merge(_existing(kubeconfig))
    name = _choose_context(merged, context)
    ctx = merged.contexts[name]
    cluster_name = ctx.body.get("cluster")
    if not isinstance(cluster_name, str) or cluster_name not in merged.clusters:
        known = ", ".join(sorted(merged.clusters)) or "none"
        raise ConfigError(
            f'kubeconfig {ctx.source}: context "{name}" names cluster "{cluster_name}", which is '
            f"not defined (clusters: {known})"
        )
    cluster = merged.clusters[cluster_name]
    server = cluster.body.get("server")
    if not isinstance(server, str) or not server:
        raise ConfigError(
            f'kubeconfig {cluster.source}: cluster "{cluster_name}" has no server URL'
        )
    if not server.startswith("https://"):
        raise ConfigError(
            f'kubeconfig {cluster.source}: cluster "{cluster_name}": server "{server}" must be '
            "an https:// URL (HyperMesh serves only TLS)"
        )
    ca_pem = _pem(
        cluster,
        f'cluster "{cluster_name}"',
        "certificate-authority-data",
        "certificate-authority",
        required=False,
    )
    user_name = ctx.body.get("user") or ""
    cert_pem = key_pem = None
    if user_name:
        if not isinstance(user_name, str) or user_name not in merged.users:
            known = ", ".join(sorted(merged.users)) or "none"
            raise ConfigError(
                f'kubeconfig {ctx.source}: context "{name}" names user "{user_name}", which is '
                f"not defined (users: {known})"
            )
        user = merged.users[user_name]
        what = f'user "{user_name}"'
        cert_pem = _pem(user, what, "client-certificate-data", "client-certificate", required=False)
        key_pem = _pem(user, what, "client-key-data", "client-key", required=False)
        if (cert_pem is None) != (key_pem is None):
            raise ConfigError(
                f"kubeconfig {user.source}: {what} has a client "
                f"{'certificate' if cert_pem else 'key'} but no "
                f"{'key' if cert_pem else 'certificate'}; both are needed"
            )
    token = None
    if user_name:
        given = merged.users[user_name].body.get("token")
        token = given if isinstance(given, str) and given else None
    namespace = ctx.body.get("namespace") or "default"
    tls_server_name = cluster.body.get("tls-server-name") or None
    return ClusterConfig(
        server=server.rstrip("/"),
        ca_pem=ca_pem or b"",
        cert_pem=cert_pem,
        key_pem=key_pem,
        namespace=str(namespace),
        context=name,
        cluster=cluster_name,
        user=str(user_name),
        source=ctx.source,
        tls_server_name=str(tls_server_name) if tls_server_name else None,
        token=token,
    )


def read_kubeconfig(kubeconfig: str | None = None) -> tuple[Path, dict[str, Any]]:
    """The first file read and the (merged, when several) raw document, for `config view`."""
    merged = _merge(_existing(kubeconfig))
    first, doc = merged.documents[0]
    if len(merged.documents) == 1:
        return first, doc
    combined: dict[str, Any] = {"apiVersion": "v1", "kind": "Config"}
    for section, inner in _SECTIONS:
        table: dict[str, _Named] = getattr(merged, section)
        combined[section] = [{"name": key, inner: named.body} for key, named in table.items()]
    if merged.current_context is not None:
        combined["current-context"] = merged.current_context
    combined["preferences"] = {}
    return first, combined


# Switching contexts


def use_context(name: str, kubeconfig: str | None = None) -> Path:
    """Make `name` the current context; rewrites only that line of the file when it can."""
    merged = _merge(_existing(kubeconfig))
    if name not in merged.contexts:
        listing = ", ".join(sorted(merged.contexts)) or "none"
        raise ConfigError(
            f'context "{name}" not found in {_where(merged)} (contexts: {listing}); '
            "see `nexus config get-contexts`"
        )
    # The first file wins the merge for current-context, so that is the one to change.
    path, doc = merged.documents[0]
    target = path.resolve()
    text = target.read_text(encoding="utf-8")
    _write_keeping_mode(target, _with_current_context(text, doc, name))
    return path


_CURRENT_LINE = re.compile(r"^current-context:[^\n]*$", re.MULTILINE)
_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_.@/-]*")
_YAML_WORDS = {"true", "false", "yes", "no", "on", "off", "null", "y", "n"}


def _scalar(name: str) -> str:
    if _PLAIN.fullmatch(name) and name.lower() not in _YAML_WORDS:
        return name
    import json

    return json.dumps(name)


def _with_current_context(text: str, doc: dict[str, Any], name: str) -> str:
    """`text` with current-context set to `name`: one line edited, comments kept."""
    import yaml

    line = f"current-context: {_scalar(name)}"
    matches = _CURRENT_LINE.findall(text)
    if len(matches) == 1:
        edited = _CURRENT_LINE.sub(lambda _: line, text)
    elif not matches:
        edited = text + ("" if text.endswith("\n") or not text else "\n") + line + "\n"
    else:
        edited = ""
    expected = {**doc, "current-context": name}
    if edited:
        with contextlib.suppress(yaml.YAMLError):
            if yaml.safe_load(edited) == expected:
                return edited
    # Flow style, JSON or something unusual: write the whole document out again.
    return str(yaml.safe_dump(expected, sort_keys=False))


def _write_keeping_mode(path: Path, text: str) -> None:
    """Replace `path` atomically with `text`, keeping its permission bits."""
    import tempfile

    mode = path.stat().st_mode & 0o7777
    # mkstemp creates the file 0600, so the key inside is never readable by others meanwhile.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            os.fchmod(handle.fileno(), mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
