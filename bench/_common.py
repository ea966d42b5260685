"""What the API benchmarks share: a real server process, a TLS load generator, the report shape.

A benchmark of the API server is only worth something next to the limits of the machine it ran
on, measured in the same run, because the development machines are small (2 cores) and shared.
So this module gives every benchmark the same three things:

- `HypermeshServer`: a real `hypermesh server` process in a temporary data directory, with its
  pid (for CPU and memory through psutil) and the admin certificate the server wrote.
- `run_load`: the load generator. httpx manages ~450 requests/s, far too few; threads blocking in
  `http.client` or raw `ssl` sockets cost ~150 us of client CPU per request. So load comes from
  several forked processes, each running uvloop with keep-alive TLS connections driven by a
  small callback protocol (~50 us per request). The client still shares the two cores with the
  server, so every rate it measures is a floor, and the server CPU time per request (psutil,
  user + system) is reported beside it as the figure that does not depend on the client.
- `HttpsConnection`: a blocking HTTP/1.1 client for single requests (lists, watches, setup).
- `measurement`: one figure, its target, and the limits measured in the same run, always in the
  same JSON shape, which `run_all.py` turns into a Markdown table.

Benchmarks import this module; of them it imports only `transport_bench.free_port`.
"""

from __future__ import annotations

import array
import asyncio
import datetime
import multiprocessing
import os
import platform
import queue
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from transport_bench import free_port  # noqa: E402  (same port for TCP and UDP)

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
HYPERMESH = Path(sys.executable).parent / "hypermesh"
USER_AGENT = "hypermesh-bench"

Comparison = Literal["<=", ">="]


# The report shape


def now_iso() -> str:
    """The current UTC time, ISO 8601 with seconds."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def machine_info() -> dict[str, Any]:
    """What ran the benchmark, including how busy the machine already was."""
    load1, load5, _ = os.getloadavg()
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "load_average_1m_5m_at_start": [round(load1, 2), round(load5, 2)],
    }


def code_version() -> dict[str, Any]:
    """Which server code was measured: the commit, and files changed since it (shared tree)."""

    def git(*args: str) -> str:
        try:
            done = subprocess.run(
                ["git", "-C", str(REPO_DIR), *args], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return done.stdout.strip() if done.returncode == 0 else ""

    changed = [line[3:] for line in git("status", "--porcelain").splitlines()]
    return {
        "commit": git("rev-parse", "--short", "HEAD") or None,
        "uncommitted_server_files": sorted(f for f in changed if f.startswith("hypermesh/")),
    }


def limit(value: float | None, unit: str, what: str) -> dict[str, Any]:
    """One limit of the machine, measured in the same run as the figure beside it."""
    return {"value": value, "unit": unit, "what": what}


def measurement(
    *,
    what: str,
    figure: float | None,
    unit: str,
    target: float,
    comparison: Comparison,
    limits: dict[str, dict[str, Any]],
    details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One benchmark figure with its target, whether it met it, and the limits beside it."""
    if figure is None:
        meets = False
    elif comparison == ">=":
        meets = figure >= target
    else:
        meets = figure <= target
    return {
        "what": what,
        "figure": figure,
        "unit": unit,
        "target": target,
        "comparison": comparison,
        "meets_target": meets,
        "limit": limits,
        "details": details or {},
    }


