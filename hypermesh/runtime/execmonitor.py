"""The parent of an interactive exec's command: reaps it and reports its exit status.

A command with a terminal must be started with `runc exec --detach --console-socket` (runc
refuses a console socket otherwise), and a detached runc exits as soon as the command runs: the
command is orphaned, and only the process that reaps it learns its exit status. The agent
cannot be that process (as a child subreaper it would also inherit every container shim), so
each session gets this small one, as containerd's shim and CRI-O's conmon do for theirs:

    python -I -S execmonitor.py STATUS_FD -- RUNTIME [ARGS...] exec --detach --pid-file F ...

It marks itself a child subreaper, runs the runtime with its own stdin, stdout and stderr (the
command's, when they are pipes), then waits for the command. Lines of JSON on STATUS_FD say
what happened: `{"started": PID}` or `{"failed": RUNTIME_EXIT_CODE}`, then `{"exit": CODE}`
(128+N after signal N, as shells and Docker report it).

SIGHUP asks it to end the session early: every process of the command's session (the command
is a session leader; its children stay in its session unless they leave it on purpose) gets
SIGKILL, and the exit is still reported. The agent sends SIGHUP when the user goes away, and
the kernel sends it when the agent dies (PR_SET_PDEATHSIG), so no session outlives its user.

This file imports only the standard library and is run by path with `-I -S`, so it starts in a
few milliseconds and never imports HyperMesh.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


class _Session:
    """The command once started, and whether it should be ended."""

    def __init__(self) -> None:
        self.pid = 0
        self.hung_up = False

    def hang_up(self, _signum: int = 0, _frame: object = None) -> None:
        self.hung_up = True
        if self.pid:
            kill_session(self.pid)


def kill_session(sid: int) -> None:
    """SIGKILL every process whose session is `sid`, until none is left. The number cannot
    name another session meanwhile: it stays taken while any member (or the unreaped leader)
    exists."""
    for _ in range(20):
        members = [pid for pid in _pids() if _session_of(pid) == sid]
        if not members:
            return
        for pid in members:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _session_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: fields start after the last ')'.
    fields = stat[stat.rfind(b")") + 2 :].split()
    # state ppid pgrp session ...; a zombie is past killing.
    if len(fields) < 4 or fields[0] == b"Z":
        return None
    return int(fields[3])


def _exit_code(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[2] != "--":
        sys.stderr.write("usage: execmonitor.py STATUS_FD -- RUNTIME [ARGS...]\n")
        return 2
    status_fd, command = int(argv[1]), argv[3:]
    pid_file = command[command.index("--pid-file") + 1]
    os.set_inheritable(status_fd, False)

    def report(**fields: int) -> None:
        os.write(status_fd, json.dumps(fields).encode() + b"\n")

    session = _Session()
    signal.signal(signal.SIGHUP, session.hang_up)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    parent = os.getppid()
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGHUP, 0, 0, 0)
    if os.getppid() != parent:
        session.hung_up = True  # the agent died before the death signal was armed

    runtime = os.fork()
    if runtime == 0:
        try:
            os.execv(command[0], command)
        finally:
            os._exit(127)
    _, status = os.waitpid(runtime, 0)
    code = _exit_code(status)
    try:
        with open(pid_file) as handle:
            session.pid = int(handle.read().strip() or 0)
    except (OSError, ValueError):
        session.pid = 0
    if code != 0 or not session.pid:
        report(failed=code or 1)
        return 0
    # The command's pipes are not ours to hold: their readers must see end-of-file when the
    # command (and its children) are done with them.
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    report(started=session.pid)
    if session.hung_up:
        kill_session(session.pid)
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            # Reaped by nobody else, so this cannot happen; say so rather than hang.
            report(exit=255)
            return 0
        if pid == session.pid:
            report(exit=_exit_code(status))
            return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
