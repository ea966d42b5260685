"""Manifests named by `-f`: files, directories (optionally recursive) and `-` for stdin.

`apply`, `delete -f` and `diff` share this: they read every document first, so a typo in the
fifth file stops the command before the first object changes. Each object is then matched to
the Resource the server serves for its apiVersion and kind.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hypermesh.cli.nexus import yamlio
from hypermesh.cli.nexus.errors import CliError

if TYPE_CHECKING:
    from hypermesh.cli.nexus.session import Session
    from hypermesh.client import Resource

SUFFIXES = (".yaml", ".yml", ".json")


def _files(path: Path, *, recursive: bool) -> list[Path]:
    if path.is_dir():
        pattern = "**/*" if recursive else "*"
        return sorted(p for p in path.glob(pattern) if p.is_file() and p.suffix in SUFFIXES)
    if path.exists():
        return [path]
    raise CliError(f'the path "{path}" does not exist')


def read(paths: list[str], *, recursive: bool = False) -> list[yamlio.Document]:
    """Every object in the manifests at `paths`, in order (raises ManifestError or CliError)."""
    docs: list[yamlio.Document] = []
    for given in paths:
        if given == "-":
            docs.extend(yamlio.load_documents(sys.stdin.read(), "<stdin>"))
            continue
        for file in _files(Path(given), recursive=recursive):
            try:
                text = file.read_text()
            except OSError as exc:
                raise CliError(f"cannot read {file}: {exc.strerror}") from None
            docs.extend(yamlio.load_documents(text, str(file)))
    if not docs:
        raise CliError(f"no objects passed to the command (read {', '.join(paths)})")
    return docs


def resource_for(session: Session, obj: dict[str, Any]) -> Resource:
    """The served Resource for an object's apiVersion and kind."""
    api_version = str(obj.get("apiVersion", ""))
    kind = str(obj.get("kind", ""))
    group, _, version = api_version.rpartition("/")
    for refresh in (False, True):
        for resource in session.discovery.resources(refresh=refresh):
            if resource.kind == kind and resource.group == group and resource.version == version:
                return resource
    raise CliError(
        f'resource mapping not found for name: "{(obj.get("metadata") or {}).get("name", "")}" '
        f'namespace: "{(obj.get("metadata") or {}).get("namespace", "")}": no matches for kind "{kind}" in version "{api_version}"'
        "\nensure CRDs are installed first"
    )


def qualified(resource: Resource) -> str:
    """`workloads.hypermesh.io`, or `namespaces` for the core group (as server messages say)."""
    return f"{resource.plural}.{resource.group}" if resource.group else resource.plural


def object_ref(resource: Resource, name: str) -> str:
    """`workload.hypermesh.io/web`: how apply, delete and wait name an object."""
    kind = resource.kind.lower()
    return f"{kind}.{resource.group}/{name}" if resource.group else f"{kind}/{name}"
