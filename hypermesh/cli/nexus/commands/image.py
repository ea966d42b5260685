"""`nexus image import|build|ls|rm`: the node agents' image stores, through the API server.

Every node keeps its own content-addressed image store and no registry is reachable, so an image
a Workload needs must be on every node its Instances may land on. Without `--node` the commands
therefore act on every Ready node (an import or build goes to each of them in turn) and say per
node what happened; `--node NAME` (repeatable) picks nodes, Ready or not. A failure on one node
does not stop the others; the exit code is 1 if any node failed.

The requests go to the Node's `proxy` subresource (`.../nodes/NAME/proxy/images...`), which the
API server relays to the node's agent (see `hypermesh/runtime/imageapi.py` for the answers).
Listing and removal are ordinary requests through the session's client. Uploads are not: an
archive can be gigabytes, and the client's transports send bodies whole from memory, so this
module streams the file over its own HTTPS connection (TCP, the same TLS settings as the
client) with `Expect: 100-continue`: a node that would refuse the upload (unknown node, bad
tag, no disk) says so before a byte of it moves. `build` first packs the directory into an
unnamed temporary file, so the upload has a known length.

The dispatcher imports this module to build its sub-parsers, so only the standard library and
nexus' light modules are imported at the top; the client is imported when a command runs.
"""

from __future__ import annotations

import argparse
import json
import shlex
import tarfile
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from hypermesh.cli.nexus import errors

if TYPE_CHECKING:
    from hypermesh.cli.nexus.session import Session

# How long an import or build may take once uploaded (the API server waits as long).
OPERATION_TIMEOUT = 30 * 60.0
_CHUNK = 1 << 20
_ACTIONS = ("import", "build", "ls", "rm")


# Parsing


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    """The `image` sub-parser and its actions, each with the global flags of `common`."""
    image = sub.add_parser(
        "image",
        help="Manage the images on the nodes: import, build, ls, rm.",
        description="Manage the images in the nodes' stores (each node has its own; without --node, every Ready node).",
        parents=[common],
    )
    actions = image.add_subparsers(dest="image_command", metavar="ACTION")

    def action(name: str, help_text: str) -> argparse.ArgumentParser:
        parser = actions.add_parser(name, help=help_text, description=help_text, parents=[common])
        parser.add_argument("--node", action="append", dest="nodes", metavar="NODE", help="act on this node (repeatable; default: every Ready node)")
        return parser

    imported = action("import", "Import an OCI image layout or `docker save` tarball (plain or gzip) into the nodes' stores.")
    imported.add_argument("file", metavar="FILE", help="the archive; an image it does not name is filed under the file's name (web.tar -> web:latest)")
    build = action("build", "Build an image of one layer holding a directory's contents (owned by root) on the nodes.")
    build.add_argument("directory", metavar="DIR", help="the directory whose contents become the image's file system")
    build.add_argument("-t", "--tag", required=True, metavar="NAME", help="the name to file the image under (NAME[:TAG], TAG defaults to latest)")
    build.add_argument("--entrypoint", metavar="COMMAND", help='the program containers run: shell words ("/bin/sh -c") or a JSON array')
    build.add_argument("--cmd", metavar="ARGS", help="its default arguments: shell words or a JSON array")
    build.add_argument("-e", "--env", action="append", default=[], metavar="KEY=VALUE", help="an environment variable (repeatable)")
    build.add_argument("-w", "--workdir", default="/", metavar="DIR", help="the working directory (absolute; default /)")
    build.add_argument("-u", "--user", default="", metavar="USER", help="the user containers run as (name or uid[:gid])")
    listing = action("ls", "List the images on the nodes.")
    listing.add_argument("-o", "--output", choices=("json", "yaml", "wide"), help="json|yaml: the ImageList; wide: also layers, entrypoint and cmd")
    listing.add_argument("--no-headers", action="store_true", help="omit the header line of the table")
    removal = action("rm", "Remove image names from the nodes' stores, and what no image needs any more.")
    removal.add_argument("refs", nargs="+", metavar="REF", help="NAME[:TAG], NAME@sha256:..., or a digest (all its names)")


