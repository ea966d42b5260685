"""Driving an OCI runtime (runc, or crun where it works) for the node agent.

The hard part of running a container detached is its exit status. Whoever starts the
container's init must stay its parent to `wait()` for it; `runc run --detach` does not, the init
is reparented to PID 1, and nobody records how it ended. The agent cannot be that parent
either: it restarts (upgrades, crashes), and its containers must carry on and still have their
exits reported afterwards.

So every container gets a shim, started in a session of its own so it outlives the agent: a
busybox `sh` script that runs `runc run --keep` in the foreground (runc stays the init's parent
and exits with its status, 128+N for a signal, as Docker reports it), then reads the
container's OOM-kill counter while `--keep` still holds the cgroup, and writes everything to the
exit file with a rename, so a reader sees the whole file or none. The agent only polls files:
`run()` returns when runc's pid file appears, `exit_status()` reads the exit file, and an agent
that restarts finds the container with `list()` and its exit in the same file.

Measured on the development machine (Debian 12, runc 1.1.5, busybox 1.35; the mean over 20
idle containers, from /proc/PID/smaps_rollup):

    process             RSS        PSS        private (all anonymous)   threads
    shim (busybox sh)   1.6 MiB    0.13 MiB   0.06 MiB                  1
    runc run (Go)       10.0 MiB   2.3 MiB    1.95 MiB                  9

Most of runc's RSS is its binary's pages, shared by every copy; what a container really costs
is the private memory, about 2 MiB (plus 9 kernel stacks of 16 KiB for runc's threads), so
~200 MiB for 100 Instances on a node. A C shim in the style of conmon (`runc create`, then
wait for the init as a child subreaper) would keep only its own small heap and could tell an
`exit 137` from a SIGKILL, at the price of a compiler or one more package on every node. crun
stays in the foreground the same way and is a C program, so with crun this design should cost
a fraction of the above (not measured: crun does not run on these hosts without a host-wide
cgroup change). The shell design needs nothing but busybox and the runtime; the figures are
here so the choice can be revisited when nodes run many more containers.

Three details that look odd but are deliberate:

- the shim asks for an OOM score of -998, like containerd's shim, so the host's OOM killer takes
  a container before the process that reports its exit (this needs CAP_SYS_RESOURCE, which
  the development VMs withhold: there the shim quietly keeps score 0); the container's own
  score comes from its config, where `oci.runtime_spec` writes it so it is never inherited;
- runc reports its own errors through `--log` (kept per container beside its pid file) but also
  prints a failed start's error on its stderr, which is the container's stderr; a start that
  fails cuts the container's stderr file back to its size before the attempt, so the container's
  logs only ever hold what the container wrote;
- `delete()` removes the container's cgroup directory in every hierarchy if runc left it (an
  interrupted delete or a failed start does), but never the shared parent (`/hypermesh`):
  removing it would race with containers being created under it and drop the eBPF programs
  attached there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from hypermesh.runtime import execprocess, shim, trial
from hypermesh.runtime.cgroups import CgroupLayout
from hypermesh.runtime.execprocess import ExecProcess

__all__ = [
    "CgroupLayout",
    "CommandError",
    "ContainerState",
    "ExecProcess",
    "ExecResult",
    "ExitStatus",
    "OciRuntime",
    "OciRuntimeError",
    "RuntimeUnavailable",
    "StartError",
]

RuntimeName = Literal["runc", "crun"]
Status = Literal["creating", "created", "running", "paused", "stopped"]

# How long a container may take from launch to its init running.
START_TIMEOUT = 60.0
# How long delete() waits for a shim to write the exit of a container it just killed.
SHIM_EXIT_WAIT = 5.0
# Default cap on the output an exec keeps per stream; the rest is read and dropped.
EXEC_OUTPUT_LIMIT = 1 << 20
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$")
# Runtime messages that mean "that container is not there (any more)".
_GONE = ("does not exist", "not running", "no such file", "no such process", "already finished")

# Errors


class OciRuntimeError(Exception):
    """Something the OCI runtime could not do."""


class RuntimeUnavailable(OciRuntimeError):
    """No usable runtime on this machine, or not the one that was asked for."""


class StartError(OciRuntimeError):
    """A container that did not start; the message ends with the runtime's own error."""


class CommandError(OciRuntimeError):
    """A runtime command that failed."""

    def __init__(self, argv: Sequence[str], code: int, stderr: str) -> None:
        self.argv = list(argv)
        self.code = code
        self.stderr = stderr
        detail = stderr.strip().splitlines()[-3:] if stderr.strip() else ["no error output"]
        super().__init__(f"`{' '.join(argv[3:])}` exited {code}: {' / '.join(detail)}")


