"""Kubeconfig files: how kubectl, client libraries and our own CLI find and trust a cluster.

The file embeds the CA and the client's certificate and key as base64 `*-data` fields rather
than file paths, so a single file is all a user needs to copy. It therefore contains a private
key and is written with mode 0600.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from hypermesh.pki import files
from hypermesh.pki.ca import CertificateAuthority


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def render_kubeconfig(
    *,
    server_url: str,
    ca_pem: bytes,
    cert_pem: bytes,
    key_pem: bytes,
    cluster: str = "hypermesh",
    user: str = "admin",
    context: str = "hypermesh",
    namespace: str = "default",
) -> str:
    """Return the YAML text of a single-cluster, single-user kubeconfig."""
    config: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": cluster,
                "cluster": {"server": server_url, "certificate-authority-data": _b64(ca_pem)},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": _b64(cert_pem),
                    "client-key-data": _b64(key_pem),
                },
            }
        ],
        "contexts": [
            {
                "name": context,
                "context": {"cluster": cluster, "user": user, "namespace": namespace},
            }
        ],
        "current-context": context,
        "preferences": {},
    }
    return yaml.safe_dump(config, sort_keys=False)


def write_kubeconfig(
    path: str | os.PathLike[str],
    *,
    server_url: str,
    ca_pem: bytes,
    cert_pem: bytes,
    key_pem: bytes,
    cluster: str = "hypermesh",
    user: str = "admin",
    context: str = "hypermesh",
    namespace: str = "default",
) -> None:
    """Write a kubeconfig (mode 0600, atomically) that reaches `server_url` as one user."""
    text = render_kubeconfig(
        server_url=server_url,
        ca_pem=ca_pem,
        cert_pem=cert_pem,
        key_pem=key_pem,
        cluster=cluster,
        user=user,
        context=context,
        namespace=namespace,
    )
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    files.write_private(target, text.encode("utf-8"))


def issue_user_kubeconfig(
    path: str | os.PathLike[str],
    ca: CertificateAuthority,
    *,
    server_url: str,
    user: str,
    groups: Sequence[str] = (),
    days: int = 365,
    cluster: str = "hypermesh",
    context: str = "hypermesh",
    namespace: str = "default",
) -> None:
    """Issue a client certificate for `user` in `groups` and write a kubeconfig that uses it."""
    cert_pem, key_pem = ca.issue(user, organizations=groups, client=True, days=days)
    write_kubeconfig(
        path,
        server_url=server_url,
        ca_pem=ca.cert_pem,
        cert_pem=cert_pem,
        key_pem=key_pem,
        cluster=cluster,
        user=user,
        context=context,
        namespace=namespace,
    )