def run(args: argparse.Namespace, session: Session) -> int:
    """Run the `image` action `args.image_command` names."""
    handlers = {"import": import_archive, "build": build, "ls": list_images, "rm": remove}
    handler = handlers.get(getattr(args, "image_command", None) or "")
    if handler is None:
        raise errors.UsageError(f"nexus image needs an action: one of {', '.join(_ACTIONS)}")
    return handler(args, session)


# Actions


def import_archive(args: argparse.Namespace, session: Session) -> int:
    """Upload the archive to each node; print what each imported."""
    path = Path(args.file)
    if not path.is_file():
        raise errors.CliError(f"{args.file}: no such file" if not path.exists() else f"{args.file}: not a regular file")
    failed = False
    for node in target_nodes(args, session):
        try:
            with open(path, "rb") as source:
                answer = upload(session, node, "import", [("filename", path.name)], source)
        except Exception as exc:  # noqa: BLE001 - one node's failure is reported, the others go on
            failed = _report(session, node, exc)
            continue
        for item in answer.get("items") or []:
            session.out(f"node/{node}: imported {_describe(item)}\n")
    return errors.FAILURE if failed else 0


def build(args: argparse.Namespace, session: Session) -> int:
    """Pack the directory once, upload it to each node to build there; print the results."""
    directory = Path(args.directory)
    if not directory.is_dir():
        raise errors.CliError(f"{args.directory}: not a directory")
    query = [("tag", args.tag), ("workdir", args.workdir)]
    query += [("entrypoint", word) for word in _words(args.entrypoint, "--entrypoint")]
    query += [("cmd", word) for word in _words(args.cmd, "--cmd")]
    for entry in args.env:
        if "=" not in entry or entry.startswith("="):
            raise errors.UsageError(f"--env {entry!r}: expected KEY=VALUE")
        query.append(("env", entry))
    if args.user:
        query.append(("user", args.user))
    query.append(("filename", directory.absolute().name + "/"))
    failed = False
    with tempfile.TemporaryFile() as packed:
        _pack(directory, packed)
        for node in target_nodes(args, session):
            packed.seek(0)
            try:
                answer = upload(session, node, "build", query, packed)
            except Exception as exc:  # noqa: BLE001 - one node's failure is reported, the others go on
                failed = _report(session, node, exc)
                continue
            for item in answer.get("items") or []:
                session.out(f"node/{node}: built {_describe(item)}\n")
    return errors.FAILURE if failed else 0


def list_images(args: argparse.Namespace, session: Session) -> int:
    """Every node's images, as one table with a NODE column (or one ImageList)."""
    items: list[dict[str, Any]] = []
    failed = False
    for node in target_nodes(args, session):
        try:
            answer = session.client.request("GET", proxy_path(node)).json()
        except Exception as exc:  # noqa: BLE001 - one node's failure is reported, the others go on
            failed = _report(session, node, exc)
            continue
        items.extend(answer.get("items") or [])
    if args.output in ("json", "yaml"):
        document = {"apiVersion": "hypermesh.io/v1", "kind": "ImageList", "items": items}
        if args.output == "json":
            session.out(json.dumps(document, indent=4, sort_keys=True) + "\n")
        else:
            from hypermesh.cli.nexus import yamlio

            session.out(yamlio.dump_yaml(document))
    elif items or args.no_headers:
        session.out(render_table(items, wide=args.output == "wide", no_headers=args.no_headers))
    elif not failed:
        session.err("No images found.")
    return errors.FAILURE if failed else 0


def remove(args: argparse.Namespace, session: Session) -> int:
    """Remove each REF from each node; a node without it is only noted, unless named."""
    nodes = target_nodes(args, session)
    failed = False
    for ref in args.refs:
        outcomes: list[bool | None] = []  # removed, failed (False), or absent (None)
        for node in nodes:
            try:
                answer = session.client.request("DELETE", proxy_path(node, ref)).json()
            except Exception as exc:  # noqa: BLE001 - one node's failure is reported, the others go on
                # Images differ between nodes: one that lacks it is news, not a failure,
                # unless it was named.
                if getattr(exc, "status", None) == 404 and not args.nodes:
                    session.err(f"node/{node}: {exc}")
                    outcomes.append(None)
                else:
                    outcomes.append(not _report(session, node, exc))
                continue
            outcomes.append(True)
            names = ", ".join(answer.get("names") or [ref])
            freed = int(answer.get("freedBytes") or 0)
            session.out(f"node/{node}: removed {names} ({_short(answer.get('digest'))}, {human_size(freed)} freed)\n")
        if False in outcomes:
            failed = True
        elif True not in outcomes:
            session.err(f"error: no node has an image {ref!r}")
            failed = True
    return errors.FAILURE if failed else 0


