"""`nexus config view|get-contexts|current-context|use-context`: the kubeconfig, read and switched.

Reading and merging the files is the client library's job (`read_kubeconfig`, `use_context`);
this module only prints. `view` redacts certificate and key data unless `--raw` is given, as
kubectl does, so the output can be pasted into a bug report.
"""

from __future__ import annotations

import argparse
import copy
from typing import Any

from hypermesh.cli.nexus import formats, tables
from hypermesh.cli.nexus.session import Session

REDACTED = "DATA+OMITTED"
_SECRET_KEYS = ("certificate-authority-data", "client-certificate-data", "client-key-data", "token", "password")


def redact(doc: dict[str, Any]) -> dict[str, Any]:
    """A copy of a kubeconfig with embedded secrets replaced by DATA+OMITTED."""
    out = copy.deepcopy(doc)
    for section, inner in (("clusters", "cluster"), ("users", "user")):
        for entry in out.get(section) or []:
            body = entry.get(inner) if isinstance(entry, dict) else None
            if isinstance(body, dict):
                for key in _SECRET_KEYS:
                    if key in body:
                        body[key] = REDACTED if key.endswith("-data") else "REDACTED"
    return out


def minify(doc: dict[str, Any], context: str | None) -> dict[str, Any]:
    """Only the current (or given) context, with its cluster and user."""
    name = context or doc.get("current-context")
    contexts = [c for c in doc.get("contexts") or [] if c.get("name") == name]
    if not contexts:
        return doc
    ctx = contexts[0].get("context") or {}
    return {
        **doc,
        "current-context": name,
        "contexts": contexts,
        "clusters": [c for c in doc.get("clusters") or [] if c.get("name") == ctx.get("cluster")],
        "users": [u for u in doc.get("users") or [] if u.get("name") == ctx.get("user")],
    }


def run(args: argparse.Namespace, session: Session) -> int:
    """Dispatch the config sub-command."""
    from hypermesh.client import read_kubeconfig, use_context

    if args.config_command == "use-context":
        use_context(args.name, session.kubeconfig)
        session.out(f'Switched to context "{args.name}".\n')
        return 0
    _, doc = read_kubeconfig(session.kubeconfig)
    current = session.context or doc.get("current-context") or ""
    if args.config_command == "current-context":
        session.out(f"{current}\n")
        return 0
    if args.config_command == "get-contexts":
        rows = []
        for entry in doc.get("contexts") or []:
            ctx = entry.get("context") or {}
            rows.append(["*" if entry.get("name") == current else "", str(entry.get("name", "")), str(ctx.get("cluster", "")), str(ctx.get("user", "")), str(ctx.get("namespace", ""))])
        session.out(tables.render_rows(["CURRENT", "NAME", "CLUSTER", "AUTHINFO", "NAMESPACE"], rows))
        return 0
    shown = minify(doc, session.context) if args.minify else doc
    if not args.raw:
        shown = redact(shown)
    if args.output == "json":
        session.out(formats.to_json(shown))
    else:
        from hypermesh.cli.nexus import yamlio

        session.out(yamlio.dump_yaml(shown))
    return 0
