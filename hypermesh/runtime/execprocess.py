"""An interactive exec's process on the agent's side: its file descriptors, its end, its kill.

`runc.OciRuntime.exec_session` builds the runtime's command line; this module runs it under
`execmonitor` (the subreaper that learns the exit status of a detached command) and hands back
an `ExecProcess`: the terminal's master end (received from the runtime over a unix socket with
SCM_RIGHTS) or pipes for stdin, stdout and stderr, each a non-blocking descriptor the event loop
reads and writes, so a slow reader or a command that does not read its input stalls only its
own session.

Processes are started with the standard library's Popen from the event loop's thread: uvloop's
subprocess support leaves the agent's descriptors open in children, and the monitor's parent
death signal is tied to the thread that forked it, which must live as long as the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import termios
from collections.abc import Callable
from pathlib import Path

from hypermesh.client.remotecommand import TerminalSize

# How long the runtime may take to start the command.
START_TIMEOUT = 60.0
# How long a monitor that was told to end the session may take to report.
KILL_WAIT = 10.0
_MONITOR = Path(__file__).with_name("execmonitor.py")
_READ_SIZE = 32 * 1024


class StartFailed(Exception):
    """The runtime could not start the command (its exit code; its log says why)."""

    def __init__(self, code: int, detail: str = "") -> None:
        super().__init__(detail or f"the runtime exited {code}")
        self.code = code
        self.detail = detail


class AsyncFd:
    """A non-blocking descriptor read and written through the event loop (which a pty master
    or a pipe, unlike a socket, needs done by hand)."""

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self.fd = fd

    async def read(self, size: int = _READ_SIZE) -> bytes:
        """Up to `size` bytes once some are there; b"" at end of file. A pty master reports
        the end (every slave closed) as EIO."""
        while True:
            try:
                return os.read(self.fd, size)
            except BlockingIOError:
                await self._ready(asyncio.get_running_loop().add_reader, asyncio.get_running_loop().remove_reader)
            except OSError as exc:
                if exc.errno == errno.EIO:
                    return b""
                raise

    async def write(self, data: bytes) -> None:
        """All of `data`, waiting while the other end is not reading."""
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self.fd, view) :]
            except BlockingIOError:
                await self._ready(asyncio.get_running_loop().add_writer, asyncio.get_running_loop().remove_writer)

    async def _ready(self, add: Callable[..., None], remove: Callable[[int], object]) -> None:
        waiter = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not waiter.done():
                waiter.set_result(None)

        add(self.fd, wake)
        try:
            await waiter
        finally:
            remove(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


class _Reports:
    """The monitor's lines of JSON, one at a time."""

    def __init__(self, fd: AsyncFd) -> None:
        self.fd = fd
        self._data = b""

    async def next(self) -> dict[str, int] | None:
        """The next report; None once the monitor has exited (or wrote nonsense)."""
        while b"\n" not in self._data:
            chunk = await self.fd.read(4096)
            if not chunk:
                return None
            self._data += chunk
        line, _, self._data = self._data.partition(b"\n")
        try:
            value = json.loads(line)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None


class ExecProcess:
    """A started command: a terminal (`master`) or pipes, its host pid, and its monitor."""

    def __init__(
        self,
        monitor: subprocess.Popen[bytes],
        reports: _Reports,
        pid: int,
        *,
        master: AsyncFd | None = None,
        stdin: AsyncFd | None = None,
        stdout: AsyncFd | None = None,
        stderr: AsyncFd | None = None,
    ) -> None:
        self.pid = pid
        self.master = master
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self._monitor = monitor
        self._reports = reports
        self._exit: asyncio.Future[int] | None = None

    @property
    def tty(self) -> bool:
        return self.master is not None

    async def wait(self) -> int:
        """The command's exit code (128+N after signal N), once it has ended."""
        if self._exit is None:
            self._exit = asyncio.ensure_future(self._read_exit())
        return await asyncio.shield(self._exit)

    async def _read_exit(self) -> int:
        while (report := await self._reports.next()) is not None:
            if "exit" in report:
                return int(report["exit"])
        # The monitor died without reporting (killed from outside): nothing more is known.
        return 255

    def resize(self, size: TerminalSize) -> None:
        """Tell the terminal its new size; the kernel sends the command SIGWINCH."""
        if self.master is not None and self.master.fd >= 0:
            fcntl.ioctl(self.master.fd, termios.TIOCSWINSZ, struct.pack("HHHH", size.height, size.width, 0, 0))

    async def write_input(self, data: bytes) -> None:
        """Bytes for the command's input (the terminal, or its stdin pipe)."""
        target = self.master if self.master is not None else self.stdin
        if target is not None and target.fd >= 0:
            await target.write(data)

    async def end_input(self) -> None:
        """No more input: close the stdin pipe, or type end-of-file (^D) at the terminal, which
        a program reading it in canonical mode takes as the end."""
        if self.master is not None:
            await self.write_input(b"\x04")
        elif self.stdin is not None:
            self.stdin.close()

    def end_session(self) -> None:
        """Kill the command and every process of its session (through the monitor)."""
        if self._monitor.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._monitor.send_signal(signal.SIGHUP)

    async def close(self) -> None:
        """End the session if it still runs, wait for the monitor, release every descriptor."""
        if self._monitor.poll() is None:
            self.end_session()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wait(), KILL_WAIT)
        for handle in (self.master, self.stdin, self.stdout, self.stderr, self._reports.fd):
            if handle is not None:
                handle.close()
        await _reap(self._monitor)


