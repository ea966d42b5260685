"""Startup, liveness and readiness probes of a running container, with Kubernetes' semantics.

A probe is a check repeated every `periodSeconds` against one run of one container: a command
inside it (`exec`, exit status 0 passes), a TCP connection to it (`tcpSocket`), or an HTTP GET
(`httpGet`, a status from 200 to 399 passes). Single results are noisy, so a probe's verdict
changes only after `successThreshold` consecutive passes or `failureThreshold` consecutive
failures, counted as kubelet counts them. Until its first verdict a liveness probe counts as
passing (a container is alive until shown otherwise), a readiness probe as failing (a container
serves nothing until shown otherwise), and a startup probe as undecided.

The startup probe gates the other two: they begin only once it has passed, so a slow-starting
program is not killed by its liveness probe while it is still loading. A startup or liveness
verdict of failure means the container must be killed and restarted; a readiness verdict only
says whether the container may receive traffic. The probes of a run neither kill nor report
anything themselves: `ContainerProbes` keeps the conclusions (`started`, `ready`, `unhealthy`),
tells its owner when they change, and hands Event-worthy failures to a callback. The supervisor
owns the container, so it decides what to do.

Probes are bound to one run: a runner starts when the container starts running and is cancelled
when it ends, so a restarted container is probed from scratch (initial delay, readiness false)
and no probe ever outlives the container it checks.

Network probes go from the host to the Instance's address over the node bridge, as kubelet's go
from the host to the pod IP. The HTTP client is a few lines over asyncio streams rather than a
library: a probe needs one request and the status line, and must not pick up the agent's proxy
settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from hypermesh.runtime import runc

__all__ = [
    "KINDS",
    "ContainerProbes",
    "Executor",
    "Handler",
    "Outcome",
    "ProbeKind",
    "ProbeRunner",
    "ProbeSpec",
    "Target",
    "Thresholds",
    "for_container",
    "handler_for",
    "named_ports",
]

log = logging.getLogger(__name__)

ProbeKind = Literal["startup", "liveness", "readiness"]
KINDS: tuple[ProbeKind, ...] = ("startup", "liveness", "readiness")
_FIELDS: dict[ProbeKind, str] = {
    "startup": "startupProbe",
    "liveness": "livenessProbe",
    "readiness": "readinessProbe",
}
_HANDLERS = ("exec", "tcpSocket", "httpGet")

# Kubernetes' defaults. They are not in the CRD schema (a default inside a list item would make
# every client-side apply of a Workload look like a change), so they are applied here.
DEFAULT_PERIOD = 10
DEFAULT_TIMEOUT = 1
DEFAULT_SUCCESS_THRESHOLD = 1
DEFAULT_FAILURE_THRESHOLD = 3
USER_AGENT = "hypermesh-probe/1.0"
# How much of a failing command's output goes into the probe's message (and thus an Event).
MESSAGE_LIMIT = 1024
# Beyond its own timeout, how long a probe may take before it is abandoned as failed: an exec
# that times out needs a moment to kill the command and collect runc.
_HARD_TIMEOUT_SLACK = 5.0


# What a probe is


@dataclass(frozen=True)
class Outcome:
    """One probe attempt: passed or not, and what to tell a user about it."""

    ok: bool
    message: str = ""


# One attempt of a probe; it enforces its own timeout and never raises.
Handler = Callable[[], Awaitable[Outcome]]
# (type, reason, message) of an Event about the Instance.
EventSink = Callable[[Literal["Normal", "Warning"], str, str], Awaitable[None]]


@dataclass(frozen=True)
class ProbeSpec:
    """A probe of a container spec, with Kubernetes' defaults applied."""

    kind: ProbeKind
    action: Mapping[str, Any]
    initial_delay: float = 0.0
    period: float = DEFAULT_PERIOD
    timeout: float = DEFAULT_TIMEOUT
    success_threshold: int = DEFAULT_SUCCESS_THRESHOLD
    failure_threshold: int = DEFAULT_FAILURE_THRESHOLD

    @classmethod
    def parse(cls, kind: ProbeKind, probe: Mapping[str, Any]) -> ProbeSpec:
        """The probe as the container spec states it (`probe` is e.g. its `livenessProbe`)."""
        success = _positive(probe.get("successThreshold"), DEFAULT_SUCCESS_THRESHOLD)
        # Kubernetes accepts only 1 for liveness and startup probes: one pass is proof enough.
        if kind != "readiness":
            success = 1
        return cls(
            kind=kind,
            action=probe,
            initial_delay=float(max(0, _positive(probe.get("initialDelaySeconds"), 0))),
            period=float(_positive(probe.get("periodSeconds"), DEFAULT_PERIOD)),
            timeout=float(_positive(probe.get("timeoutSeconds"), DEFAULT_TIMEOUT)),
            success_threshold=success,
            failure_threshold=_positive(probe.get("failureThreshold"), DEFAULT_FAILURE_THRESHOLD),
        )

    @property
    def title(self) -> str:
        """`Liveness`, `Readiness` or `Startup`, as kubelet's messages name the probe."""
        return self.kind.capitalize()