# Nodes and paths


def target_nodes(args: argparse.Namespace, session: Session) -> list[str]:
    """The nodes named with --node, else every Ready node (saying which were left out)."""
    if args.nodes:
        return list(dict.fromkeys(args.nodes))
    from hypermesh.client.kinds import NODES

    ready: list[str] = []
    for node in session.api.list(NODES, None).get("items") or []:
        name = str(node["metadata"]["name"])
        condition = next(
            (c for c in (node.get("status") or {}).get("conditions") or [] if c.get("type") == "Ready"), None
        )
        if condition is not None and condition.get("status") == "True":
            ready.append(name)
        else:
            why = (condition or {}).get("reason") or "no Ready condition"
            session.err(f"Warning: skipping node/{name}: it is not Ready ({why})")
    if not ready:
        raise errors.CliError("no Ready nodes to act on (see `nexus get nodes`); name one with --node")
    return sorted(ready)


def proxy_path(node: str, ref: str | None = None, action: str | None = None) -> str:
    """`.../nodes/NODE/proxy/images[/REF | /ACTION]`; a REF's slashes are escaped."""
    path = f"/apis/hypermesh.io/v1/nodes/{quote(node, safe='')}/proxy/images"
    if ref is not None:
        path += "/" + quote(ref, safe=":@")
    if action is not None:
        path += "/" + action
    return path


# Uploading


def upload(
    session: Session, node: str, action: str, query: list[tuple[str, str]], source: IO[bytes]
) -> dict[str, Any]:
    """POST `source` (a seekable file, from its current position) to the node's image
    `action`, streamed, and return the decoded answer; raises the client's ApiError or
    ClientError as its own requests do."""
    import socket

    import orjson

    from hypermesh.client import tcp
    from hypermesh.client.errors import ApiError, ClientError
    from hypermesh.client.transports import Endpoint

    config = session.config
    endpoint = Endpoint.from_config(config)
    translator = tcp.TcpTransport(endpoint, config, timeout=session.timeout)
    target = endpoint.prefix + proxy_path(node, action=action) + "?" + urlencode(query)
    start = source.tell()
    size = source.seek(0, 2) - start
    source.seek(start)
    host = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host
    head = (
        f"POST {target} HTTP/1.1\r\nHost: {host}:{endpoint.port}\r\nUser-Agent: nexus/0.1\r\n"
        f"Accept: application/json\r\nContent-Type: application/octet-stream\r\nContent-Length: {size}\r\n"
        "Expect: 100-continue\r\nConnection: close\r\n\r\n"
    )
    try:
        context = tcp.build_ssl_context(config)
        conn = context.wrap_socket(
            socket.create_connection((endpoint.host, endpoint.port), timeout=session.timeout),
            server_hostname=endpoint.server_name,
        )
    except OSError as exc:
        raise translator.translate(exc) from None
    with conn, conn.makefile("rb") as reader:
        try:
            conn.sendall(head.encode("latin-1"))
            status, headers = _read_head(reader)
            if status == 100:
                _send_file(conn, source, size)
                # Now the node unpacks and verifies: that takes as long as it takes.
                conn.settimeout(OPERATION_TIMEOUT + session.timeout)
                status, headers = _read_head(reader)
            body = _read_body(reader, headers)
        except OSError as exc:
            raise translator.translate(exc) from None
        except ValueError as exc:
            raise ClientError(f"{config.server} answered the upload with something that is not HTTP: {exc}") from None
    if status >= 400:
        raise ApiError.from_response(status, body, url=config.server + target)
    value = orjson.loads(body)
    if not isinstance(value, dict):
        raise ClientError(f"{config.server}{target} answered with JSON that is not an object")
    return value


def _send_file(conn: Any, source: IO[bytes], size: int) -> None:
    sent = 0
    while sent < size:
        chunk = source.read(min(_CHUNK, size - sent))
        if not chunk:
            raise OSError(f"the file shrank while it was sent ({sent} of {size} bytes)")
        try:
            conn.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            # The server answered early (a refusal) and closed; its answer is read next.
            return
        sent += len(chunk)