def percentile(values: list[float] | array.array[float], fraction: float) -> float | None:
    """The nearest-rank percentile (0 < fraction <= 1) of `values`, or None if there are none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, int(round(fraction * len(ordered) + 0.5)) - 1))
    return ordered[rank]


def ms(seconds: float | None, digits: int = 2) -> float | None:
    """Seconds as rounded milliseconds (None stays None)."""
    return None if seconds is None else round(seconds * 1000, digits)


# A minimal HTTPS/1.1 client


@dataclass(frozen=True)
class Pki:
    """Where the cluster CA and the admin client certificate are."""

    directory: Path

    @property
    def ca(self) -> Path:
        """The cluster CA certificate."""
        return self.directory / "ca.crt"

    @property
    def cert(self) -> Path:
        """The admin client certificate."""
        return self.directory / "admin.crt"

    @property
    def key(self) -> Path:
        """The admin client key."""
        return self.directory / "admin.key"

    def client_context(self) -> ssl.SSLContext:
        """A TLS client context that trusts the cluster CA and presents the admin certificate."""
        context = ssl.create_default_context(cafile=str(self.ca))
        context.load_cert_chain(str(self.cert), str(self.key))
        return context


class HttpError(Exception):
    """The server closed the connection or sent something this small client cannot read."""


class HttpsConnection:
    """One blocking keep-alive HTTPS/1.1 connection that sends prepared bytes.

    http.client spends more client CPU per request than the server being measured does; this
    client builds each request with one bytes join and reads a response with a handful of
    `recv` calls. It understands Content-Length and chunked bodies, nothing else.
    """

    def __init__(
        self, port: int, context: ssl.SSLContext, host: str = "127.0.0.1", timeout: float = 300.0
    ) -> None:
        # A timeout, so that a server that stops answering fails the benchmark instead of hanging it.
        raw = socket.create_connection((host, port), timeout=timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = context.wrap_socket(raw, server_hostname=host)
        self.host = host.encode()
        self.buffer = b""

    def close(self) -> None:
        """Close the connection."""
        self.sock.close()

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        """Send one request and return (status, body)."""
        head = [
            f"{method} {path} HTTP/1.1".encode(),
            b"Host: " + self.host,
            b"User-Agent: " + USER_AGENT.encode(),
            b"Accept: application/json",
        ]
        if body is not None:
            head += [b"Content-Type: application/json", b"Content-Length: %d" % len(body)]
        self.sock.sendall(b"\r\n".join(head) + b"\r\n\r\n" + (body or b""))
        return self.read_response()

    def _fill(self) -> None:
        chunk = self.sock.recv(262144)
        if not chunk:
            raise HttpError("connection closed by the server")
        self.buffer += chunk

    def read_head(self) -> tuple[int, dict[bytes, bytes]]:
        """Read a status line and headers; header names are lower-cased."""
        while (end := self.buffer.find(b"\r\n\r\n")) < 0:
            self._fill()
        lines = self.buffer[:end].split(b"\r\n")
        self.buffer = self.buffer[end + 4 :]
        status = int(lines[0].split(b" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        return status, headers

    def read_exactly(self, size: int) -> bytes:
        """The next `size` bytes of the connection."""
        # Collect and join once: appending to one bytes object is quadratic on a 100 MB body.
        parts, have = [self.buffer], len(self.buffer)
        while have < size:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise HttpError("connection closed by the server")
            parts.append(chunk)
            have += len(chunk)
        data = b"".join(parts) if len(parts) > 1 else self.buffer
        self.buffer = data[size:]
        return data[:size]

    def read_line(self) -> bytes:
        """The next CRLF-terminated line, without the CRLF."""
        while (end := self.buffer.find(b"\r\n")) < 0:
            self._fill()
        line, self.buffer = self.buffer[:end], self.buffer[end + 2 :]
        return line

    def read_chunk(self) -> bytes:
        """One chunk of a chunked body (empty at the end of the body)."""
        size = int(self.read_line().split(b";")[0], 16)
        data = self.read_exactly(size) if size else b""
        self.read_line()
        return data

    def read_response(self) -> tuple[int, bytes]:
        """Read one whole response."""
        status, headers = self.read_head()
        if b"content-length" in headers:
            return status, self.read_exactly(int(headers[b"content-length"]))
        if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            parts = []
            while chunk := self.read_chunk():
                parts.append(chunk)
            return status, b"".join(parts)
        raise HttpError(f"response without a length: {headers!r}")


# The server under test


class HypermeshServer:
    """A real `hypermesh server` in a temporary data directory, stopped on exit."""

    def __init__(self, *, label: str = "api") -> None:
        self.label = label
        self.port = free_port()
        self.tmp = Path(tempfile.mkdtemp(prefix=f"hypermesh-bench-{label}-"))
        self.data_dir = self.tmp / "data"
        self.pki = Pki(self.data_dir / "pki")
        self.proc: subprocess.Popen[str] | None = None
        self.ps: psutil.Process | None = None

    def __enter__(self) -> HypermeshServer:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 60.0) -> None:
        """Start the server and wait for its `ready` line."""
        log = open(self.tmp / "server.log", "a")
        self.proc = subprocess.Popen(
            [
                str(HYPERMESH),
                "server",
                "--data-dir",
                str(self.data_dir),
                "--listen",
                f"127.0.0.1:{self.port}",
                # The API figures are the API's own; controllers run separately where measured.
                "--no-controllers",
            ],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env={
                **os.environ,
                "HYPERMESH_LOG_LEVEL": os.environ.get("HYPERMESH_LOG_LEVEL", "WARNING"),
            },
        )
        log.close()
        wait_for_line(self.proc, "ready", timeout, self.tmp / "server.log")
        self.ps = psutil.Process(self.proc.pid)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and remove its data directory."""
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None
        shutil.rmtree(self.tmp, ignore_errors=True)

    @property
    def process(self) -> psutil.Process:
        """The running server process, for psutil."""
        assert self.ps is not None, "the server is not running"
        return self.ps

    def cpu_seconds(self) -> float:
        """User + system CPU seconds the server (and any children) used so far."""
        return process_cpu_seconds(self.process)

    def rss_bytes(self) -> int:
        """Resident memory of the server (and any children) now."""
        return process_rss_bytes(self.process)

    def connect(self) -> HttpsConnection:
        """A new keep-alive connection with the admin certificate."""
        return HttpsConnection(self.port, self.pki.client_context())