def _positive(value: Any, default: int) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        return default
    return number if number >= 1 else default


# Counting results


class Thresholds:
    """A probe's verdict from its results, counted as kubelet counts them.

    Each result extends the run of equal results or starts a new one; the verdict becomes that
    result once the run is `success` (for passes) or `failure` (for failures) long.
    """

    def __init__(self, *, success: int, failure: int, initial: bool | None) -> None:
        self.success = success
        self.failure = failure
        # True (passing), False (failing) or None (no verdict yet).
        self.verdict: bool | None = initial
        self.last: bool | None = None
        self.run = 0

    def observe(self, ok: bool) -> bool:
        """Count one result; returns whether the verdict changed."""
        if ok == self.last:
            self.run += 1
        else:
            self.last, self.run = ok, 1
        if self.run < (self.success if ok else self.failure):
            return False
        changed = self.verdict is not ok
        self.verdict = ok
        return changed

    @property
    def first_failure(self) -> bool:
        """Whether the last result was a failure that followed a pass (or came first)."""
        return self.last is False and self.run == 1


# Running a probe


Listener = Callable[["ProbeRunner", Outcome, bool], Awaitable[None]]


class ProbeRunner:
    """Runs one probe against one container run, every period, until stopped or decided.

    It waits for `gate` (the startup probe's pass) if given, then until `initialDelaySeconds`
    after the container started, then probes at once and every `periodSeconds` after. A startup
    probe stops after its first verdict either way, a liveness probe after a verdict of failure
    (the container is about to be killed; a restart brings a new runner). After each attempt
    `listener(runner, outcome, verdict_changed)` is awaited.
    """

    def __init__(
        self,
        spec: ProbeSpec,
        handler: Handler,
        *,
        started_at: float,
        listener: Listener,
        gate: asyncio.Event | None = None,
        name: str = "",
    ) -> None:
        self.spec = spec
        self.handler = handler
        self.started_at = started_at
        self.listener = listener
        self.gate = gate
        self.name = name or spec.kind
        initial = {"liveness": True, "readiness": False, "startup": None}[spec.kind]
        self.thresholds = Thresholds(
            success=spec.success_threshold, failure=spec.failure_threshold, initial=initial
        )
        self._task: asyncio.Task[None] | None = None

    @property
    def verdict(self) -> bool | None:
        return self.thresholds.verdict

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"probe:{self.name}")

    def cancel(self) -> None:
        """Ask the runner to stop; `stop()` also waits for it."""
        if self._task is not None:
            self._task.cancel()

    async def stop(self) -> None:
        """Stop probing and wait until the runner is gone."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _run(self) -> None:
        try:
            if self.gate is not None:
                await self.gate.wait()
            delay = self.started_at + self.spec.initial_delay - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            while True:
                outcome = await self._attempt()
                changed = self.thresholds.observe(outcome.ok)
                await self.listener(self, outcome, changed)
                if self.spec.kind == "startup" and self.verdict is not None:
                    return
                if self.spec.kind == "liveness" and self.verdict is False:
                    return
                await asyncio.sleep(self.spec.period)
        except asyncio.CancelledError:
            raise
        except Exception:
            # A bug here must not take the supervisor down; the probe just stops deciding.
            log.exception("probe %s stopped", self.name)

    async def _attempt(self) -> Outcome:
        try:
            return await asyncio.wait_for(self.handler(), self.spec.timeout + _HARD_TIMEOUT_SLACK)
        except TimeoutError:
            return Outcome(False, f"probe did not finish within {self.spec.timeout:.0f}s")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a handler's failure is the probe's failure
            return Outcome(False, f"probe errored: {exc}")


# All probes of one container run


class ContainerProbes:
    """The probes of one run of one container, and what they conclude about it.

    `started`: the startup probe passed (or there is none). `ready`: started, and the readiness
    probe's verdict is passing (or there is none). `unhealthy`: set, with kubelet's message,
    once the startup or liveness probe has failed; `failed` names which. `on_change` is called
    whenever one of these changes; `on_event` receives a Warning `Unhealthy` Event for the first
    failure after a pass (or the first failure at all), so a probe that keeps failing makes one
    Event per streak rather than one per period.
    """

    def __init__(
        self,
        probes: Mapping[ProbeKind, tuple[ProbeSpec, Handler]],
        *,
        started_at: float,
        on_change: Callable[[], None],
        on_event: EventSink,
        name: str = "",
    ) -> None:
        self.on_change = on_change
        self.on_event = on_event
        self.unhealthy: str | None = None
        self.failed: ProbeKind | None = None
        self._started = asyncio.Event()
        if "startup" not in probes:
            self._started.set()
        self.runners: dict[ProbeKind, ProbeRunner] = {
            kind: ProbeRunner(
                spec,
                handler,
                started_at=started_at,
                listener=self._listen,
                gate=None if kind == "startup" else self._started,
                name=f"{name}/{kind}" if name else kind,
            )
            for kind, (spec, handler) in probes.items()
        }

    @property
    def started(self) -> bool:
        return self._started.is_set()

    @property
    def ready(self) -> bool:
        readiness = self.runners.get("readiness")
        return self.started and (readiness is None or readiness.verdict is True)

    def start(self) -> None:
        for runner in self.runners.values():
            runner.start()

    def cancel(self) -> None:
        """Ask every runner to stop without waiting (for a caller that cannot await)."""
        for runner in self.runners.values():
            runner.cancel()

    async def stop(self) -> None:
        """Stop every runner and wait until all are gone."""
        await asyncio.gather(*(runner.stop() for runner in self.runners.values()))

    async def _listen(self, runner: ProbeRunner, outcome: Outcome, changed: bool) -> None:
        spec = runner.spec
        message = f"{spec.title} probe failed: {outcome.message}"
        if runner.thresholds.first_failure:
            try:
                await self.on_event("Warning", "Unhealthy", message)
            except Exception as exc:  # noqa: BLE001 - an Event lost must not stop the probe
                log.warning("probe %s: event not recorded: %s", runner.name, exc)
        if not changed:
            return
        if spec.kind == "startup" and runner.verdict:
            self._started.set()
        elif spec.kind in ("startup", "liveness") and runner.verdict is False:
            self.unhealthy, self.failed = message, spec.kind
        self.on_change()


# Handlers


class Executor(Protocol):
    """Runs a command in a container (the OCI runtime)."""

    async def exec(
        self, container_id: str, argv: list[str], *, timeout: float
    ) -> runc.ExecResult: ...


@dataclass(frozen=True)
class Target:
    """Where the probes of one container run point."""

    container_id: str
    # The Instance's address, the default host of network probes.
    address: str
    # The container's named ports (`ports[].name` -> `containerPort`).
    ports: Mapping[str, int]
    runtime: Executor


def named_ports(container: Mapping[str, Any]) -> dict[str, int]:
    """A container's named ports, which probes may use instead of numbers."""
    return {
        str(port["name"]): int(port["containerPort"])
        for port in container.get("ports") or []
        if port.get("name") and port.get("containerPort")
    }


