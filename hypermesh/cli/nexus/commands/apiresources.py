"""`nexus api-resources`: the kinds discovery reports, one line each, like kubectl's."""

from __future__ import annotations

import argparse

from hypermesh.cli.nexus import tables
from hypermesh.cli.nexus.session import Session


def run(args: argparse.Namespace, session: Session) -> int:
    """Print the served kinds, filtered by --namespaced and --api-group."""
    resources = session.discovery.resources(refresh=True)
    chosen = [
        r for r in resources
        if (args.namespaced is None or r.namespaced == args.namespaced)
        and (args.api_group is None or r.group == args.api_group)
    ]
    chosen.sort(key=lambda r: (r.group, r.plural))
    if args.output == "name":
        session.out("".join(f"{r.plural}.{r.group}\n" if r.group else f"{r.plural}\n" for r in chosen))
        return 0
    header = ["NAME", "SHORTNAMES", "APIVERSION", "NAMESPACED", "KIND"]
    if args.output == "wide":
        header += ["VERBS", "CATEGORIES"]
    rows: list[list[str]] = []
    for r in chosen:
        row = [r.plural, ",".join(r.short_names), r.api_version, str(r.namespaced).lower(), r.kind]
        if args.output == "wide":
            row += [",".join(r.verbs), ",".join(r.categories)]
        rows.append(row)
    session.out(tables.render_rows(header, rows, no_headers=bool(args.no_headers)))
    return 0