def wait_for_line(proc: subprocess.Popen[str], line: str, timeout: float, log: Path) -> None:
    """Wait until `proc` prints `line` on stdout; fail with its log if it exits or times out."""
    assert proc.stdout is not None
    found: list[bool] = []

    def read() -> None:
        assert proc.stdout is not None
        for text in proc.stdout:
            if text.strip() == line:
                found.append(True)
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    if not found:
        stop_process(proc)
        text = log.read_text() if log.exists() else ""
        raise RuntimeError(
            f"server did not print {line!r} within {timeout} s; log:\n{text[-4000:]}"
        )


def stop_process(proc: subprocess.Popen[str]) -> None:
    """SIGTERM, and SIGKILL if it is still there after 20 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def process_cpu_seconds(process: psutil.Process) -> float:
    """User + system CPU seconds of a process and its live children."""
    total = sum(process.cpu_times()[:2])
    for child in process.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.NoSuchProcess:
            pass
    return total


def process_rss_bytes(process: psutil.Process) -> int:
    """Resident set size of a process and its live children."""
    total: int = process.memory_info().rss
    for child in process.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


class RssSampler:
    """Samples a process's RSS in a thread to catch the peak during a phase."""

    def __init__(self, process: psutil.Process, interval: float = 0.02) -> None:
        self.process = process
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, process_rss_bytes(self.process))
            self._stop.wait(self.interval)


# The load generator


@dataclass(frozen=True)
class LoadPlan:
    """What every client thread sends, as a path and a body with `{name}` to fill in.

    Names are either generated (`{prefix}-{process}-{thread}-{n}`, for creates) or taken in turn
    from `names` (for reads). A plan runs either for `duration` seconds or until `count`
    requests are done in total, whichever comes first.
    """

    method: str
    path: str
    body: bytes | None = None
    expect: int = 200
    prefix: str = "obj"
    names: tuple[str, ...] = ()
    duration: float | None = None
    count: int | None = None


