"""Request rate of the two listeners with a trivial app, and the server CPU each request costs.

The server runs in its own process (uvloop, both listeners, mutual TLS with the admin
certificate) so its CPU time can be read apart from the load generators'. HTTP/1.1 load comes
from several processes of plain `http.client` keep-alive connections (httpx is far too slow to
load a server); HTTP/3 load from processes running `H3Client` with many concurrent streams on
one connection each. On a 2-core machine the clients compete with the server for CPU, so the
figures are a floor, not the server's ceiling.

    .venv/bin/python bench/transport_bench.py [--duration 5] [--tcp-clients 4] [--h3-clients 2]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import multiprocessing
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hypermesh.pki import ensure_server_pki
from hypermesh.transport.asgi import IDENTITY_SCOPE_KEY

# Targets are on server capacity (requests per second per fully used core, i.e. 1 / server CPU
# seconds per request), because on 2 cores the Python load generators saturate the machine
# before the server does. uvicorn without the identity subclass measures ~13k/core here, raw
# aioquic ~6k/core (MACHINE.md); the targets leave room for noise on a shared machine.
TARGET_TCP_PER_CORE = 10_000
TARGET_H3_PER_CORE = 3_000


async def trivial_app(scope: Any, receive: Any, send: Any) -> None:
    identity = scope[IDENTITY_SCOPE_KEY]
    body = identity.user.encode() if identity else b"anonymous"
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))],
        }
    )
    await send({"type": "http.response.body", "body": body})


# The server process


def serve(port: int, data_dir: Path) -> None:
    import uvloop

    from hypermesh.transport.h3 import serve_h3
    from hypermesh.transport.tcp import serve_tcp

    pki = ensure_server_pki(data_dir)

    async def main() -> None:
        shutdown = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, shutdown.set)
        ready_tcp, ready_h3 = asyncio.Event(), asyncio.Event()
        files = {
            "certfile": pki.server_cert_path,
            "keyfile": pki.server_key_path,
            "cafile": pki.ca_cert_path,
        }
        tasks = [
            asyncio.create_task(
                serve_tcp(
                    trivial_app,
                    host="127.0.0.1",
                    port=port,
                    ready=ready_tcp,
                    shutdown=shutdown,
                    **files,
                )
            ),
            asyncio.create_task(
                serve_h3(
                    trivial_app,
                    host="127.0.0.1",
                    port=port,
                    ready=ready_h3,
                    shutdown=shutdown,
                    **files,
                )
            ),
        ]
        await ready_tcp.wait()
        await ready_h3.wait()
        print("READY", flush=True)
        await asyncio.gather(*tasks)

    uvloop.run(main())


# Load generators (each runs in its own process)


def tcp_worker(port: int, pki_dir: str, duration: float, results: Any) -> None:
    context = ssl.create_default_context(cafile=f"{pki_dir}/ca.crt")
    context.load_cert_chain(f"{pki_dir}/admin.crt", f"{pki_dir}/admin.key")
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context)
    count = 0
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        connection.request("GET", "/")
        response = connection.getresponse()
        if response.read() != b"admin":
            raise RuntimeError("the app did not see the admin identity")
        count += 1
    connection.close()
    results.put(count)


def h3_worker(port: int, pki_dir: str, duration: float, concurrency: int, results: Any) -> None:
    import uvloop

    from hypermesh.transport.h3client import H3Client

    async def main() -> int:
        client = H3Client(
            "127.0.0.1",
            port,
            cafile=f"{pki_dir}/ca.crt",
            certfile=f"{pki_dir}/admin.crt",
            keyfile=f"{pki_dir}/admin.key",
        )
        deadline = time.monotonic() + duration

        async def loop() -> int:
            count = 0
            while time.monotonic() < deadline:
                status, _, body = await client.request("GET", "/")
                if status != 200 or body != b"admin":
                    raise RuntimeError(f"unexpected answer {status} {body!r}")
                count += 1
            return count

        async with client:
            return sum(await asyncio.gather(*(loop() for _ in range(concurrency))))

    results.put(uvloop.run(main()))


def run_load(target: Any, workers: int, args: tuple[Any, ...], server: psutil.Process) -> dict:
    results: Any = multiprocessing.Queue()
    processes = [
        multiprocessing.Process(target=target, args=(*args, results)) for _ in range(workers)
    ]
    cpu_before = sum(server.cpu_times()[:2])
    started = time.monotonic()
    for process in processes:
        process.start()
    total = sum(results.get(timeout=120) for _ in processes)
    elapsed = time.monotonic() - started
    for process in processes:
        process.join()
    cpu = sum(server.cpu_times()[:2]) - cpu_before
    return {
        "requests": total,
        "requests_per_s": round(total / elapsed),
        "server_cpu_s_per_request": round(cpu / total, 7) if total else None,
        "server_capacity_per_core_rps": round(total / cpu) if cpu else None,
        "server_cpu_utilisation": round(cpu / elapsed, 2),
        "client_processes": workers,
    }


def free_port() -> int:
    with socket.socket() as tcp, socket.socket(type=socket.SOCK_DGRAM) as udp:
        tcp.bind(("127.0.0.1", 0))
        port = tcp.getsockname()[1]
        udp.bind(("127.0.0.1", port))
        return port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--tcp-clients", type=int, default=4)
    parser.add_argument("--h3-clients", type=int, default=2)
    parser.add_argument("--h3-concurrency", type=int, default=32)
    parser.add_argument("--serve", nargs=2, metavar=("PORT", "DATA_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(int(args.serve[0]), Path(args.serve[1]))
        return

    with tempfile.TemporaryDirectory() as data_dir:
        pki = ensure_server_pki(Path(data_dir))
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(port), data_dir],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout is not None
            if server.stdout.readline().strip() != "READY":
                raise RuntimeError("benchmark server did not start")
            process = psutil.Process(server.pid)
            pki_dir = str(pki.directory)
            tcp = run_load(tcp_worker, args.tcp_clients, (port, pki_dir, args.duration), process)
            h3 = run_load(
                h3_worker,
                args.h3_clients,
                (port, pki_dir, args.duration, args.h3_concurrency),
                process,
            )
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
    h3["concurrent_streams_per_client"] = args.h3_concurrency
    report = {
        "benchmark": "transport",
        "cpus": os.cpu_count(),
        "tcp_tls_http1": {**tcp, "target_capacity_per_core_rps": TARGET_TCP_PER_CORE},
        "quic_http3": {**h3, "target_capacity_per_core_rps": TARGET_H3_PER_CORE},
        "ok": (tcp["server_capacity_per_core_rps"] or 0) >= TARGET_TCP_PER_CORE
        and (h3["server_capacity_per_core_rps"] or 0) >= TARGET_H3_PER_CORE,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
