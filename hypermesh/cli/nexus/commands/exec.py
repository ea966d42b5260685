"""`nexus exec [-i] [-t] INSTANCE [-c CONTAINER] -- COMMAND [ARG...]`: run a command inside a container.

Without `-i` or `-t` the command runs through a POST to the Instance's `exec` subresource: the
API server relays it to the agent of the Instance's node, which runs it with `runc exec`
without input or terminal and answers once it has ended with its exit code and its output.

With `-i` (pass stdin) or `-t` (a terminal), nexus opens an interactive session the way
`kubectl exec -it` does: a WebSocket upgrade of `GET .../exec` speaking Kubernetes' remote
command protocol (see hypermesh/client/remotecommand.py), relayed by the API server to the
agent. One thread drives everything with `select`: local input goes out on the stdin channel
(its end as a v5 close), output comes back on stdout and stderr, and a terminal's size goes
out at the start and on every SIGWINCH. `-t` takes effect only with `-i` and when stdin is a
terminal (kubectl's rules; otherwise nexus says so and runs without one); the local terminal
is then in raw mode, so keys such as ^C reach the remote command, and it is restored however
nexus ends.

Either way nexus exits with the command's code, after kubectl's "command terminated with exit
code N" line when it is not 0.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import select
import signal
import sys
from collections.abc import Iterator
from types import FrameType
from typing import TYPE_CHECKING

from hypermesh.cli.nexus import errors
from hypermesh.cli.nexus.commands.logs import instance_name
from hypermesh.cli.nexus.session import Session

if TYPE_CHECKING:
    from hypermesh.client.remotecommand import Outcome
    from hypermesh.client.websocket import WebSocket

# How long a command may run when --timeout is not given (the server's default too).
DEFAULT_TIMEOUT = 60.0
NO_TTY = "Unable to use a TTY - input is not a terminal or the right kind of file"
# Input is read only while less than this waits for the network (backpressure).
_INPUT_BACKLOG = 256 * 1024
_READ_SIZE = 32 * 1024


def run(args: argparse.Namespace, session: Session) -> int:
    """Run the command; the exit code is the command's."""
    command = list(args.exec_command or [])
    if not command:
        raise errors.UsageError("exec needs a command: nexus exec NAME -- COMMAND [ARG...]")
    if args.stdin or args.tty:
        return interactive(args, session, command)
    from hypermesh.client.kinds import INSTANCES

    timeout = args.timeout if args.timeout else DEFAULT_TIMEOUT
    # The answer comes only when the command has ended: wait for it that long, and a little.
    session.timeout = max(session.timeout, timeout + 15)
    name = instance_name(session, args.target)
    result = session.api.exec(
        INSTANCES,
        name,
        session.namespace,
        command,
        container=args.container,
        timeout_seconds=max(1, math.ceil(timeout)),
    )
    for data, stream in ((result.stdout, session.stdout), (result.stderr, session.stderr)):
        if not data:
            continue
        buffer = getattr(stream, "buffer", None)
        stream.flush()
        if buffer is not None:
            buffer.write(data)
            buffer.flush()
        else:
            stream.write(data.decode(errors="replace"))
            stream.flush()
    if result.timed_out:
        session.err(f"command timed out after {timeout:g}s and was killed")
    return _finish(session, result.exit_code)


def interactive(args: argparse.Namespace, session: Session, command: list[str]) -> int:
    """Run the command in a WebSocket session joined to this process's stdin/stdout/stderr."""
    from hypermesh.client import remotecommand
    from hypermesh.client.kinds import INSTANCES

    stdin_fd = sys.stdin.fileno()
    tty = bool(args.tty and args.stdin and os.isatty(stdin_fd))
    if args.tty and not tty:
        session.err(NO_TTY if args.stdin else "-t needs -i (there is no input to give a terminal): running without one")
    name = instance_name(session, args.target)
    socket = session.api.exec_session(
        INSTANCES, name, session.namespace, command, container=args.container, stdin=args.stdin, tty=tty
    )
    pump = _Pump(
        socket, stdin_fd if args.stdin else None, session.stdout.fileno(), session.stderr.fileno(), tty=tty,
        v5=socket.subprotocol == remotecommand.V5,
    )  # fmt: skip
    session.stdout.flush()
    try:
        with _ended_by_signals(), _raw(stdin_fd if tty else None), pump.resizes():
            outcome = pump.run()
    finally:
        pump.close()
        socket.shutdown()
    if outcome is None:
        raise errors.CliError("the connection closed before the command's exit status arrived")
    if outcome.exit_code is None:
        raise errors.CliError(outcome.error)
    return _finish(session, outcome.exit_code)


