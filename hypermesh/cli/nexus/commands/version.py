"""`nexus version`: the client's version, and the server's unless `--client` is given."""

from __future__ import annotations

import argparse
import json
from typing import Any

from hypermesh.cli.nexus.dispatch import CLIENT_VERSION
from hypermesh.cli.nexus.session import Session


def run(args: argparse.Namespace, session: Session) -> int:
    """Print versions as text, json or yaml."""
    info: dict[str, Any] = {"clientVersion": {"gitVersion": CLIENT_VERSION, "platform": "python"}}
    if not args.client:
        info["serverVersion"] = session.api.server_version()
    if args.output == "json":
        session.out(json.dumps(info, indent=2) + "\n")
    elif args.output == "yaml":
        from hypermesh.cli.nexus import yamlio

        session.out(yamlio.dump_yaml(info))
    else:
        lines = [f"Client Version: {CLIENT_VERSION}"]
        if "serverVersion" in info:
            lines.append(f"Server Version: {info['serverVersion'].get('gitVersion', 'unknown')}")
        session.out("\n".join(lines) + "\n")
    return 0