def _read_head(reader: IO[bytes]) -> tuple[int, dict[str, str]]:
    """Status and headers of the next final answer, or of a `100 Continue`."""
    while True:
        line = reader.readline(65536)
        if not line:
            raise ConnectionResetError("the server closed the connection without answering")
        parts = line.decode("latin-1").split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            raise ValueError(f"bad status line {line[:60]!r}")
        headers: dict[str, str] = {}
        while (line := reader.readline(65536)) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        status = int(parts[1])
        # Other interim answers (102, 103) carry nothing for us.
        if status == 100 or status >= 200:
            return status, headers


def _read_body(reader: IO[bytes], headers: dict[str, str]) -> bytes:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        parts: list[bytes] = []
        while size := int(reader.readline(1024).split(b";", 1)[0].strip() or b"0", 16):
            parts.append(reader.read(size))
            reader.readline(1024)
        return b"".join(parts)
    if "content-length" in headers:
        return reader.read(int(headers["content-length"]))
    return reader.read()


def _pack(directory: Path, out: IO[bytes]) -> None:
    """A tar of the directory's contents (not the directory itself), names sorted."""
    try:
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for child in sorted(directory.iterdir()):
                tar.add(child, arcname=child.name)
    except OSError as exc:
        raise errors.CliError(f"cannot pack {directory}: {exc}") from None
    out.flush()


def _words(value: str | None, flag: str) -> list[str]:
    """A command given as shell words or as a JSON array of strings."""
    if not value:
        return []
    if value.lstrip().startswith("["):
        try:
            words = json.loads(value)
        except json.JSONDecodeError as exc:
            raise errors.UsageError(f"{flag}: not a JSON array of strings ({exc})") from None
        if not isinstance(words, list) or not all(isinstance(word, str) for word in words):
            raise errors.UsageError(f"{flag}: not a JSON array of strings")
        return words
    try:
        return shlex.split(value)
    except ValueError as exc:
        raise errors.UsageError(f"{flag}: {exc}") from None


# Printing


def render_table(items: Iterable[dict[str, Any]], *, wide: bool, no_headers: bool = False) -> str:
    """The images as `nexus get`-style rows: NODE NAME DIGEST SIZE CREATED (and, wide, more)."""
    from hypermesh import ages
    from hypermesh.cli.nexus import tables

    header = ["NODE", "NAME", "DIGEST", "SIZE", "CREATED"]
    if wide:
        header += ["LAYERS", "ENTRYPOINT", "CMD"]
    rows = []
    for item in items:
        row = [
            str(item.get("node", "")),
            str(item.get("name", "")),
            _short(item.get("digest")),
            human_size(int(item.get("sizeBytes") or 0)),
            ages.age(item["created"]) if item.get("created") else "<none>",
        ]
        if wide:
            config = item.get("config") or {}
            row += [
                str(len(item.get("layers") or [])),
                shlex.join(config.get("entrypoint") or []) or "<none>",
                shlex.join(config.get("cmd") or []) or "<none>",
            ]
        rows.append(row)
    return tables.render_rows(header, rows, no_headers=no_headers)


def human_size(size: int) -> str:
    """Bytes as Docker prints image sizes: decimal units, three significant digits."""
    if size < 1000:
        return f"{size}B"
    value = size / 1000
    for unit in ("kB", "MB", "GB"):
        # 999.5 would print as 1e+03 with three digits: that is the next unit's 1.
        if value < 999.5:
            return f"{value:.3g}{unit}"
        value /= 1000
    return f"{value:.3g}TB"


def _short(digest: object) -> str:
    """`sha256:` and the first 12 hex digits, as `docker images` shows an image id."""
    text = str(digest or "")
    return text[:19] if text.startswith("sha256:") else text


def _describe(item: dict[str, Any]) -> str:
    return f"{item.get('name')} ({_short(item.get('digest'))}, {human_size(int(item.get('sizeBytes') or 0))})"


def _report(session: Session, node: str, exc: Exception) -> bool:
    """Print one node's failure the way nexus prints errors; returns True (a failure)."""
    text, _ = errors.describe(exc)
    session.err(f"node/{node}: {text}")
    return True
