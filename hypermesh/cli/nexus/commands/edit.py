"""`nexus edit KIND NAME`: change a live object in $EDITOR, with a conflict check.

The object is fetched, written as YAML (without managedFields and status, which an editor
should not touch) to a private temporary file, and opened in `$KUBE_EDITOR`, `$EDITOR` or `vi`.
An unchanged file cancels the edit. A changed one is sent as a PUT that carries the
resourceVersion the edit started from, so a change made by someone else in the meantime is a
409 Conflict instead of being silently overwritten; invalid YAML or a refused object keeps the
file and says where it is, so the work is not lost.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import tempfile
from typing import Any

from hypermesh.cli.nexus import errors, manifests, yamlio
from hypermesh.cli.nexus.errors import CliError
from hypermesh.cli.nexus.session import Session


def _editor() -> list[str]:
    command = os.environ.get("KUBE_EDITOR") or os.environ.get("EDITOR") or "vi"
    return shlex.split(command)


def _editable(obj: dict[str, Any], *, keep_status: bool) -> dict[str, Any]:
    """What the editor shows: no managedFields, and no status when a status subresource owns
    it (a PUT to the object would ignore status changes anyway)."""
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k != "managedFields"}
    hidden = ("metadata",) if keep_status else ("metadata", "status")
    return {**{k: v for k, v in obj.items() if k not in hidden}, "metadata": meta}


def run(args: argparse.Namespace, session: Session) -> int:
    """Edit one object; 0 when saved or cancelled, 1 on a refused change."""
    resource = session.resolve(args.kind)
    namespace = session.namespace_for(resource)
    live = session.api.get(resource, args.name, namespace)
    original = yamlio.dump_yaml(_editable(live, keep_status="status" not in resource.subresources))
    header = f"# Edit {manifests.object_ref(resource, args.name)}; save and quit to apply, or quit unchanged to cancel.\n"
    fd, path = tempfile.mkstemp(prefix=f"nexus-edit-{args.name}-", suffix=".yaml")
    with os.fdopen(fd, "w") as stream:
        stream.write(header + original)
    done = subprocess.run([*_editor(), path], check=False)
    if done.returncode != 0:
        raise CliError(f"the editor exited with code {done.returncode}; your edits are in {path}")
    with open(path) as stream:
        edited_text = stream.read()
    if edited_text.replace(header, "", 1) == original:
        os.unlink(path)
        session.out("Edit cancelled, no changes made.\n")
        return 0
    try:
        documents = yamlio.load_documents(edited_text, path)
    except yamlio.ManifestError as exc:
        raise CliError(f"{exc}; your edits are in {path}") from None
    if len(documents) != 1:
        raise CliError(f"the edited file must hold exactly one object; your edits are in {path}")
    edited = documents[0].obj
    meta = edited.setdefault("metadata", {})
    # The PUT is conditional on the version the edit started from.
    meta["resourceVersion"] = live["metadata"]["resourceVersion"]
    if "managedFields" in live["metadata"]:
        meta["managedFields"] = live["metadata"]["managedFields"]
    try:
        session.api.replace(resource, edited, namespace)
    except Exception as exc:
        if getattr(exc, "status", None) is None:
            raise
        # Refused by the server (a conflict, an invalid field): say why and keep the edits.
        session.err(errors.server_error_line(exc))
        session.err(f"your edits are in {path}")
        return errors.FAILURE
    os.unlink(path)
    session.out(f"{manifests.object_ref(resource, args.name)} edited\n")
    return 0
