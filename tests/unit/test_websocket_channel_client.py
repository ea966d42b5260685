"""The WebSocket client the API server relays exec sessions with, against a small wsproto
server on a local socket: subprotocol choice, whole messages from fragments, pings answered,
refusals read as HTTP status and body, and a broken connection told apart from a close."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
)

from hypermesh.client.websocket import AsyncWebSocket, Rejected

Script = Callable[[WSConnection, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _request(conn: WSConnection, reader: asyncio.StreamReader) -> Request:
    while True:
        conn.receive_data(await reader.read(65536))
        for event in conn.events():
            if isinstance(event, Request):
                return event


async def _client(script: Script) -> AsyncIterator[AsyncWebSocket]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await script(WSConnection(ConnectionType.SERVER), reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield AsyncWebSocket(reader, writer)
    finally:
        writer.close()
        server.close()
        await server.wait_closed()


async def connect(script: Script) -> tuple[AsyncWebSocket, AsyncIterator[AsyncWebSocket]]:
    clients = _client(script)
    return await clients.__anext__(), clients


async def test_whole_messages_from_fragments_and_pings_answered() -> None:
    pongs: list[bytes] = []

    async def script(conn: WSConnection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await _request(conn, reader)
        assert request.subprotocols == ["v5.channel.k8s.io", "v4.channel.k8s.io"]
        writer.write(conn.send(AcceptConnection(subprotocol="v5.channel.k8s.io")))
        writer.write(conn.send(Ping(payload=b"are you there")))
        writer.write(conn.send(BytesMessage(data=b"\x01hel", message_finished=False)))
        writer.write(conn.send(BytesMessage(data=b"lo", message_finished=True)))
        while not pongs:
            conn.receive_data(await reader.read(65536))
            pongs.extend(bytes(e.payload) for e in conn.events() if isinstance(e, Pong))
        writer.write(conn.send(CloseConnection(code=1000)))
        await writer.drain()
        await reader.read(65536)  # the client's answering close

    client, clients = await connect(script)
    try:
        chosen = await client.handshake(host="agent", target="/exec/a/b/c", subprotocols=["v5.channel.k8s.io", "v4.channel.k8s.io"])
        assert chosen == "v5.channel.k8s.io"
        assert await client.receive() == b"\x01hello"
        assert await client.receive() is None
        assert pongs == [b"are you there"]
    finally:
        await clients.aclose()


async def test_a_refusal_carries_the_status_and_body() -> None:
    async def script(conn: WSConnection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _request(conn, reader)
        writer.write(conn.send(RejectConnection(status_code=400, headers=[(b"content-type", b"application/json")], has_body=True)))
        writer.write(conn.send(RejectData(data=b'{"kind":"Status"', body_finished=False)))
        writer.write(conn.send(RejectData(data=b',"message":"no"}', body_finished=True)))
        await writer.drain()

    client, clients = await connect(script)
    try:
        with pytest.raises(Rejected) as refused:
            await client.handshake(host="agent", target="/exec", subprotocols=["v5.channel.k8s.io"])
        assert (refused.value.status, refused.value.body) == (400, b'{"kind":"Status","message":"no"}')
    finally:
        await clients.aclose()


async def test_a_connection_that_breaks_is_not_a_close() -> None:
    async def script(conn: WSConnection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _request(conn, reader)
        writer.write(conn.send(AcceptConnection(subprotocol="v4.channel.k8s.io")))
        writer.write(conn.send(BytesMessage(data=b"\x01partial")))
        await writer.drain()

    client, clients = await connect(script)
    try:
        await client.handshake(host="agent", target="/exec", subprotocols=["v4.channel.k8s.io"])
        assert await client.receive() == b"\x01partial"
        with pytest.raises(ConnectionResetError, match="without closing"):
            await client.receive()
    finally:
        await clients.aclose()


async def test_sent_messages_arrive_whole() -> None:
    received: list[bytes] = []

    async def script(conn: WSConnection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _request(conn, reader)
        writer.write(conn.send(AcceptConnection(subprotocol="v5.channel.k8s.io")))
        await writer.drain()
        partial = b""
        while len(received) < 2:
            conn.receive_data(await reader.read(65536))
            for event in conn.events():
                if isinstance(event, BytesMessage):
                    partial += event.data
                    if event.message_finished:
                        received.append(partial)
                        partial = b""
        writer.write(conn.send(CloseConnection(code=1000)))
        await writer.drain()

    client, clients = await connect(script)
    try:
        await client.handshake(host="agent", target="/exec", subprotocols=["v5.channel.k8s.io"])
        big = bytes(range(256)) * 4096
        await client.send(b"\x00" + big)
        await client.send(b"\xff\x00")
        assert await client.receive() is None
        assert received == [b"\x00" + big, b"\xff\x00"]
        await client.close()
    finally:
        await clients.aclose()