class _LoadProtocol(asyncio.Protocol):
    """One keep-alive connection that sends the plan's next request when an answer is complete.

    A callback-driven protocol on uvloop costs the client a fraction of what a thread blocking
    in `recv` does (no GIL hand-offs, no thread switches), which matters when the load generator
    and the server share two cores. Responses must carry Content-Length (every non-streaming
    answer of the API server and of uvicorn does).
    """

    def __init__(self, plan: LoadPlan, worker: int, share: int | None) -> None:
        self.plan = plan
        self.worker = worker
        self.share = share
        self.latencies: array.array[float] = array.array("d")
        self.errors: dict[str, int] = {}
        self.n = 0
        self.buffer = b""
        self.need: int | None = None
        self.status = 0
        self.began = 0.0
        self.deadline = 0.0
        self.finished = 0.0
        loop = asyncio.get_running_loop()
        self.connected: asyncio.Future[None] = loop.create_future()
        self.done: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self.body_parts = plan.body.split(b"{name}") if plan.body is not None else None
        self.head = (
            f"{plan.method} {{path}} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: {USER_AGENT}\r\n"
            "Accept: application/json\r\n"
        )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TLS transport is not an asyncio.Transport subclass, but behaves as one.
        self.transport = transport  # type: ignore[assignment]
        self.connected.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            key = type(exc).__name__ if exc else "closed"
            self.errors[key] = self.errors.get(key, 0) + 1
            self._finish()

    def _finish(self) -> None:
        self.finished = time.monotonic()
        if not self.done.done():
            self.done.set_result(None)

    def start(self, deadline: float) -> None:
        """Send the first request; the rest follow from `data_received`."""
        self.deadline = deadline
        self._send()

    def _send(self) -> None:
        now = time.monotonic()
        if (self.share is not None and self.n >= self.share) or now >= self.deadline:
            self._finish()
            return
        names = self.plan.names
        n = self.n
        name = (
            names[(self.worker + n * 7919) % len(names)]
            if names
            else (f"{self.plan.prefix}-{self.worker}-{n}")
        )
        head = self.head.replace("{path}", self.plan.path.format(name=name)).encode()
        if self.body_parts is not None:
            body = name.encode().join(self.body_parts)
            head += b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
            message = head + body
        else:
            message = head + b"\r\n"
        self.began = now
        assert self.transport is not None
        self.transport.write(message)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            if self.need is None:
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = self.buffer[:end].lower()
                self.status = int(head[9:12])
                at = head.find(b"content-length:")
                if at < 0:
                    raise HttpError("response without Content-Length")
                stop = head.find(b"\r\n", at)
                length = int(head[at + 15 : stop if stop >= 0 else None])
                self.need = end + 4 + length
            if len(self.buffer) < self.need:
                return
            self.buffer = self.buffer[self.need :]
            self.need = None
            self.latencies.append(time.monotonic() - self.began)
            if self.status != self.plan.expect:
                key = str(self.status)
                self.errors[key] = self.errors.get(key, 0) + 1
            self.n += 1
            self._send()


def _client_process(
    plan: LoadPlan,
    port: int,
    pki: Pki,
    index: int,
    connections: int,
    shares: list[int | None],
    ready: Any,
    go: Any,
    results: Any,
) -> None:
    import uvloop

    async def main() -> dict[str, Any]:
        context = pki.client_context()
        loop = asyncio.get_running_loop()
        protocols = []
        for c in range(connections):
            protocol = _LoadProtocol(plan, index * connections + c, shares[c])
            await loop.create_connection(
                lambda protocol=protocol: protocol,  # type: ignore[misc]
                "127.0.0.1",
                port,
                ssl=context,
                server_hostname="127.0.0.1",
            )
            await protocol.connected
            protocols.append(protocol)
        ready.put(index)
        await loop.run_in_executor(None, go.wait)
        started = time.monotonic()
        deadline = started + plan.duration if plan.duration is not None else float("inf")
        for protocol in protocols:
            protocol.start(deadline)
        await asyncio.gather(*(protocol.done for protocol in protocols))
        errors: dict[str, int] = {}
        latencies: array.array[float] = array.array("d")
        for protocol in protocols:
            latencies.extend(protocol.latencies)
            for key, value in protocol.errors.items():
                errors[key] = errors.get(key, 0) + value
            assert protocol.transport is not None
            protocol.transport.close()
        return {
            "done": len(latencies),
            "errors": errors,
            "latencies": latencies.tobytes(),
            "started": started,
            "finished": max(protocol.finished for protocol in protocols),
        }

    results.put(uvloop.run(main()))


