"""Nodes' `proxy` subresource: `.../nodes/NAME/proxy/images...` relays to that node's agent.

Images live in each node's own store and no registry exists, so `nexus image` reaches a node's
store the way `nexus logs` reaches its containers: the API server takes the request
(authenticated like any other), finds the endpoint the Node publishes, and relays the request
there and the answer back (kube-apiserver's `nodes/proxy` does the same for kubelet). The
agent's side of the contract, and the shapes of its answers, are in
`hypermesh/runtime/imageapi.py`:

- `GET .../nodes/NAME/proxy/images` lists the node's images; `GET .../proxy/images/REF` shows one.
- `POST .../nodes/NAME/proxy/images/import?filename=F` imports the archive sent as the body.
- `POST .../nodes/NAME/proxy/images/build?tag=T&...` builds the image of the tar sent as the body.
- `DELETE .../nodes/NAME/proxy/images/REF` removes a name (REF may be percent-encoded).

Only paths under `images` are relayed: a general node proxy would hand every API user whatever
else the agent serves, and nothing needs one yet, so anything else is a 404 here.

Request bodies (archives of up to gigabytes) are streamed from the client to the agent as they
arrive, never held here, so they bypass the `MAX_BODY` cap meant for objects; the agent caps
uploads itself. The agent is asked with `Expect: 100-continue` and the client's body is read
only once it agrees, so a refusal (a bad tag, an upload too big, no disk, an unknown node)
reaches a client that sent `Expect: 100-continue` too (`nexus image` does) before any of the
body has moved. A refusal while the body flows (the disk filled) is relayed at once. Once the
body is through, the answer waits as long as the import takes (up to `OPERATION_TIMEOUT`).

The connection and its trust are `hypermesh.api.proxy`'s: the agent's certificate must hash to
what its Node publishes, and this server presents its `system:apiserver` client certificate.
Authorisation is the API server's usual one, which until RBAC (issue 6) lets every
authenticated user do everything; with RBAC, `nodes/proxy` should need its own grant, as in
Kubernetes, since importing an image is root on that node's disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from urllib.parse import parse_qsl, quote, urlencode

from hypermesh.api import errors, proxy
from hypermesh.api.http import Request, Send, send_bytes
from hypermesh.api.proxy import AgentAddress, AgentProxy
from hypermesh.resources.registry import ResourceType

# The only agent paths relayed.
RELAYED_ROOT = "images"
# How long an import, build or removal may take once the request is through.
OPERATION_TIMEOUT = 30 * 60.0
# How long a refusal sent while the body was still flowing may take to arrive.
_EARLY_ANSWER_WAIT = 5.0
_METHODS = ("GET", "POST", "DELETE")


def proxied(rtype: ResourceType) -> bool:
    """Only Nodes have an agent to relay to."""
    return rtype.group == "hypermesh.io" and rtype.kind == "Node"


async def serve(agents: AgentProxy, req: Request, send: Send, rtype: ResourceType, node: str, path: str) -> None:
    """Relay one request for `.../nodes/{node}/proxy/{path}` to the node's agent."""
    if path.split("/", 1)[0] != RELAYED_ROOT:
        raise errors.ApiError(
            404, "NotFound",
            f'the node proxy relays only {RELAYED_ROOT}/... to the node agent, not "/{path}" '
            f"(use .../nodes/{node}/proxy/{RELAYED_ROOT})",
        )  # fmt: skip
    if req.method not in _METHODS:
        raise errors.method_not_allowed(
            f"images are read with GET, imported or built with POST and removed with DELETE, not {req.method}"
        )
    address = proxy.agent_address(await agents.storage.get_required(rtype, None, node))
    raw_query = req.extra.get("query_string", b"").decode("latin-1")
    target = "/" + quote(path, safe="/:@")
    if raw_query:
        target += "?" + urlencode(parse_qsl(raw_query, keep_blank_values=True))
    if req.method == "POST":
        with contextlib.suppress(_ClientGone):
            # A client that went away mid-upload gets no answer; the agent drops the upload.
            await _relay_upload(agents, req, send, address, target)
        return
    timeout = proxy.HEAD_TIMEOUT if req.method == "GET" else OPERATION_TIMEOUT
    response = await agents._open(address, req.method, target, timeout)
    await _relay_answer(send, address, response, timeout)