def handler_for(spec: ProbeSpec, target: Target) -> Handler:
    """The attempt function of a probe against one container run."""
    present = [name for name in _HANDLERS if spec.action.get(name) is not None]
    if len(present) != 1:
        problem = (
            "sets no handler"
            if not present
            else f"sets {len(present)} handlers ({', '.join(present)})"
        )
        return _failing(
            f"the {spec.title.lower()} probe {problem}: set exactly one of exec, tcpSocket or httpGet"
        )
    action: Mapping[str, Any] = spec.action[present[0]]
    if present[0] == "exec":
        argv = [str(arg) for arg in action.get("command") or []]
        if not argv:
            return _failing("the exec probe has no command")
        return lambda: _exec(target, argv, spec.timeout)
    port, problem = _resolve_port(action.get("port"), target.ports)
    if port is None:
        return _failing(problem)
    host = str(action.get("host") or target.address)
    if present[0] == "tcpSocket":
        return lambda: _tcp(host, port, spec.timeout)
    scheme = str(action.get("scheme") or "HTTP").upper()
    path = str(action.get("path") or "/")
    if not path.startswith("/"):
        path = "/" + path
    if any(ord(char) <= 0x20 or ord(char) == 0x7F for char in path):
        return _failing(f"the httpGet path {path!r} contains spaces or control characters")
    return lambda: _http_get(host, port, path, scheme == "HTTPS", spec.timeout)