# Results


@dataclass(frozen=True)
class ContainerState:
    """What the runtime says about a container it knows."""

    id: str
    status: Status
    pid: int  # 0 once stopped
    bundle: Path


@dataclass(frozen=True)
class ExitStatus:
    """How a container ended.

    `code` is what Docker and Kubernetes report: the exit code, or 128+N after signal N. The
    signal is inferred from that convention, so a process that itself exits with 137 reads as
    killed by signal 9, as it does in Docker. `error` is the runtime's error when the container
    never started.
    """

    code: int
    signal: int | None
    oom_killed: bool
    error: str = ""


@dataclass(frozen=True)
class ExecResult:
    """The outcome of a command run inside a container."""

    exit_code: int
    stdout: bytes
    stderr: bytes
    timed_out: bool = False


@dataclass(frozen=True)
class _Completed:
    argv: list[str]
    code: int
    stdout: bytes
    stderr: str


class OciRuntime:
    """One OCI runtime binary, with HyperMesh's containers kept under its own state root."""

    name: RuntimeName
    reason: str

    def __init__(
        self,
        *,
        name: RuntimeName,
        binary: Path,
        state_dir: Path,
        reason: str,
        shell: Sequence[str] | None = None,
        cgroups: CgroupLayout | None = None,
    ) -> None:
        self.name = name
        self.binary = binary
        self.state_dir = state_dir
        self.reason = reason
        self.shell = tuple(shell or shim.shell())
        self.cgroups = cgroups or CgroupLayout.read()
        # The runtime's own state (`--root`), apart from every other user of runc on the host.
        self.root = state_dir / name
        # What run() records per container: runtime log, init pid file, the shim's record.
        self.records = state_dir / "containers"
        self.version = _version(binary)
        for directory in (self.root, self.records):
            directory.mkdir(parents=True, exist_ok=True)
            os.chmod(directory, 0o700)

    @classmethod
    def detect(cls, state_dir: Path, *, force: str | None = None) -> OciRuntime:
        """crun if it is installed and a trial container runs with it, runc otherwise;
        `force` ("runc" or "crun") insists on one and fails if it is unusable."""
        if force not in (None, "runc", "crun"):
            raise RuntimeUnavailable(f"unknown OCI runtime {force!r}: expected runc or crun")
        state_dir.mkdir(parents=True, exist_ok=True)
        cgroups = CgroupLayout.read()
        crun = shutil.which("crun")
        why_not_crun = "crun is not installed"
        if crun is not None and force in (None, "crun"):
            problem = trial.run_trial(Path(crun), state_dir, cgroups)
            if problem is None:
                reason = "forced" if force else "crun is installed and ran a trial container"
                return cls(
                    name="crun",
                    binary=Path(crun),
                    state_dir=state_dir,
                    reason=reason,
                    cgroups=cgroups,
                )
            why_not_crun = f"crun failed a trial container: {problem}"
        if force == "crun":
            raise RuntimeUnavailable(why_not_crun)
        runc = shutil.which("runc")
        if runc is None:
            raise RuntimeUnavailable(f"runc is not installed ({why_not_crun})")
        reason = "forced" if force else why_not_crun
        return cls(
            name="runc", binary=Path(runc), state_dir=state_dir, reason=reason, cgroups=cgroups
        )

    # Lifecycle

    async def run(
        self, container_id: str, bundle: Path, *, stdout: Path, stderr: Path, exit_file: Path
    ) -> int:
        """Starts the container under a shim that outlives the agent; returns its init's pid.

        stdout and stderr are appended to; the exit file appears when the container has ended.
        """
        _check_id(container_id)
        bundle = bundle.resolve()
        config = json.loads((bundle / "config.json").read_bytes())
        cgroups_path = str(config.get("linux", {}).get("cgroupsPath", ""))
        if (self.root / container_id).exists():
            raise StartError(f"container {container_id} already exists: delete it first")
        record_dir = self.records / container_id
        shutil.rmtree(record_dir, ignore_errors=True)
        record_dir.mkdir(parents=True)
        log, pid_file = record_dir / "runtime.log", record_dir / "init.pid"
        for path in (stdout, stderr, exit_file):
            path.parent.mkdir(parents=True, exist_ok=True)
        for stale in (exit_file, exit_file.with_name(exit_file.name + ".tmp")):
            stale.unlink(missing_ok=True)
        stderr_size = stderr.stat().st_size if stderr.exists() else 0
        oom_file, failcnt_file = self.cgroups.memory_files(cgroups_path)
        shim_argv = [
            *self.shell, "-c", shim.SCRIPT, "hm-shim",
            str(self.binary), str(self.root), str(bundle), container_id,
            str(stdout), str(stderr), str(exit_file), str(log), str(pid_file),
            oom_file, failcnt_file,
        ]  # fmt: skip
        # The standard library's Popen, not the event loop's subprocess support: uvloop leaves
        # its own descriptors (sockets to the API server among them) open in the child, so the
        # shim, which outlives this call, would inherit them, and waiting for the launcher's
        # output would wait for the container to end.
        launched = await asyncio.to_thread(
            subprocess.run,
            [*self.shell, "-c", shim.LAUNCHER, str(record_dir / "shim.log"), *shim_argv],
            stdin=subprocess.DEVNULL, capture_output=True, env={"PATH": PATH},
            start_new_session=True, close_fds=True, timeout=30,
        )  # fmt: skip
        out, err = launched.stdout, launched.stderr
        try:
            shim_pid = int(out.strip())
        except ValueError:
            raise StartError(f"could not launch the shim: {err.decode(errors='replace')}") from None
        shim.ShimRecord(str(bundle), cgroups_path, str(exit_file), shim_pid).save(record_dir / "shim.json")

        started = time.monotonic()
        deadline = started + START_TIMEOUT
        delay = 0.002
        while True:
            pid = _read_pid(pid_file)
            if pid:
                return pid
            if exit_file.exists() or not _alive(shim_pid, container_id):
                pid = _read_pid(pid_file)
                if pid:
                    return pid
                problem = _failure(log, record_dir / "shim.log")
                break
            if time.monotonic() > deadline:
                problem = f"not running after {START_TIMEOUT:.0f} s"
                break
            await asyncio.sleep(delay)
            # runc writes the pid file 20-40 ms after the shim starts: look every 5 ms for the
            # first second (a doubling delay overshot that by up to 40 ms, a third of the start
            # time), then less often for a slow start.
            delay = 0.005 if time.monotonic() - started < 1.0 else 0.05
        # The runtime printed its error on the container's stderr too: take it back out.
        with contextlib.suppress(OSError):
            if stderr.stat().st_size > stderr_size:
                os.truncate(stderr, stderr_size)
        with contextlib.suppress(OciRuntimeError):
            await self.delete(container_id)
        raise StartError(f"{self.name} could not start container {container_id}: {problem}")

    async def state(self, container_id: str) -> ContainerState | None:
        """The runtime's view of the container, or None if it does not know it."""
        _check_id(container_id)
        if not (self.root / container_id).is_dir():
            return None
        result = await self._command("state", container_id)
        if result.code != 0:
            if _gone(result.stderr) or not (self.root / container_id).is_dir():
                return None
            raise CommandError(result.argv, result.code, result.stderr)
        data = json.loads(result.stdout)
        return ContainerState(
            id=container_id,
            status=data.get("status", "stopped"),
            pid=int(data.get("pid") or 0),
            bundle=Path(data.get("bundle") or ""),
        )

    async def kill(
        self, container_id: str, sig: int = signal.SIGTERM, *, all_processes: bool = False
    ) -> None:
        """Sends `sig` to the init (or to every process); a container that is gone is no error.

        An init ignores signals it has no handler for (it is PID 1 of its namespace), so a
        SIGTERM may change nothing; SIGKILL always works.
        """
        _check_id(container_id)
        if not (self.root / container_id).is_dir():
            return
        flags = ["--all"] if all_processes else []
        result = await self._command("kill", *flags, container_id, str(int(sig)))
        if result.code != 0 and not _gone(result.stderr):
            raise CommandError(result.argv, result.code, result.stderr)

    async def delete(self, container_id: str) -> None:
        """Removes the container whatever its state (killing it if it runs), its runtime state,
        its cgroup directories and what run() kept; doing it twice is harmless."""
        _check_id(container_id)
        record_dir = self.records / container_id
        record = shim.ShimRecord.load(record_dir / "shim.json")
        cgroups_path = record.cgroups_path if record else ""
        if (self.root / container_id).is_dir():
            state = await self.state(container_id)
            if not cgroups_path and state is not None:
                cgroups_path = _cgroups_path_of(state.bundle)
            result = await self._command("delete", "--force", container_id)
            if (
                result.code != 0
                and (self.root / container_id).is_dir()
                and not _gone(result.stderr)
            ):
                raise CommandError(result.argv, result.code, result.stderr)
        if record is not None:
            await self._wait_for_shim(record, container_id)
        if cgroups_path:
            busy = await asyncio.to_thread(self.cgroups.remove, cgroups_path)
            if busy:
                raise OciRuntimeError(
                    f"cgroups of {container_id} still hold processes: {', '.join(map(str, busy))}"
                )
        shutil.rmtree(record_dir, ignore_errors=True)

    async def exec(
        self,
        container_id: str,
        argv: list[str],
        *,
        timeout: float,
        env: list[str] | None = None,
        output_limit: int = EXEC_OUTPUT_LIMIT,
    ) -> ExecResult:
        """Runs `argv` in the running container (as its init's user, with its env plus `env`).

        A command still running after `timeout` seconds is killed and reported `timed_out`.
        A command that could not be started at all raises CommandError.
        """
        _check_id(container_id)
        if not argv:
            raise ValueError("exec needs a command")
        spool = (
            self.records / container_id
            if (self.records / container_id).is_dir()
            else self.state_dir
        )
        pid_file = spool / f"exec-{os.getpid()}-{time.monotonic_ns()}.pid"
        flags = [item for entry in env or () for item in ("--env", entry)]
        command = self._argv("exec", "--pid-file", str(pid_file), *flags, container_id, *argv)
        process = await asyncio.create_subprocess_exec(
            *command,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={"PATH": PATH},
        )  # fmt: skip
        assert process.stdout is not None and process.stderr is not None
        out, err = bytearray(), bytearray()
        collect = asyncio.ensure_future(
            asyncio.gather(
                _read_capped(process.stdout, out, output_limit),
                _read_capped(process.stderr, err, output_limit),
                process.wait(),
            )
        )
        timed_out = False
        try:
            done, _ = await asyncio.wait({collect}, timeout=timeout)
            if not done:
                timed_out = True
                # Killing `runc exec` would leave the command running in the container: kill
                # the command itself (the pid file holds its host pid), and runc follows.
                pid = _read_pid(pid_file)
                if pid:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                done, _ = await asyncio.wait({collect}, timeout=2.0)
                if not done:
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
                    # A child of the command may still hold the pipes open: stop reading.
                    done, _ = await asyncio.wait({collect}, timeout=2.0)
                    if not done:
                        collect.cancel()
            started = pid_file.exists()
        finally:
            # Also reached when the caller is cancelled: leave nothing running behind.
            if process.returncode is None:
                if pid := _read_pid(pid_file):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
            if not collect.done():
                collect.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await collect
            pid_file.unlink(missing_ok=True)
        code = process.returncode if process.returncode is not None else -1
        if not started and not timed_out:
            raise CommandError(command, code, err.decode(errors="replace"))
        return ExecResult(code, bytes(out), bytes(err), timed_out)

    async def exec_session(
        self,
        container_id: str,
        argv: list[str],
        *,
        tty: bool,
        stdin: bool,
        stdout: bool = True,
        stderr: bool = True,
        env: list[str] | None = None,
    ) -> ExecProcess:
        """Starts `argv` in the running container for an interactive session and returns once
        it runs: with `tty` in a new terminal whose master end comes back over a console socket
        (`exec --detach --tty --console-socket`), otherwise with pipes for the streams asked
        for. The caller owns the result and must `close()` it. A command that could not be
        started raises CommandError with the runtime's error.
        """
        _check_id(container_id)
        if not argv:
            raise ValueError("exec needs a command")
        spool = self.records / container_id if (self.records / container_id).is_dir() else self.state_dir
        stem = spool / f"session-{os.getpid()}-{time.monotonic_ns()}"
        pid_file, log = stem.with_suffix(".pid"), stem.with_suffix(".log")
        flags = [item for entry in env or () for item in ("--env", entry)]
        if tty and not any(entry.startswith("TERM=") for entry in env or ()):
            # What Docker and containerd give a terminal session unless told otherwise.
            flags += ["--env", "TERM=xterm"]

        def command(console_socket: Path | None) -> list[str]:
            terminal = ["--tty", "--console-socket", str(console_socket)] if console_socket else []
            return self._argv(
                "--log", str(log), "--log-format", "json", "exec", "--detach", *terminal,
                "--pid-file", str(pid_file), *flags, container_id, *argv,
            )  # fmt: skip

        try:
            return await execprocess.start(
                command, tty=tty, stdin=stdin, stdout=stdout, stderr=stderr, env={"PATH": PATH}
            )
        except execprocess.StartFailed as exc:
            raise CommandError(command(None), exc.code, exc.detail or _failure(log, None)) from None
        finally:
            pid_file.unlink(missing_ok=True)
            log.unlink(missing_ok=True)

    # Helpers

    def _argv(self, *args: str) -> list[str]:
        return [str(self.binary), "--root", str(self.root), *args]

    async def _command(self, *args: str, timeout: float = 30.0) -> _Completed:
        argv = self._argv(*args)
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={"PATH": PATH},
        )  # fmt: skip
        try:
            out, err = await asyncio.wait_for(process.communicate(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            raise CommandError(argv, -1, f"no answer within {timeout:.0f} s") from None
        return _Completed(argv, process.returncode or 0, out, err.decode(errors="replace"))

    async def _wait_for_shim(self, record: shim.ShimRecord, container_id: str) -> None:
        """Lets a shim whose container just died write its exit file before anything else
        reuses the path: a late write would report the next container of that name as ended."""
        deadline = time.monotonic() + SHIM_EXIT_WAIT
        while _alive(record.shim_pid, container_id):
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(record.shim_pid, signal.SIGKILL)
                return
            await asyncio.sleep(0.02)

    # Reading state without the runtime

    def exit_status(self, exit_file: Path) -> ExitStatus | None:
        """How the container ended, once its shim has written the exit file; None before."""
        try:
            text = exit_file.read_text()
        except FileNotFoundError:
            return None
        fields = dict(line.partition("=")[::2] for line in text.splitlines())
        code = _int(fields.get("code"), -1)
        signal_number = code - 128 if 128 < code <= 128 + 64 else None
        if fields.get("oom_kill"):
            oom_killed = _int(fields["oom_kill"], 0) > 0
        else:
            # Kernels before 4.13 have no OOM-kill counter: a SIGKILL after the cgroup hit its
            # limit is the best evidence there is.
            oom_killed = signal_number == signal.SIGKILL and _int(fields.get("failcnt"), 0) > 0
        error = ""
        if fields.get("started") == "0":
            error = _failure(Path(fields.get("log") or "/nonexistent"), None)
        return ExitStatus(code, signal_number, oom_killed, error)

    def list(self) -> list[str]:
        """Every container id this runtime's state or run()'s records know, stopped ones too."""
        ids: set[str] = set()
        for base in (self.root, self.records):
            with contextlib.suppress(FileNotFoundError):
                ids.update(
                    entry.name
                    for entry in base.iterdir()
                    if entry.is_dir() and _ID.match(entry.name)
                )
        return sorted(ids)


# Module helpers


def _check_id(container_id: str) -> None:
    if not _ID.match(container_id):
        raise ValueError(
            f"container id {container_id!r}: use 1-128 letters, digits, '_', '.', '+' or '-'"
        )


def _version(binary: Path) -> str:
    try:
        first = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout.splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "unknown"
    # "runc version 1.1.5+ds1", "crun version 1.8.1"
    return first.split("version", 1)[-1].strip() or "unknown"


def _read_pid(path: Path) -> int:
    try:
        return int(path.read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def _alive(pid: int, container_id: str) -> bool:
    """Whether `pid` is still the shim of this container (pids get reused)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"hm-shim" in cmdline and container_id.encode() in cmdline


def _gone(stderr: str) -> bool:
    text = stderr.lower()
    return any(marker in text for marker in _GONE)


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value else default
    except ValueError:
        return default


def _cgroups_path_of(bundle: Path) -> str:
    try:
        config = json.loads((bundle / "config.json").read_bytes())
        return str(config.get("linux", {}).get("cgroupsPath") or "")
    except (OSError, ValueError, AttributeError):
        return ""


def _failure(log: Path, shim_log: Path | None, lines: int = 3) -> str:
    """The last errors of a runtime's JSON log (or of the shim's own stderr)."""
    messages: list[str] = []
    with contextlib.suppress(OSError):
        for line in log.read_text(errors="replace").splitlines():
            try:
                entry: Any = json.loads(line)
            except ValueError:
                entry = {"level": "error", "msg": line}
            if isinstance(entry, dict) and entry.get("level") in ("error", "fatal", "warning"):
                messages.append(str(entry.get("msg", "")).strip())
    if not messages and shim_log is not None:
        with contextlib.suppress(OSError):
            messages = [line for line in shim_log.read_text(errors="replace").splitlines() if line]
    return " / ".join(messages[-lines:]) or "no error was recorded"


async def _read_capped(stream: asyncio.StreamReader, into: bytearray, limit: int) -> None:
    while chunk := await stream.read(65536):
        room = limit - len(into)
        if room > 0:
            into += chunk[:room]