def _finish(session: Session, code: int) -> int:
    if code != 0:
        session.err(f"command terminated with exit code {code}")
    # Exit codes beyond a byte wrap in the shell; keep a failure a failure.
    return code if 0 <= code <= 255 else 1


class _Pump:
    """Moves bytes between the local descriptors and the session until the server closes it."""

    def __init__(self, socket: WebSocket, stdin: int | None, stdout: int, stderr: int, *, tty: bool, v5: bool) -> None:
        self.socket = socket
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self.tty = tty
        self.v5 = v5
        self.outcome: Outcome | None = None
        # SIGWINCH only marks the size as changed and wakes select; the loop sends it.
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_write, False)
        self._resized = tty

    @contextlib.contextmanager
    def resizes(self) -> Iterator[None]:
        """Watch the local terminal's size while the session runs."""
        if not self.tty:
            yield
            return

        def changed(_signum: int, _frame: FrameType | None) -> None:
            self._resized = True
            with contextlib.suppress(OSError):
                os.write(self._wake_write, b"\0")

        previous = signal.signal(signal.SIGWINCH, changed)
        try:
            yield
        finally:
            signal.signal(signal.SIGWINCH, previous)

    def close(self) -> None:
        for fd in (self._wake_read, self._wake_write):
            with contextlib.suppress(OSError):
                os.close(fd)

    def run(self) -> Outcome | None:
        """Until the server closes the WebSocket; returns what the status channel said."""
        from hypermesh.client import remotecommand

        socket = self.socket
        stdin = self.stdin
        while True:
            if self._resized and self.stdin is not None:
                self._resized = False
                columns, lines = os.get_terminal_size(self.stdin)
                if columns > 0 and lines > 0:
                    socket.send(remotecommand.resize_frame(remotecommand.TerminalSize(columns, lines)))
            readable: list[int] = [socket.fileno(), self._wake_read]
            if stdin is not None and socket.queued < _INPUT_BACKLOG:
                readable.append(stdin)
            ready, writable, _ = select.select(readable, [socket.fileno()] if socket.wants_write else [], [], 0 if socket.buffered else None)
            if writable:
                socket.flush()
            if self._wake_read in ready:
                os.read(self._wake_read, 512)
            if stdin is not None and stdin in ready:
                data = os.read(stdin, _READ_SIZE)
                if data:
                    socket.send(remotecommand.frame(remotecommand.STDIN, data))
                else:
                    # End of input: v5 can say so (v4 cannot, and the command keeps waiting).
                    if self.v5:
                        socket.send(remotecommand.close_frame(remotecommand.STDIN))
                    stdin = None
            if socket.fileno() in ready or socket.buffered:
                try:
                    received = socket.read()
                except ConnectionError:
                    return self.outcome
                for item in received:
                    if isinstance(item, bytes):
                        self._deliver(item)
                    else:
                        socket.flush()
                        return self.outcome
            socket.flush()

    def _deliver(self, message: bytes) -> None:
        from hypermesh.client import remotecommand

        channel, data = remotecommand.parse(message)
        if channel == remotecommand.STDOUT:
            _write_all(self.stdout, data)
        elif channel == remotecommand.STDERR:
            _write_all(self.stderr, data)
        elif channel == remotecommand.ERROR:
            self.outcome = remotecommand.parse_status(data)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


@contextlib.contextmanager
def _raw(fd: int | None) -> Iterator[None]:
    """The terminal on `fd` in raw mode (keys go to the remote command as typed), restored on
    the way out whatever happens."""
    if fd is None:
        yield
        return
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


class _Signalled(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def _ended_by_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP end nexus through its `finally` blocks (terminal restored, the
    session closed so the remote command is killed) with 128+N, as the shell would report."""

    def end(signum: int, _frame: FrameType | None) -> None:
        raise _Signalled(signum)

    previous = {sig: signal.signal(sig, end) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    except _Signalled as exc:
        raise SystemExit(128 + exc.signum) from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