async def start(
    command: Callable[[Path | None], list[str]],
    *,
    tty: bool,
    stdin: bool,
    stdout: bool,
    stderr: bool,
    env: dict[str, str],
) -> ExecProcess:
    """Run `command(console_socket)` under the monitor (with `env`); returns once the command runs.

    With `tty` the runtime is given a console socket and sends the terminal's master end there;
    otherwise the requested streams are pipes and the others /dev/null. Raises StartFailed when
    the runtime fails (the caller reads its log for why).
    """
    console_dir = Path(tempfile.mkdtemp(prefix="hm-console-")) if tty else None
    console = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) if console_dir else None
    # Ours: parents' ends of the pipes; theirs: what the monitor (and the command) get.
    ours: dict[str, int] = {}
    theirs: list[int] = []

    def pipe(name: str, *, inbound: bool) -> int:
        read_end, write_end = os.pipe()
        ours[name], given = (write_end, read_end) if inbound else (read_end, write_end)
        theirs.append(given)
        return given

    devnull = os.open(os.devnull, os.O_RDWR)
    theirs.append(devnull)
    try:
        if console is not None and console_dir is not None:
            # The directory is private (0700), so no one else can hand us a terminal.
            console.bind(str(console_dir / "console"))
            console.listen(1)
            console.setblocking(False)
        stdio = (
            pipe("stdin", inbound=True) if stdin and not tty else devnull,
            pipe("stdout", inbound=False) if stdout and not tty else devnull,
            pipe("stderr", inbound=False) if stderr and not tty else devnull,
        )
        status_fd = pipe("status", inbound=False)
        argv = command(console_dir / "console" if console_dir else None)
        monitor = subprocess.Popen(
            [sys.executable, "-I", "-S", str(_MONITOR), str(status_fd), "--", *argv],
            stdin=stdio[0], stdout=stdio[1], stderr=stdio[2], pass_fds=(status_fd,),
            close_fds=True, start_new_session=True, env=env,
        )  # fmt: skip
    except BaseException:
        for fd in (*ours.values(), *theirs):
            os.close(fd)
        _remove_console(console, console_dir)
        raise
    for given in theirs:
        os.close(given)
    reports = _Reports(AsyncFd(ours.pop("status")))
    fds = {name: AsyncFd(fd) for name, fd in ours.items()}
    try:
        first = await asyncio.wait_for(reports.next(), START_TIMEOUT) or {"failed": 1}
        if "started" not in first:
            raise StartFailed(int(first.get("failed", 1)))
        master = None
        if console is not None:
            master = AsyncFd(await asyncio.wait_for(_receive_master(console), START_TIMEOUT))
    except BaseException as exc:
        with contextlib.suppress(ProcessLookupError):
            monitor.send_signal(signal.SIGHUP)
        for handle in (reports.fd, *fds.values()):
            handle.close()
        await _reap(monitor)
        if isinstance(exc, TimeoutError):
            raise StartFailed(-1, f"the command did not start within {START_TIMEOUT:.0f} s") from None
        raise
    finally:
        _remove_console(console, console_dir)
    return ExecProcess(
        monitor, reports, int(first["started"]),
        master=master, stdin=fds.get("stdin"), stdout=fds.get("stdout"), stderr=fds.get("stderr"),
    )  # fmt: skip


async def _receive_master(console: socket.socket) -> int:
    """Accept the runtime's connection and take the terminal's master end it sends."""
    loop = asyncio.get_running_loop()
    connection, _ = await loop.sock_accept(console)
    with connection:
        # runc sends the descriptor right after connecting, before the command runs.
        connection.settimeout(START_TIMEOUT)
        _, fds, _, _ = await asyncio.to_thread(socket.recv_fds, connection, 1024, 1)
    if not fds:
        raise StartFailed(-1, "the runtime connected to the console socket but sent no terminal")
    return fds[0]


def _remove_console(console: socket.socket | None, directory: Path | None) -> None:
    if console is not None:
        console.close()
    if directory is not None:
        shutil.rmtree(directory, ignore_errors=True)


async def _reap(monitor: subprocess.Popen[bytes]) -> None:
    """Collect the monitor's exit (it ends right after its last report, or when killed)."""
    if monitor.poll() is not None:
        return
    try:
        await asyncio.to_thread(monitor.wait, KILL_WAIT)
    except subprocess.TimeoutExpired:
        monitor.kill()
        await asyncio.to_thread(monitor.wait)
