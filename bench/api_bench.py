"""How fast the API server creates, reads, lists and watches, and how much memory it holds.

Every figure is taken from a real `hypermesh server` process over mutual TLS, the way clients
reach it, and printed beside its target and beside the limits of this machine measured in the
same run (the machines are 2 shared cores, so yesterday's baseline says little about today):

- create / get rates from 64 keep-alive connections (4 uvloop processes x 16), with the
  server's CPU time per request, next to the rate at which the same client harness gets answers
  from a trivial ASGI app on the same TLS listener (`transport_bench.py --serve`), and next to
  what plain sqlite3 commits (`store_bench.raw_sqlite_limit`);
- a list of 10,000 objects in one response, next to reading the same bytes from sqlite3 and
  decoding and re-encoding them with orjson;
- the delay until 1,000 watchers of one namespace all see a new object;
- the server's resident memory holding 100,000 Instances: idle, after a paginated list of them
  all, with an informer-style watch open, with a watch that replayed all of them, and after the
  watches closed. If the creates do not fit in `--memory-seconds`, the memory is extrapolated
  linearly from what was created, and the JSON says so.

The client shares the two cores with the server, so rates are floors; server CPU per request is
the figure that does not depend on the client.

    .venv/bin/python bench/api_bench.py [--quick] [--only create,get,list,watch,memory]
        [--py-spy DIR]   # also profile the server in each phase (figures come out lower)

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import json
import multiprocessing
import os
import queue
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
import store_bench  # noqa: E402
from _common import HypermeshServer, LoadPlan, Pki  # noqa: E402

TARGET_CREATES_PER_S = 2_000
TARGET_CREATE_P99_MS = 100.0
TARGET_GETS_PER_S = 8_000
TARGET_LIST_MS = 150.0
TARGET_WATCH_P99_MS = 100.0
TARGET_MEMORY_MIB = 1024.0
MEMORY_OBJECTS = 100_000

GROUP = "/apis/hypermesh.io/v1"
MEASUREMENTS = ("create", "get", "list", "watch", "memory")

WORKLOAD = (
    b'{"apiVersion":"hypermesh.io/v1","kind":"Workload","metadata":{"name":"{name}"},'
    b'"spec":{"replicas":1,"template":{"spec":{"containers":[{"name":"c","image":"busybox"}]}}}}'
)
INSTANCE = (
    b'{"apiVersion":"hypermesh.io/v1","kind":"Instance","metadata":{"name":"{name}"},'
    b'"spec":{"containers":[{"name":"c","image":"busybox"}]}}'
)


def workloads(namespace: str) -> str:
    """The Workload collection of a namespace."""
    return f"{GROUP}/namespaces/{namespace}/workloads"


def instances(namespace: str | None) -> str:
    """The Instance collection of a namespace, or of all namespaces."""
    return f"{GROUP}/namespaces/{namespace}/instances" if namespace else f"{GROUP}/instances"


def create_namespace(server: HypermeshServer, name: str) -> None:
    """Create a namespace (the API answers 201)."""
    body = orjson.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    connection = server.connect()
    try:
        status, answer = connection.request("POST", "/api/v1/namespaces", body)
    finally:
        connection.close()
    if status != 201:
        raise RuntimeError(f"creating namespace {name}: {status} {answer[:300]!r}")


def list_revision(server: HypermeshServer, path: str) -> str:
    """The resourceVersion of a (one-item) list: where a watch of that collection starts."""
    connection = server.connect()
    try:
        status, body = connection.request("GET", f"{path}?limit=1")
    finally:
        connection.close()
    if status != 200:
        raise RuntimeError(f"GET {path}: {status} {body[:300]!r}")
    return str(orjson.loads(body)["metadata"]["resourceVersion"])


def load(server: HypermeshServer, plan: LoadPlan, args: argparse.Namespace) -> dict[str, Any]:
    """Run a load plan with the command line's client shape against `server`."""
    return _common.run_load(
        plan,
        port=server.port,
        pki=server.pki,
        server=server.process,
        processes=args.processes,
        connections=args.connections,
    )


