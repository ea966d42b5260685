"""Interactive exec on the agent: one WebSocket session joined to one command in a container.

The API server relays `GET .../instances/NAME/exec` WebSocket upgrades here (the agent's
`/exec/NAMESPACE/NAME/CONTAINER`); the protocol is Kubernetes' remote command protocol (see
`hypermesh.client.remotecommand`). A session:

1. answers the upgrade with v5 or v4, then starts the command (`runc exec`, see
   `OciRuntime.exec_session`): with `tty=true` in a new terminal (stderr is the terminal too,
   as kubelet merges it), otherwise with pipes for the streams asked for;
2. copies the command's output to channels 1 and 2, and channel 0 to its input; a resize
   message sets the terminal's size; a v5 close of channel 0 ends the input;
3. when the command ends, sends what it wrote last, then its exit status on channel 3, and
   closes the WebSocket normally;
4. when the client goes away first (or the agent stops), kills the command and every process
   of its session, so an abandoned `exec -it` never leaves a shell behind.

Backpressure: output is read only when the previous message has gone out, and a message is
received only when the previous input has been written, so a slow client or a command that
does not read its input holds at most one message per direction here. The disconnect event the
listener puts in the scope is watched apart from that, because a session stalled on input
would otherwise not see the client leave.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Collection, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

from hypermesh.client import remotecommand
from hypermesh.runtime import runc
from hypermesh.runtime.execprocess import AsyncFd, ExecProcess

log = logging.getLogger(__name__)

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# After the command has ended, output still on its way (a child holding the pipe, the terminal
# layer's buffer) gets this long to arrive before the status goes out.
DRAIN_GRACE = 1.0
_TRUE = ("true", "1")


class SessionError(ValueError):
    """A request that cannot become a session; the text says what to change."""


@dataclass(frozen=True)
class ExecOptions:
    """What an interactive exec asks for (Kubernetes' PodExecOptions)."""

    command: tuple[str, ...]
    stdin: bool = False
    stdout: bool = True
    stderr: bool = True
    tty: bool = False


def exec_options(query: list[tuple[str, str]]) -> ExecOptions:
    """Parse the query of a WebSocket exec: `command` once per argument, and the stream flags
    with Kubernetes' defaults (stdout and stderr on, stdin and tty off)."""
    command = tuple(value for key, value in query if key == "command")
    if not command:
        raise SessionError("exec needs a command: command=ARG, once per argument")
    flags = {key: value.lower() for key, value in query}

    def flag(name: str, default: bool) -> bool:
        value = flags.get(name)
        if value is None or value == "":
            return default
        if value not in ("true", "1", "false", "0"):
            raise SessionError(f"{name}={value!r} is not a boolean: use true or false")
        return value in _TRUE

    tty = flag("tty", False)
    stdin, stdout = flag("stdin", False), flag("stdout", True)
    # A terminal has one output: what would be stderr is in stdout (kubelet drops it too).
    stderr = flag("stderr", True) and not tty
    if not (stdin or stdout or stderr):
        raise SessionError("you must specify at least 1 of stdin, stdout, stderr")
    return ExecOptions(command, stdin, stdout, stderr, tty)


def negotiate(offered: list[str]) -> str:
    """The subprotocol for a client offering `offered`, or SessionError naming ours."""
    chosen = remotecommand.negotiate(offered)
    if chosen is None:
        raise SessionError(
            f"none of the WebSocket subprotocols offered ({', '.join(offered) or 'none'}) is supported: "
            f"offer {' or '.join(remotecommand.SUBPROTOCOLS)}"
        )
    return chosen


async def serve(
    receive: Receive,
    send: Send,
    *,
    runtime: runc.OciRuntime,
    container_id: str,
    options: ExecOptions,
    protocol: str,
    disconnected: asyncio.Event,
    stopping: asyncio.Event,
    what: str,
) -> None:
    """Accept the upgrade with `protocol` and run the session to its end (`what` names the
    container in messages)."""
    await send({"type": "websocket.accept", "subprotocol": protocol})
    session = _Session(send, protocol)
    try:
        process = await runtime.exec_session(
            container_id, list(options.command),
            tty=options.tty, stdin=options.stdin, stdout=options.stdout, stderr=options.stderr,
        )  # fmt: skip
    except runc.CommandError as exc:
        detail = exc.stderr.strip() or str(exc)
        await session.finish(remotecommand.failure_status(f"cannot run {options.command[0]!r} in {what}: {detail}"))
        return
    try:
        await session.run(process, receive, disconnected, stopping)
    finally:
        await process.close()


class _Session:
    """The copying between one WebSocket and one process."""

    def __init__(self, send: Send, protocol: str) -> None:
        self._send = send
        self._protocol = protocol
        self._lock = asyncio.Lock()
        # For the drain after the command's end: messages waiting for the client, and when
        # output was last read.
        self._sending = 0
        self._last_read = 0.0

    async def _message(self, data: bytes) -> None:
        self._sending += 1
        try:
            async with self._lock:
                await self._send({"type": "websocket.send", "bytes": data})
        finally:
            self._sending -= 1

    async def finish(self, status: dict[str, Any]) -> None:
        """Send the status and close (quietly if the client has gone meanwhile)."""
        with contextlib.suppress(Exception):
            await self._message(remotecommand.status_frame(status))
            await self._send({"type": "websocket.close", "code": 1000})

    async def run(self, process: ExecProcess, receive: Receive, disconnected: asyncio.Event, stopping: asyncio.Event) -> None:
        streams = [(process.master or process.stdout, remotecommand.STDOUT), (process.stderr, remotecommand.STDERR)]
        outputs = [asyncio.ensure_future(self._copy_output(fd, channel)) for fd, channel in streams if fd is not None]
        exited = asyncio.ensure_future(process.wait())
        inbound = asyncio.ensure_future(self._copy_input(process, receive))
        gone = asyncio.ensure_future(disconnected.wait())
        stop = asyncio.ensure_future(stopping.wait())
        # The ways a session ends early: the client leaves, or the agent stops.
        ends = (inbound, gone, stop)
        try:
            watched = {exited, *ends, *outputs}
            while True:
                done, _ = await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
                # An output that reached its end is no news; one that failed means the client
                # cannot be written to any more.
                if exited in done or any(task in done for task in ends) or _failed(done, outputs):
                    break
                watched -= done
            if exited in done and not any(task in done for task in ends) and not _failed(done, outputs):
                if await self._drain(outputs, ends):
                    await self.finish(remotecommand.exit_status(exited.result()))
                    return
            # The client went away (or the agent stops): nobody will see this command again.
            process.end_session()
            if stop.done():
                await self.finish(remotecommand.failure_status("the node agent is stopping", reason="ServiceUnavailable", code=503))
        finally:
            for task in (exited, *ends, *outputs):
                task.cancel()
            await asyncio.gather(inbound, *outputs, return_exceptions=True)

    async def _drain(self, outputs: Sequence[asyncio.Future[Any]], ends: Sequence[asyncio.Future[Any]]) -> bool:
        """Let the ended command's last output go out; False if the client left meanwhile.

        Output is done at its end of file, or, when a child of the command still holds the pipe
        or terminal open, once nothing came for DRAIN_GRACE while nothing waited for the client:
        a slow client still gets everything.
        """
        loop = asyncio.get_running_loop()
        while pending := [task for task in outputs if not task.done()]:
            done, _ = await asyncio.wait([*pending, *ends], timeout=DRAIN_GRACE, return_when=asyncio.FIRST_COMPLETED)
            if any(task in done for task in ends) or _failed(done, outputs):
                return False
            if not done and not self._sending and loop.time() - self._last_read >= DRAIN_GRACE:
                return True
        return True

    async def _copy_output(self, fd: AsyncFd, channel: int) -> None:
        loop = asyncio.get_running_loop()
        while data := await fd.read():
            self._last_read = loop.time()
            await self._message(remotecommand.frame(channel, data))

    async def _copy_input(self, process: ExecProcess, receive: Receive) -> None:
        """Client messages until the client leaves: input, resizes, the v5 close of stdin."""
        input_open = True
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            payload = message.get("bytes")
            if payload is None:
                payload = message.get("text") or ""
            try:
                channel, data = remotecommand.parse(payload)
                if channel == remotecommand.STDIN and input_open and data:
                    await process.write_input(data)
                elif channel == remotecommand.RESIZE:
                    process.resize(remotecommand.parse_resize(data))
                elif channel == remotecommand.CLOSE and self._protocol == remotecommand.V5:
                    if remotecommand.closed_channel(data) == remotecommand.STDIN and input_open:
                        input_open = False
                        await process.end_input()
            except remotecommand.FramingError as exc:
                # Kubernetes ignores what it cannot use; a log line helps whoever wrote the client.
                log.debug("ignoring a malformed exec message: %s", exc)
            except OSError:
                # The command closed its input, or ended (a terminal answers EIO then): later
                # input has nowhere to go.
                input_open = False


def _failed(done: Collection[asyncio.Future[Any]], outputs: Collection[asyncio.Future[Any]]) -> bool:
    """Whether an output task among `done` failed (the client cannot be written to)."""
    return any(task in outputs and not task.cancelled() and task.exception() is not None for task in done)