def for_container(
    container: Mapping[str, Any],
    target: Target,
    *,
    started_at: float,
    on_change: Callable[[], None],
    on_event: EventSink,
) -> ContainerProbes:
    """The probes a container spec asks for, against one run of it (not yet started)."""
    specs = {
        kind: ProbeSpec.parse(kind, container[field])
        for kind, field in _FIELDS.items()
        if isinstance(container.get(field), Mapping)
    }
    return ContainerProbes(
        {kind: (spec, handler_for(spec, target)) for kind, spec in specs.items()},
        started_at=started_at,
        on_change=on_change,
        on_event=on_event,
        name=str(container.get("name") or ""),
    )


def _failing(message: str) -> Handler:
    async def attempt() -> Outcome:
        return Outcome(False, message)

    return attempt


def _resolve_port(value: Any, ports: Mapping[str, int]) -> tuple[int | None, str]:
    """A probe's port: a number, or the name of one of the container's ports."""
    if isinstance(value, str) and not value.isdigit():
        if value not in ports:
            known = ", ".join(sorted(ports)) or "none"
            return None, f"port {value!r} is not a named port of the container (named: {known})"
        return ports[value], ""
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None, f"the probe's port {value!r} is neither a number nor a port name"
    if not 1 <= number <= 65535:
        return None, f"the probe's port {number} is not between 1 and 65535"
    return number, ""


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _clip(text: str) -> str:
    text = text.strip()
    return text if len(text) <= MESSAGE_LIMIT else text[:MESSAGE_LIMIT] + "..."


async def _exec(target: Target, argv: list[str], timeout: float) -> Outcome:
    command = shlex.join(argv)
    try:
        result = await target.runtime.exec(target.container_id, argv, timeout=timeout)
    except runc.OciRuntimeError as exc:
        return Outcome(False, f"command {command!r} could not run: {_clip(str(exc))}")
    if result.timed_out:
        return Outcome(False, f"command {command!r} timed out after {timeout:.0f}s")
    # As kubelet does, the command's own output is the message, stdout then stderr.
    output = _clip((result.stdout + result.stderr).decode(errors="replace"))
    if result.exit_code == 0:
        return Outcome(True, output)
    return Outcome(False, output or f"command {command!r} exited with {result.exit_code}")


async def _tcp(host: str, port: int, timeout: float) -> Outcome:
    address = _host_port(host, port)
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except TimeoutError:
        return Outcome(False, f"dial tcp {address}: i/o timeout")
    except OSError as exc:
        return Outcome(False, f"dial tcp {address}: connect: {_reason(exc)}")
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return Outcome(True)


async def _http_get(host: str, port: int, path: str, https: bool, timeout: float) -> Outcome:
    address = _host_port(host, port)
    url = f"{'https' if https else 'http'}://{address}{path}"
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {address}\r\nUser-Agent: {USER_AGENT}\r\n"
        "Accept: */*\r\nConnection: close\r\n\r\n"
    ).encode()

    async def attempt() -> bytes:
        # As kubelet, an HTTPS probe does not verify the certificate: it asks "does it answer".
        context = _insecure_context() if https else None
        reader, writer = await asyncio.open_connection(host, port, ssl=context)
        try:
            writer.write(request)
            await writer.drain()
            return await reader.readline()
        finally:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()

    try:
        status_line = await asyncio.wait_for(attempt(), timeout)
    except TimeoutError:
        return Outcome(False, f'Get "{url}": no answer within {timeout:.0f}s')
    except ConnectionRefusedError as exc:
        return Outcome(False, f'Get "{url}": dial tcp {address}: connect: {_reason(exc)}')
    except (OSError, ValueError) as exc:
        # ValueError: a status line longer than the stream's limit.
        return Outcome(False, f'Get "{url}": {_reason(exc)}')
    parts = status_line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return Outcome(
            False,
            f'Get "{url}": malformed HTTP response {_clip(status_line.decode(errors="replace"))!r}',
        )
    code = int(parts[1])
    if 200 <= code < 400:
        return Outcome(True, f"HTTP probe succeeded with statuscode: {code}")
    return Outcome(False, f"HTTP probe failed with statuscode: {code}")


def _reason(exc: Exception) -> str:
    # asyncio's connect errors carry the errno but a message of its own ("Connect call failed").
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno).lower()
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


def _insecure_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context
