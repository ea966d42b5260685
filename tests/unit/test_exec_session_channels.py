"""The agent's exec session (`terminal.serve`) between an ASGI WebSocket and a process stand-in
made of real pipes: input reaches the process and a v5 close ends it, output reaches the client
whole even when the client reads slowly after the command has ended, and the exit status comes
last on channel 3."""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

import orjson

from hypermesh.client import remotecommand as rc
from hypermesh.runtime import terminal
from hypermesh.runtime.execprocess import AsyncFd


class PipeProcess:
    """What `terminal` needs of an ExecProcess, over pipes: the test plays the command."""

    def __init__(self) -> None:
        self.command_stdin, stdin_write = os.pipe()
        stdout_read, self.command_stdout = os.pipe()
        self.master = None
        self.stdin = AsyncFd(stdin_write)
        self.stdout = AsyncFd(stdout_read)
        self.stderr = None
        self.exit_code: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.ended_early = False

    async def wait(self) -> int:
        return await asyncio.shield(self.exit_code)

    async def write_input(self, data: bytes) -> None:
        await self.stdin.write(data)

    async def end_input(self) -> None:
        self.stdin.close()

    def resize(self, size: rc.TerminalSize) -> None:
        raise AssertionError("no terminal here")

    def end_session(self) -> None:
        self.ended_early = True

    async def close(self) -> None:
        for fd in (self.stdin, self.stdout):
            fd.close()
        for fd in (self.command_stdin, self.command_stdout):
            try:
                os.close(fd)
            except OSError:
                pass


class Runtime:
    def __init__(self, process: PipeProcess) -> None:
        self.process = process

    async def exec_session(self, container_id: str, argv: list[str], **_: Any) -> PipeProcess:
        return self.process


class Client:
    """The ASGI side: messages the client sends, and what the session sent it."""

    def __init__(self, *, slow: float = 0.0) -> None:
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.sent: list[dict[str, Any]] = []
        self.slow = slow

    async def receive(self) -> dict[str, Any]:
        return await self.inbox.get()

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "websocket.send" and self.slow:
            await asyncio.sleep(self.slow)
        self.sent.append(message)

    def stream(self, channel: int) -> bytes:
        return b"".join(m["bytes"][1:] for m in self.sent if m["type"] == "websocket.send" and m["bytes"][0] == channel)


async def run_session(process: PipeProcess, client: Client) -> None:
    await terminal.serve(
        client.receive, client.send,
        runtime=Runtime(process),  # type: ignore[arg-type]
        container_id="c", options=terminal.ExecOptions(("cat",), stdin=True), protocol=rc.V5,
        disconnected=asyncio.Event(), stopping=asyncio.Event(), what='container "main"',
    )  # fmt: skip


async def test_input_reaches_the_command_and_a_v5_close_ends_it() -> None:
    process = PipeProcess()
    client = Client()
    session = asyncio.ensure_future(run_session(process, client))
    await client.inbox.put({"type": "websocket.receive", "bytes": rc.frame(rc.STDIN, b"hello\n")})
    await client.inbox.put({"type": "websocket.receive", "bytes": b"\x04not json"})  # a bad resize is ignored
    await client.inbox.put({"type": "websocket.receive", "bytes": rc.close_frame(rc.STDIN)})
    received = await asyncio.to_thread(_read_to_end, process.command_stdin)
    assert received == b"hello\n"
    os.write(process.command_stdout, b"bye\n")
    os.close(process.command_stdout)
    process.exit_code.set_result(0)
    await asyncio.wait_for(session, 10)
    assert client.sent[0] == {"type": "websocket.accept", "subprotocol": rc.V5}
    assert client.stream(rc.STDOUT) == b"bye\n"
    assert orjson.loads(client.stream(rc.ERROR)) == rc.exit_status(0)
    assert client.sent[-1] == {"type": "websocket.close", "code": 1000}
    assert not process.ended_early


async def test_a_slow_client_gets_all_output_of_an_ended_command_then_its_status() -> None:
    process = PipeProcess()
    # Each message takes the client a while: draining takes longer than terminal.DRAIN_GRACE.
    client = Client(slow=terminal.DRAIN_GRACE / 3)
    output = os.urandom(6 * 32 * 1024)
    writer = threading.Thread(target=_write_and_close, args=(process.command_stdout, output))
    writer.start()
    session = asyncio.ensure_future(run_session(process, client))
    # The command ends while most of its output is still on its way.
    await asyncio.sleep(0)
    process.exit_code.set_result(3)
    await asyncio.wait_for(session, 30)
    writer.join()
    assert client.stream(rc.STDOUT) == output
    status = orjson.loads(client.stream(rc.ERROR))
    assert status["reason"] == "NonZeroExitCode" and status["details"]["causes"][0]["message"] == "3"
    assert not process.ended_early


async def test_a_client_that_leaves_ends_the_session() -> None:
    process = PipeProcess()
    client = Client()
    session = asyncio.ensure_future(run_session(process, client))
    await client.inbox.put({"type": "websocket.disconnect", "code": 1006})
    await asyncio.wait_for(session, 10)
    assert process.ended_early
    assert client.stream(rc.ERROR) == b""


def _read_to_end(fd: int) -> bytes:
    data = b""
    while chunk := os.read(fd, 65536):
        data += chunk
    return data


def _write_and_close(fd: int, data: bytes) -> None:
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