def populate(
    server: HypermeshServer,
    args: argparse.Namespace,
    *,
    path: str,
    body: bytes,
    prefix: str,
    count: int,
    seconds: float | None = None,
) -> dict[str, Any]:
    """Create `count` objects with the concurrent harness (stopping after `seconds` if given)."""
    plan = LoadPlan("POST", path, body, 201, prefix=prefix, count=count, duration=seconds)
    result = load(server, plan, args)
    if result["errors"]:
        raise RuntimeError(f"creating {prefix} objects failed: {result['errors']}")
    return result


# Limits of this machine, measured in the same run


def limit_raw_sqlite(seconds: float) -> float:
    """Rows/s of plain sqlite3 (WAL, synchronous=FULL, 100 rows per transaction)."""
    with tempfile.TemporaryDirectory(prefix="hypermesh-bench-sqlite-") as tmp:
        return store_bench.raw_sqlite_limit(Path(tmp) / "raw.db", seconds=seconds)


def limit_trivial_tls(args: argparse.Namespace, duration: float) -> dict[str, Any]:
    """The client harness against a trivial ASGI app on the same TLS listener code."""
    from hypermesh.pki import ensure_server_pki

    with tempfile.TemporaryDirectory(prefix="hypermesh-bench-trivial-") as data_dir:
        pki = ensure_server_pki(Path(data_dir))
        port = _common.free_port()
        script = Path(__file__).resolve().parent / "transport_bench.py"
        proc = subprocess.Popen(
            [sys.executable, str(script), "--serve", str(port), data_dir],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            _common.wait_for_line(proc, "READY", 60, Path(data_dir) / "none.log")
            import psutil

            return _common.run_load(
                LoadPlan("GET", "/", duration=duration),
                port=port,
                pki=Pki(Path(pki.directory)),
                server=psutil.Process(proc.pid),
                processes=args.processes,
                connections=args.connections,
            )
        finally:
            _common.stop_process(proc)


# Profiling (optional)


class Profile:
    """`py-spy record` of the server for one phase, summarised into its hottest functions.

    py-spy samples from outside the process (no changes to the server), but its sampling still
    costs the server some CPU: figures from a profiled run are a little low.
    """

    def __init__(self, directory: Path | None, name: str, pid: int) -> None:
        self.output = directory / f"{name}.txt" if directory else None
        self.pid = pid
        self.proc: subprocess.Popen[bytes] | None = None
        self.summary: dict[str, Any] | None = None

    def __enter__(self) -> Profile:
        if self.output is not None:
            py_spy = Path(sys.executable).parent / "py-spy"
            # --gil: only samples of a thread holding the GIL, i.e. the event loop's CPU time,
            # not threads waiting in epoll or on a queue (SQLite's C work, run without the GIL,
            # is left out). --native: C frames too, so the garbage collector (gc_collect_main),
            # OpenSSL and the write(2) calls uvloop makes while holding the GIL show up.
            command = [str(py_spy), "record", "--pid", str(self.pid), "--rate", "200", "--gil"]
            command += ["--native"]
            command += ["--format", "raw", "--output", str(self.output)]
            self.proc = subprocess.Popen(
                command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            time.sleep(1.0)  # Let py-spy attach before the phase starts.
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is None or self.output is None:
            return
        # On SIGINT py-spy stops sampling and writes what it has.
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.output.exists():
            self.summary = summarise_profile(self.output)


# Where a sample's time went, by the native frames in its stack (first match wins).
NATIVE_CATEGORIES = (
    ("cyclic garbage collector", ("gc_collect_main",)),
    ("write(2) syscalls (uvloop, GIL held)", ("write (libc", "writev (libc", "sendmsg (libc")),
    ("OpenSSL", ("(libssl", "(libcrypto", "(_ssl.c")),
    ("SQLite C code", ("(libsqlite3", "(cursor.c", "(connection.c")),
)


def summarise_profile(path: Path, top: int = 15) -> dict[str, Any]:
    """Hottest functions, from py-spy's collapsed stacks, as percentages of all samples.

    `own`: the frame a sample was taken in (native frames included). `inclusive`: functions of
    the server and of uvicorn on the stack. `native`: samples whose stack holds the garbage
    collector, a write(2) call, OpenSSL or SQLite.
    """
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    native: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit() or not stack:
            continue
        count = int(count_text)
        # Frames look like "function (file.py:123)"; the line number is dropped so that one
        # function counts once.
        frames = [
            frame.rsplit(":", 1)[0] + ")" if ":" in frame else frame for frame in stack.split(";")
        ]
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            if "(hypermesh/" in frame or "(uvicorn/" in frame:
                inclusive[frame] += count
        for category, markers in NATIVE_CATEGORIES:
            if any(marker in frame for frame in frames for marker in markers):
                native[category] += count
                break

    def shares(counter: collections.Counter[str]) -> list[dict[str, Any]]:
        return [
            {"function": name, "percent": round(100 * n / total, 1)}
            for name, n in counter.most_common(top)
        ]

    return {
        "samples": total,
        "file": str(path),
        "native": {name: round(100 * n / total, 1) for name, n in native.most_common()},
        "own": shares(own),
        "inclusive": shares(inclusive),
    }


# The measurements


def bench_create(
    server: HypermeshServer, args: argparse.Namespace, limits: dict[str, Any]
) -> dict[str, Any]:
    """Workload creates/s and their p99 from 64 clients."""
    create_namespace(server, "bench-create")
    plan = LoadPlan(
        "POST", workloads("bench-create"), WORKLOAD, 201, prefix="w", duration=args.duration
    )
    with Profile(args.py_spy, "create", server.process.pid) as profile:
        result = load(server, plan, args)
    if profile.summary:
        result["profile"] = profile.summary
    trivial = limits["trivial_tls"]
    tls_limit = _common.limit(
        trivial["requests_per_s"],
        "requests/s",
        "trivial ASGI app, same TLS listener and client harness",
    )
    sqlite_limit = _common.limit(
        round(limits["raw_sqlite_rows_per_s"]),
        "rows/s",
        "raw sqlite3, WAL, synchronous=FULL, 100 rows per transaction",
    )
    rate = _common.measurement(
        what="Workload creates per second, 64 concurrent TLS clients",
        figure=result["requests_per_s"] if not result["errors"] else None,
        unit="creates/s",
        target=TARGET_CREATES_PER_S,
        comparison=">=",
        limits={"trivial_tls": tls_limit, "raw_sqlite": sqlite_limit},
        details=result,
    )
    p99 = _common.measurement(
        what="Workload create latency p99 under the same load",
        figure=result["latency_ms"]["p99"],
        unit="ms",
        target=TARGET_CREATE_P99_MS,
        comparison="<=",
        limits={
            "trivial_tls_p99": _common.limit(
                trivial["latency_ms"]["p99"], "ms", "p99 of the trivial app, same harness"
            )
        },
        details={"latency_ms": result["latency_ms"]},
    )
    return {"create_rate": rate, "create_p99": p99}


def bench_get(
    server: HypermeshServer, args: argparse.Namespace, limits: dict[str, Any]
) -> dict[str, Any]:
    """Gets by name/s from 64 clients, over objects created for the purpose."""
    create_namespace(server, "bench-get")
    objects = args.get_objects
    populate(server, args, path=workloads("bench-get"), body=WORKLOAD, prefix="g", count=objects)
    # `populate` names objects g-<client>-<n>, n counting per client from 0.
    clients = args.processes * args.connections
    names = tuple(f"g-{c}-{n}" for c in range(clients) for n in range(objects // clients))
    plan = LoadPlan("GET", workloads("bench-get") + "/{name}", names=names, duration=args.duration)
    with Profile(args.py_spy, "get", server.process.pid) as profile:
        result = load(server, plan, args)
    if profile.summary:
        result["profile"] = profile.summary
    trivial = limits["trivial_tls"]
    return {
        "get_rate": _common.measurement(
            what="Workload gets by name per second, 64 concurrent TLS clients",
            figure=result["requests_per_s"] if not result["errors"] else None,
            unit="gets/s",
            target=TARGET_GETS_PER_S,
            comparison=">=",
            limits={
                "trivial_tls": _common.limit(
                    trivial["requests_per_s"],
                    "requests/s",
                    "trivial ASGI app, same TLS listener and client harness",
                )
            },
            details={**result, "distinct_objects": len(names)},
        )
    }


def bench_list(server: HypermeshServer, args: argparse.Namespace) -> dict[str, Any]:
    """A whole list of N Workloads in one response (no limit), median of 5."""
    namespace = "bench-list"
    create_namespace(server, namespace)
    populate(
        server, args, path=workloads(namespace), body=WORKLOAD, prefix="l", count=args.list_objects
    )
    connection = server.connect()
    timings, bodies = [], []
    try:
        with Profile(args.py_spy, "list", server.process.pid) as profile:
            for _ in range(5):
                began = time.monotonic()
                status, body = connection.request("GET", workloads(namespace))
                timings.append(time.monotonic() - began)
                if status != 200:
                    raise RuntimeError(f"list: {status} {body[:300]!r}")
                bodies.append(body)
    finally:
        connection.close()
    items = orjson.loads(bodies[-1])["items"]
    if len(items) != args.list_objects:
        raise RuntimeError(f"list returned {len(items)} items, expected {args.list_objects}")
    median = statistics.median(timings)
    encoded = [orjson.dumps(item) for item in items]
    response_bytes, listed = len(bodies[-1]), len(items)
    del items, bodies  # Parsed objects left alive would slow the garbage collector below.
    details: dict[str, Any] = {
        "objects": listed,
        "response_bytes": response_bytes,
        "timings_ms": [_common.ms(t, 1) for t in timings],
    }
    if profile.summary:
        details["profile"] = profile.summary
    return {
        "list": _common.measurement(
            what=f"list of {listed} Workloads in one request (median of 5)",
            figure=_common.ms(median, 1),
            unit="ms",
            target=TARGET_LIST_MS,
            comparison="<=",
            limits={
                "raw_sqlite_read": _common.limit(
                    _common.ms(sqlite_read(encoded), 1),
                    "ms",
                    "sqlite3 SELECT of the same objects' bytes",
                ),
                "orjson_roundtrip": _common.limit(
                    _common.ms(orjson_roundtrip(encoded, collect=True), 1),
                    "ms",
                    "orjson decode of each object + encode of the list",
                ),
                "orjson_roundtrip_gc_off": _common.limit(
                    _common.ms(orjson_roundtrip(encoded, collect=False), 1),
                    "ms",
                    "the same with Python's cyclic garbage collector disabled",
                ),
            },
            details=details,
        )
    }


def sqlite_read(values: list[bytes]) -> float:
    """Median seconds for plain sqlite3 to read `values` back from one table, in key order."""
    with tempfile.TemporaryDirectory(prefix="hypermesh-bench-sqlite-") as tmp:
        conn = sqlite3.connect(Path(tmp) / "read.db", isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("CREATE TABLE t (key TEXT PRIMARY KEY, value BLOB) WITHOUT ROWID")
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO t VALUES (?, ?)", ((f"/k/{i:06d}", v) for i, v in enumerate(values))
        )
        conn.execute("COMMIT")
        timings = []
        for _ in range(5):
            began = time.monotonic()
            rows = conn.execute("SELECT value FROM t ORDER BY key").fetchall()
            timings.append(time.monotonic() - began)
        conn.close()
    assert len(rows) == len(values)
    return statistics.median(timings)


def orjson_roundtrip(values: list[bytes], *, collect: bool) -> float:
    """Median seconds to decode every object and encode them as one list.

    Decoding 10,000 objects allocates a few hundred thousand dicts, which sets off the cyclic
    garbage collector several times; `collect=False` measures the work without it.
    """
    timings = []
    try:
        if not collect:
            gc.disable()
        for _ in range(5):
            began = time.monotonic()
            orjson.dumps({"items": [orjson.loads(v) for v in values]})
            timings.append(time.monotonic() - began)
    finally:
        gc.enable()
    return statistics.median(timings)


class _WatchProtocol(asyncio.Protocol):
    """One watch stream, timing each ADDED event at the moment its bytes arrive.

    A callback protocol rather than asyncio streams: a thousand streams in one process must not
    make the client, rather than the server, the slow part. Chunked framing is not parsed: the
    server writes whole event lines per chunk, so after splitting on newlines the chunk-size
    lines and chunk ends are the pieces that do not start with "{".
    """

    def __init__(self, request: bytes, on_added: Any) -> None:
        self.request = request
        self.on_added = on_added
        self.buffer = b""
        self.headers: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.headers.done():
            self.headers.set_exception(ConnectionError(f"watch stream closed: {exc}"))

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        self.buffer += data
        if not self.headers.done():
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status_line = self.buffer.split(b"\r\n", 1)[0]
            if b" 200 " not in status_line:
                self.headers.set_exception(RuntimeError(f"watch answered {status_line!r}"))
                return
            self.buffer = self.buffer[end + 4 :]
            self.headers.set_result(None)
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            if line.startswith(b'{"type":"ADDED"'):
                self.on_added(orjson.loads(line)["object"]["metadata"]["name"], now)


def _watch_process(
    port: int, pki: Pki, path: str, count: int, established: Any, events: Any, stop: Any
) -> None:
    """`count` watch streams on `path` in one uvloop process; reports when each name arrived
    on all of them (monotonic clock, shared by every process on the machine)."""
    import uvloop

    async def main() -> None:
        context = pki.client_context()
        request = (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: {_common.USER_AGENT}\r\n"
            "Accept: application/json\r\n\r\n"
        ).encode()
        loop = asyncio.get_running_loop()
        gate = asyncio.Semaphore(32)
        seen: dict[str, list[float]] = {}

        def on_added(name: str, at: float) -> None:
            times = seen.setdefault(name, [])
            times.append(at)
            if len(times) == count:
                events.put((name, times))

        async def open_stream() -> _WatchProtocol:
            async with gate:
                protocol = _WatchProtocol(request, on_added)
                await loop.create_connection(
                    lambda: protocol, "127.0.0.1", port, ssl=context, server_hostname="127.0.0.1"
                )
                await asyncio.wait_for(protocol.headers, 60)
                return protocol

        streams = await asyncio.gather(*(open_stream() for _ in range(count)))
        established.put(len(streams))
        await loop.run_in_executor(None, stop.wait)
        for protocol in streams:
            protocol.transport.close()

    uvloop.run(main())


def bench_watch(server: HypermeshServer, args: argparse.Namespace) -> dict[str, Any]:
    """Delay until every one of N watchers of a namespace has an object's ADDED event."""
    namespace = "bench-watch"
    create_namespace(server, namespace)
    path = workloads(namespace)
    revision = list_revision(server, path)
    context = multiprocessing.get_context("fork")
    established, events, stop = context.Queue(), context.Queue(), context.Event()
    shares = [args.watchers // args.watch_processes] * args.watch_processes
    shares[0] += args.watchers - sum(shares)
    watch_path = f"{path}?watch=true&resourceVersion={revision}"
    workers = [
        context.Process(
            target=_watch_process,
            args=(server.port, server.pki, watch_path, n, established, events, stop),
            daemon=True,
        )
        for n in shares
    ]
    setup_began = time.monotonic()
    for worker in workers:
        worker.start()
    try:
        opened = sum(established.get(timeout=300) for _ in workers)
        setup_s = time.monotonic() - setup_began
        time.sleep(args.settle)
        connection = server.connect()
        delays: list[float] = []
        posts: list[float] = []
        rounds: list[dict[str, Any]] = []
        missing = 0
        clients = [psutil.Process(worker.pid) for worker in workers]
        server_cpu = client_cpu = 0.0
        with Profile(args.py_spy, "watch", server.process.pid) as profile:
            for k in range(args.watch_rounds):
                name = f"round-{k}"
                body = WORKLOAD.replace(b"{name}", name.encode())
                cpu_before = (server.cpu_seconds(), sum(map(_common.process_cpu_seconds, clients)))
                began = time.monotonic()
                status, answer = connection.request("POST", path, body)
                posts.append(time.monotonic() - began)
                if status != 201:
                    raise RuntimeError(f"create {name}: {status} {answer[:300]!r}")
                got: list[float] = []
                reported = 0
                try:
                    while reported < len(workers):
                        seen_name, times = events.get(timeout=30)
                        if seen_name == name:
                            got += [t - began for t in times]
                            reported += 1
                except queue.Empty:
                    pass
                server_cpu += server.cpu_seconds() - cpu_before[0]
                client_cpu += sum(map(_common.process_cpu_seconds, clients)) - cpu_before[1]
                missing += opened - len(got)
                delays += got
                rounds.append(
                    {
                        "p50_ms": _common.ms(_common.percentile(got, 0.5)),
                        "p99_ms": _common.ms(_common.percentile(got, 0.99)),
                        "max_ms": _common.ms(max(got) if got else None),
                    }
                )
                time.sleep(args.settle / 2)
        connection.close()
    finally:
        stop.set()
        for worker in workers:
            worker.join(30)
            if worker.is_alive():
                worker.terminate()
    p99 = _common.percentile(delays, 0.99)
    return {
        "watch_fanout": _common.measurement(
            what=f"{opened} watchers all receive a new object: delay p99 from just before the POST",
            figure=_common.ms(p99) if not missing else None,
            unit="ms",
            target=TARGET_WATCH_P99_MS,
            comparison="<=",
            limits={
                "create_latency": _common.limit(
                    _common.ms(statistics.median(posts)),
                    "ms",
                    "median time for the POST itself to return, same rounds",
                )
            },
            details={
                "watchers": opened,
                "client_processes": len(workers),
                "rounds": rounds,
                "delay_ms": {
                    "p50": _common.ms(_common.percentile(delays, 0.5)),
                    "p99": _common.ms(p99),
                    "max": _common.ms(max(delays) if delays else None),
                },
                "events_missing": missing,
                "setup_seconds": round(setup_s, 2),
                # Who spent the time: CPU per round (one create, N events), server and watchers.
                "server_cpu_ms_per_round": _common.ms(server_cpu / max(1, len(rounds))),
                "watcher_clients_cpu_ms_per_round": _common.ms(client_cpu / max(1, len(rounds))),
                **({"profile": profile.summary} if profile.summary else {}),
            },
        )
    }


def bench_memory(args: argparse.Namespace) -> dict[str, Any]:
    """RSS of a fresh server holding N Instances: idle, after a paginated list, while watched."""
    mib = 2**20
    with HypermeshServer(label="memory") as server:
        time.sleep(args.settle)
        baseline = server.rss_bytes()
        namespace = "bench-memory"
        create_namespace(server, namespace)
        created = populate(
            server,
            args,
            path=instances(namespace),
            body=INSTANCE,
            prefix="i",
            count=args.memory_objects,
            seconds=args.memory_seconds,
        )
        held = created["requests"]
        time.sleep(2 * args.settle)
        states: dict[str, dict[str, Any]] = {"idle": {"rss_bytes": server.rss_bytes()}}

        # A paginated list of them all, as an informer's first list does.
        connection = server.connect()
        pages, items, json_bytes, token = 0, 0, 0, ""
        with (
            _common.RssSampler(server.process) as sampler,
            Profile(args.py_spy, "paginate", server.process.pid) as paginate_profile,
        ):
            began = time.monotonic()
            while True:
                query = f"?limit=500&continue={token}" if token else "?limit=500"
                status, body = connection.request("GET", instances(None) + query)
                if status != 200:
                    raise RuntimeError(f"paginated list: {status} {body[:300]!r}")
                page = orjson.loads(body)
                pages += 1
                items += len(page["items"])
                json_bytes += sum(len(orjson.dumps(item)) for item in page["items"])
                token = page["metadata"].get("continue") or ""
                if not token:
                    break
        revision = page["metadata"]["resourceVersion"]
        list_s = time.monotonic() - began
        time.sleep(args.settle)
        states["after_paginated_list"] = {
            "rss_bytes": server.rss_bytes(),
            "peak_rss_bytes": sampler.peak,
            "pages": pages,
            "items": items,
            "seconds": round(list_s, 2),
            **({"profile": paginate_profile.summary} if paginate_profile.summary else {}),
        }
        connection.close()

        # An informer's watch, from the revision of that list.
        watch = server.connect()
        watch.sock.sendall(
            f"GET {instances(None)}?watch=true&resourceVersion={revision} HTTP/1.1\r\n"
            f"Host: 127.0.0.1\r\nUser-Agent: {_common.USER_AGENT}\r\n\r\n".encode()
        )
        status, _ = watch.read_head()
        time.sleep(args.settle)
        states["with_informer_watch"] = {"rss_bytes": server.rss_bytes(), "status": status}
        watch.close()

        # A watch without a revision: the server replays every object as ADDED first.
        watch = server.connect()
        watch.sock.sendall(
            f"GET {instances(None)}?watch=true HTTP/1.1\r\n"
            f"Host: 127.0.0.1\r\nUser-Agent: {_common.USER_AGENT}\r\n\r\n".encode()
        )
        with (
            _common.RssSampler(server.process) as sampler,
            Profile(args.py_spy, "replay", server.process.pid) as replay_profile,
        ):
            status, _ = watch.read_head()
            replayed = 0
            for line in _common.iter_lines(watch):
                if line.startswith(b'{"type":"ADDED"'):
                    replayed += 1
                if replayed >= held:
                    break
        time.sleep(args.settle)
        states["with_replaying_watch"] = {
            "rss_bytes": server.rss_bytes(),
            "peak_rss_bytes": sampler.peak,
            "events_replayed": replayed,
            "status": status,
            **({"profile": replay_profile.summary} if replay_profile.summary else {}),
        }
        watch.close()
        time.sleep(args.settle)
        states["after_watches_closed"] = {"rss_bytes": server.rss_bytes()}

    # What the objects weigh as compact JSON: a floor for any server that holds them all.
    one_object = json_bytes / items if items else 0.0
    extrapolated = held < MEMORY_OBJECTS
    scale = MEMORY_OBJECTS / held if held else 0.0

    def at_target_count(rss: int) -> float:
        return (baseline + (rss - baseline) * scale) / mib if extrapolated else rss / mib

    for state in states.values():
        state["rss_mib"] = round(state["rss_bytes"] / mib, 1)
        if "peak_rss_bytes" in state:
            # The sampler may miss the last allocations of a phase.
            state["peak_rss_bytes"] = max(state["peak_rss_bytes"], state["rss_bytes"])
            state["peak_rss_mib"] = round(state["peak_rss_bytes"] / mib, 1)
        state[f"rss_mib_at_{MEMORY_OBJECTS}"] = round(at_target_count(state["rss_bytes"]), 1)
    worst_state = max(states, key=lambda s: states[s]["rss_bytes"])
    figure = at_target_count(states[worst_state]["rss_bytes"])
    return {
        "memory": _common.measurement(
            what=f"server RSS holding {MEMORY_OBJECTS} Instances (worst of the states measured)",
            figure=round(figure, 1),
            unit="MiB",
            target=TARGET_MEMORY_MIB,
            comparison="<=",
            limits={
                "empty_server_rss": _common.limit(
                    round(baseline / mib, 1), "MiB", "RSS of the same server, fresh, no objects"
                ),
                "objects_as_json": _common.limit(
                    round(MEMORY_OBJECTS * one_object / mib, 1),
                    "MiB",
                    "the objects as compact JSON, as listed",
                ),
            },
            details={
                "objects_created": held,
                "create_rate_per_s": created["requests_per_s"],
                "create_seconds": created["seconds"],
                "extrapolated": extrapolated,
                "extrapolation": (
                    f"linear from {held} objects: baseline + (rss - baseline) * "
                    f"{MEMORY_OBJECTS}/{held}"
                    if extrapolated
                    else None
                ),
                "worst_state": worst_state,
                "states": states,
            },
        )
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line, with the sizes of a full or a --quick run filled in."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke run")
    parser.add_argument(
        "--only",
        default=",".join(MEASUREMENTS),
        help=f"comma-separated subset of {','.join(MEASUREMENTS)}",
    )
    parser.add_argument("--duration", type=float, help="seconds of each create/get phase")
    parser.add_argument("--processes", type=int, default=4, help="client processes")
    parser.add_argument("--connections", type=int, default=16, help="connections per process")
    parser.add_argument("--get-objects", type=int, help="objects the get phase reads")
    parser.add_argument("--list-objects", type=int, help="objects in the listed namespace")
    parser.add_argument("--watchers", type=int, help="concurrent watch streams")
    parser.add_argument("--watch-processes", type=int, default=2)
    parser.add_argument("--watch-rounds", type=int, help="objects created while watched")
    parser.add_argument("--memory-objects", type=int, help="Instances created for the memory phase")
    parser.add_argument(
        "--memory-seconds", type=float, help="stop creating after this long and extrapolate"
    )
    parser.add_argument(
        "--py-spy",
        type=Path,
        metavar="DIR",
        help="profile the server with py-spy during each phase, into DIR",
    )
    parser.add_argument("--settle", type=float, help="seconds of quiet between steps")
    parser.add_argument("--output", type=Path, help="also write the JSON to this file")
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = {
        "duration": 1.5 if quick else 10.0,
        "get_objects": 640 if quick else 6400,
        "list_objects": 1_000 if quick else 10_000,
        "watchers": 100 if quick else 1_000,
        "watch_rounds": 2 if quick else 5,
        "memory_objects": 2_000 if quick else MEMORY_OBJECTS,
        "memory_seconds": 20.0 if quick else 180.0,
        # Seconds to let the server settle between steps (memory readings, watch rounds).
        "settle": 0.2 if quick else 1.0,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(args.only) - set(MEASUREMENTS)
    if unknown:
        parser.error(f"--only: unknown {sorted(unknown)}; choose from {', '.join(MEASUREMENTS)}")
    if args.py_spy:
        args.py_spy.mkdir(parents=True, exist_ok=True)
    return args


def main() -> None:
    """Measure what --only asks for and print the report."""
    args = parse_args()
    report: dict[str, Any] = {
        "benchmark": "api",
        "started": _common.now_iso(),
        "machine": _common.machine_info(),
        "code": _common.code_version(),
        "quick": args.quick,
        "client": {"processes": args.processes, "connections_per_process": args.connections},
        "profiled_with_py_spy": bool(args.py_spy),
    }
    began = time.monotonic()
    limits: dict[str, Any] = {}
    if "create" in args.only:
        limits["raw_sqlite_rows_per_s"] = limit_raw_sqlite(1.0 if args.quick else 2.0)
    if {"create", "get"} & set(args.only):
        limits["trivial_tls"] = limit_trivial_tls(args, args.duration)
    report["limits_measured"] = {
        key: round(value) if isinstance(value, float) else value for key, value in limits.items()
    }
    measurements: dict[str, Any] = {}
    if {"create", "get", "list", "watch"} & set(args.only):
        with HypermeshServer() as server:
            if "create" in args.only:
                measurements.update(bench_create(server, args, limits))
            if "get" in args.only:
                measurements.update(bench_get(server, args, limits))
            if "list" in args.only:
                measurements.update(bench_list(server, args))
            if "watch" in args.only:
                measurements.update(bench_watch(server, args))
    if "memory" in args.only:
        measurements.update(bench_memory(args))
    report["measurements"] = measurements
    report["all_targets_met"] = all(m["meets_target"] for m in measurements.values())
    report["finished"] = _common.now_iso()
    report["seconds"] = round(time.monotonic() - began, 1)
    text = json.dumps(report, indent=2)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    os.environ.setdefault("HYPERMESH_LOG_LEVEL", "WARNING")
    main()