async def _relay_upload(agents: AgentProxy, req: Request, send: Send, address: AgentAddress, target: str) -> None:
    """POST with the client's body streamed through; the answer relayed when it comes.

    The agent is asked with `Expect: 100-continue`, so it can refuse (a bad tag, too big, no
    disk) before any of the body moves; only once it says "continue" is the client's body read,
    which is when the client's own `100 Continue` goes out (uvicorn sends it on the first read).
    """
    length = req.headers.get("content-length")
    if length is not None and not length.strip().isdigit():
        raise errors.bad_request(f"Content-Length {length!r} is not a byte count")
    framing = f"Content-Length: {int(length)}" if length is not None else "Transfer-Encoding: chunked"
    reader, writer = await _connect(agents, address)
    head = (
        f"POST {target} HTTP/1.1\r\nHost: {address.authority}\r\nUser-Agent: hypermesh-apiserver\r\n"
        f"Accept: application/json\r\nContent-Type: application/octet-stream\r\n{framing}\r\n"
        "Expect: 100-continue\r\nConnection: close\r\n\r\n"
    )
    try:
        writer.write(head.encode("latin-1"))
        await writer.drain()
        status, headers = await _answer_head(reader, address, proxy.HEAD_TIMEOUT)
        if status == 100:
            status, headers = await _stream_body(agents, req, reader, writer, address, chunked=length is None)
    except BaseException:
        writer.close()
        raise
    await _relay_answer(send, address, proxy._AgentResponse(status, headers, reader, writer), OPERATION_TIMEOUT)


async def _stream_body(
    agents: AgentProxy,
    req: Request,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    address: AgentAddress,
    *,
    chunked: bool,
) -> tuple[int, dict[str, str]]:
    """Copy the body to the agent while listening for its answer, which may come early (the
    upload passed the cap, the disk filled); returns the head of the final answer."""
    answer = asyncio.ensure_future(_final_head(reader))
    pump = asyncio.ensure_future(_pump(req, writer, chunked=chunked))
    stopping = asyncio.ensure_future(agents.shutdown.wait())
    try:
        done, _ = await asyncio.wait({answer, pump, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if answer not in done and pump in done:
            failure = pump.exception()
            if isinstance(failure, _ClientGone):
                raise failure
            # Through: the import itself takes its time. Broken off: the agent has probably
            # answered already and closed; its answer is what the client should see.
            wait = OPERATION_TIMEOUT if failure is None else _EARLY_ANSWER_WAIT
            done, _ = await asyncio.wait({answer, stopping}, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            if not done:
                why = f"the upload broke off ({failure})" if failure else f"no answer within {wait:.0f}s"
                raise proxy._unreachable(address, why)
        if answer not in done:
            raise errors.ApiError(503, "ServiceUnavailable", "the API server is shutting down")
    finally:
        for task in (answer, pump, stopping):
            if not task.done():
                task.cancel()
    try:
        return answer.result()
    except (OSError, ValueError, asyncio.IncompleteReadError) as exc:
        raise proxy._unreachable(address, f"no answer ({exc.__class__.__name__}: {exc})") from None


async def _answer_head(reader: asyncio.StreamReader, address: AgentAddress, timeout: float) -> tuple[int, dict[str, str]]:
    try:
        return await asyncio.wait_for(proxy._read_head(reader), timeout)
    except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError) as exc:
        raise proxy._unreachable(address, f"no answer ({exc.__class__.__name__}: {exc})") from None


async def _final_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    """The head of the final answer, past any further interim (1xx) ones."""
    while True:
        status, headers = await proxy._read_head(reader)
        if status >= 200:
            return status, headers


class _ClientGone(Exception):
    """The client disconnected before its body was through."""


async def _pump(req: Request, writer: asyncio.StreamWriter, *, chunked: bool) -> None:
    """Copy the request body to the agent as it arrives (with chunked framing if asked)."""
    while True:
        message = await req.receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone()
        body: bytes = message.get("body", b"")
        if body:
            writer.write(f"{len(body):x}\r\n".encode() + body + b"\r\n" if chunked else body)
            # Back-pressure: the client is read no faster than the agent takes the bytes.
            await writer.drain()
        if not message.get("more_body", False):
            break
    if chunked:
        writer.write(b"0\r\n\r\n")
        await writer.drain()


async def _connect(agents: AgentProxy, address: AgentAddress) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TLS connection to the agent whose certificate is the one its Node publishes."""
    credentials = await agents._client_credentials()
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(address.host, address.port, ssl=credentials.context),
            proxy.CONNECT_TIMEOUT,
        )
    except (OSError, TimeoutError, ssl.SSLError) as exc:
        raise proxy._unreachable(address, str(exc) or exc.__class__.__name__) from None
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        proxy.check_pin(ssl_object.getpeercert(binary_form=True) if ssl_object else None, address.certificate_hash)
    except proxy.PinMismatch as exc:
        writer.close()
        raise proxy._unreachable(address, f"refusing the connection: {exc}") from None
    return reader, writer


async def _relay_answer(send: Send, address: AgentAddress, response: proxy._AgentResponse, timeout: float) -> None:
    """The agent's whole answer (a list, a removal or a Status: small), passed on as it is."""
    try:
        body = await asyncio.wait_for(response.read(proxy.MAX_ANSWER), timeout)
    except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
        raise proxy._unreachable(address, f"the answer did not arrive whole ({exc.__class__.__name__})") from None
    finally:
        with contextlib.suppress(Exception):
            response.close()
    await send_bytes(send, response.status, body, content_type=response.content_type)