def run_load(
    plan: LoadPlan,
    *,
    port: int,
    pki: Pki,
    server: psutil.Process,
    processes: int = 4,
    connections: int = 16,
) -> dict[str, Any]:
    """Run `plan` from processes x connections keep-alive connections; rate, latency, server CPU.

    Connections are made (TLS handshakes done) before the clock starts; the server's CPU time is
    read just before the start signal and just after the last client finished.
    """
    context = multiprocessing.get_context("fork")
    clients = processes * connections
    if plan.count is not None:
        per, extra = divmod(plan.count, clients)
        shares: list[int | None] = [per + (1 if i < extra else 0) for i in range(clients)]
    else:
        shares = [None] * clients
    ready, results, go = context.Queue(), context.Queue(), context.Event()
    workers = [
        context.Process(
            target=_client_process,
            args=(
                plan,
                port,
                pki,
                p,
                connections,
                shares[p * connections : (p + 1) * connections],
                ready,
                go,
                results,
            ),
            daemon=True,
        )
        for p in range(processes)
    ]
    for worker in workers:
        worker.start()
    for _ in workers:
        ready.get(timeout=120)
    cpu_before = process_cpu_seconds(server)
    system_before = server.cpu_times().system
    started = time.monotonic()
    go.set()
    timeout = (plan.duration or 0) + 900
    reports = []
    try:
        for _ in workers:
            reports.append(results.get(timeout=timeout))
    except queue.Empty:
        raise RuntimeError("a load generator process did not report back") from None
    finished = max(r["finished"] for r in reports)
    cpu = process_cpu_seconds(server) - cpu_before
    system = server.cpu_times().system - system_before
    for worker in workers:
        worker.join()
    latencies: array.array[float] = array.array("d")
    errors: dict[str, int] = {}
    for report in reports:
        latencies.frombytes(report["latencies"])
        for key, value in report["errors"].items():
            errors[key] = errors.get(key, 0) + value
    elapsed = finished - started
    done = len(latencies)
    return {
        "requests": done,
        "errors": errors,
        "seconds": round(elapsed, 2),
        "requests_per_s": round(done / elapsed) if elapsed > 0 else None,
        "latency_ms": {
            "p50": ms(percentile(latencies, 0.50)),
            "p90": ms(percentile(latencies, 0.90)),
            "p99": ms(percentile(latencies, 0.99)),
            "max": ms(max(latencies) if latencies else None),
        },
        "server_cpu_ms_per_request": round(cpu / done * 1000, 4) if done else None,
        "server_requests_per_core_second": round(done / cpu) if cpu > 0 else None,
        "server_cpu_utilisation_cores": round(cpu / elapsed, 2) if elapsed > 0 else None,
        # Kernel time: socket writes and reads (loopback TCP), in the server's own process.
        "server_cpu_system_share": round(system / cpu, 2) if cpu > 0 else None,
        "client": {
            "processes": processes,
            "connections_per_process": connections,
            "connections": clients,
        },
    }


def iter_lines(connection: HttpsConnection) -> Iterator[bytes]:
    """The newline-delimited lines of a chunked streaming response (a watch), as they come."""
    pending = b""
    while chunk := connection.read_chunk():
        pending += chunk
        *lines, pending = pending.split(b"\n")
        yield from (line for line in lines if line)
