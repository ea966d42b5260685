"""Certificate rotation under load: failed requests (target 0) and renewal latency (target <= 2 s).

A real `hypermesh server` (controllers on, so CSRs are signed and Certificates renewed inside
it) whose serving certificate lives `--serving-lifetime` seconds (renewed at two thirds, so
several times during the run). Three things happen at once for `--duration` seconds:

- load at `--rate` requests/s (500 by default): 100 node identities, each with a certificate of
  the cluster CA and its own keep-alive client, GET their own Node (90 % of the requests), and a
  few clients open a new connection for every request with the admin kubeconfig read afresh
  (10 %), so new handshakes meet every new serving certificate;
- each of the 100 nodes renews its certificate once, at a random moment, exactly as an agent
  does (`CertificateRotation.renew`: a CSR authenticated by the old certificate, signed by the
  csrsigning controller, then `use_client_certificate`, after which new connections present the
  new certificate and those in use finish on the old one);
- `--certificates` Certificates with a 6 s lifetime renew every 4 s; each renewal's latency is
  the time from the `status.renewalTime` of the revision it replaces to the moment the new
  revision is seen in a watch.

Figures:
- `failed_requests`: requests of the load that did not get 200 (errors and exceptions), target
  0; beside it the rate this machine sustains with the same clients and no pacing (measured
  first, the limit) and the rate achieved while rotating;
- `renewal_latency`: the largest renewal latency seen, target 2 s (p50 and p99 in details);
  beside it the time this machine takes to generate a key and sign one certificate.

    .venv/bin/python bench/rotation_bench.py [--quick] [--rate 500] [--duration 30]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import _common  # noqa: E402
from _common import HYPERMESH, HypermeshServer, limit, measurement, ms, percentile  # noqa: E402

from hypermesh.client.aio import AsyncClient  # noqa: E402
from hypermesh.client.config import load_config  # noqa: E402
from hypermesh.client.errors import ApiError, ClientError  # noqa: E402
from hypermesh.client.kinds import NODES  # noqa: E402
from hypermesh.client.resources import Resource  # noqa: E402
from hypermesh.pki import CertificateAuthority, csr, keys  # noqa: E402
from hypermesh.pki.profile import LeafRequest  # noqa: E402
from hypermesh.runtime import join  # noqa: E402
from hypermesh.runtime.rotation import CertificateRotation  # noqa: E402

TARGET_FAILED = 0
TARGET_RENEWAL_S = 2.0
NODES_COUNT = 100
FRESH_SHARE = 0.1
NAMESPACES = Resource(group="", version="v1", kind="Namespace", plural="namespaces", singular="namespace", namespaced=False)
CERTIFICATES = Resource(
    group="hypermesh.io", version="v1", kind="Certificate", plural="certificates", singular="certificate",
    namespaced=True, subresources=("status",),
)  # fmt: skip
NAMESPACE = "bench-rotation"


class RotatingServer(HypermeshServer):
    """The benchmark's server: controllers on, a short-lived serving certificate."""

    def __init__(self, serving_lifetime: float) -> None:
        super().__init__(label="rotation")
        self.serving_lifetime = serving_lifetime

    def start(self, timeout: float = 60.0) -> None:
        log = open(self.tmp / "server.log", "a")
        self.proc = subprocess.Popen(
            [str(HYPERMESH), "server", "--data-dir", str(self.data_dir), "--listen", f"127.0.0.1:{self.port}",
             "--serving-cert-lifetime", f"{self.serving_lifetime:g}s"],
            stdout=subprocess.PIPE, stderr=log, text=True,
            env={**os.environ, "HYPERMESH_LOG_LEVEL": os.environ.get("HYPERMESH_LOG_LEVEL", "INFO"),
                 "HYPERMESH_CERTIFICATE_MIN_DURATION": "1s"},
        )  # fmt: skip
        log.close()
        _common.wait_for_line(self.proc, "ready", timeout, self.tmp / "server.log")
        import psutil

        self.ps = psutil.Process(self.proc.pid)

    def serving_renewals(self) -> int:
        """How many times the server logged a renewed serving certificate."""
        return (self.tmp / "server.log").read_text().count("serving certificate renewed")


# The 100 nodes


class Node:
    """One node identity: its certificate, its client, its renewal."""

    def __init__(self, name: str, credentials: join.NodeCredentials, directory: Path) -> None:
        self.name = name
        self.path = directory / f"{name}.kubeconfig"
        join.write_credentials(self.path, credentials, name)
        self.client = AsyncClient.from_config(credentials.config(self.path), pool_size=2, timeout=30)
        self.rotation = CertificateRotation(self.client, credentials, node_name=name, path=self.path)


def issue_nodes(ca: CertificateAuthority, server: str, directory: Path) -> list[Node]:
    """100 node certificates straight from the intermediate (as if the nodes had joined)."""
    nodes = []
    for index in range(NODES_COUNT):
        name = f"bench-{index}"
        key = keys.generate()
        request = LeafRequest(
            common_name=join.node_user(name), organizations=(csr.NODES_GROUP,),
            usages=frozenset({"digital signature", "client auth"}), lifetime=datetime.timedelta(hours=1),
            backdate=datetime.timedelta(minutes=1),
        )  # fmt: skip
        leaf = ca.sign(request, key.public_key())
        chain = leaf.public_bytes(_pem()) + ca.chain_pem
        credentials = join.NodeCredentials(server, ca.cert_pem, chain, keys.to_pem(key), leaf)
        nodes.append(Node(name, credentials, directory))
    return nodes


def _pem() -> Any:
    from cryptography.hazmat.primitives.serialization import Encoding

    return Encoding.PEM


# The load


class Tally:
    """Outcomes of the load's requests."""

    def __init__(self) -> None:
        self.ok = 0
        self.failed: Counter[str] = Counter()
        self.latencies: list[float] = []

    def record(self, outcome: str | None, began: float) -> None:
        self.latencies.append(time.monotonic() - began)
        if outcome is None:
            self.ok += 1
        else:
            self.failed[outcome] += 1

    @property
    def total(self) -> int:
        return self.ok + sum(self.failed.values())


async def node_get(node: Node, tally: Tally) -> None:
    began = time.monotonic()
    try:
        await node.client.get(NODES, node.name)
    except ApiError as exc:
        tally.record(str(exc.status), began)
    except (ClientError, OSError) as exc:
        tally.record(exc.__class__.__name__, began)
    else:
        tally.record(None, began)


async def fresh_get(server: HypermeshServer, tally: Tally) -> None:
    """One request on a new connection, with the admin kubeconfig as it is now."""
    began = time.monotonic()
    client = AsyncClient.from_config(load_config(str(server.data_dir / "admin.kubeconfig")), pool_size=1)
    try:
        await client.get(NAMESPACES, "default")
    except ApiError as exc:
        tally.record(str(exc.status), began)
    except (ClientError, OSError) as exc:
        tally.record(exc.__class__.__name__, began)
    else:
        tally.record(None, began)
    finally:
        await client.aclose()


async def paced(rate: float, duration: float, send: Any) -> None:
    """Start `send()` `rate` times a second for `duration` seconds, not waiting for answers
    (an open-loop load: a slow server gets the same arrivals, as it would from real nodes)."""
    began = time.monotonic()
    pending: set[asyncio.Task[None]] = set()
    n = 0
    while True:
        at = began + n / rate
        if at - began >= duration:
            break
        delay = at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(send(n))
        pending.add(task)
        task.add_done_callback(pending.discard)
        n += 1
    if pending:
        await asyncio.wait(pending)


async def sustained_rate(nodes: list[Node], seconds: float) -> float:
    """Requests/s the 100 node clients get answered with no pacing (each waits for its answer)."""
    tally = Tally()
    stop = time.monotonic() + seconds

    async def loop(node: Node) -> None:
        while time.monotonic() < stop:
            await node_get(node, tally)

    began = time.monotonic()
    await asyncio.gather(*(loop(node) for node in nodes))
    return tally.ok / (time.monotonic() - began)


# Renewal latency


async def follow_renewals(admin: AsyncClient, latencies: list[float], stop: asyncio.Event) -> None:
    """Watch the Certificates; for each new revision, the delay since the old renewalTime."""
    last: dict[str, dict[str, Any]] = {}
    async for event in admin.watch(CERTIFICATES, NAMESPACE, bookmarks=False):
        seen_at = datetime.datetime.now(datetime.UTC)
        if stop.is_set():
            return
        obj = event.get("object") or {}
        name = (obj.get("metadata") or {}).get("name")
        status = obj.get("status") or {}
        revision = status.get("revision")
        if not name or not isinstance(revision, int):
            continue
        before = last.get(name)
        if before is not None and revision > before["revision"] and before.get("renewalTime"):
            due = datetime.datetime.fromisoformat(before["renewalTime"].replace("Z", "+00:00"))
            latencies.append((seen_at - due).total_seconds())
        if before is None or revision >= before["revision"]:
            last[name] = {"revision": revision, "renewalTime": status.get("renewalTime")}


def sign_cost(ca: CertificateAuthority, count: int = 20) -> float:
    """Seconds to generate an ECDSA key and sign one leaf here (the least a renewal costs)."""
    began = time.monotonic()
    for _ in range(count):
        key = keys.generate()
        ca.sign(LeafRequest(common_name="probe", lifetime=datetime.timedelta(hours=1)), key.public_key())
    return (time.monotonic() - began) / count


# The run


async def run(args: argparse.Namespace, server: RotatingServer) -> dict[str, Any]:
    ca = CertificateAuthority.load(server.data_dir / "pki")
    admin = AsyncClient.from_config(load_config(str(server.data_dir / "admin.kubeconfig")))
    work = Path(tempfile.mkdtemp(prefix="rotation-nodes-", dir=server.tmp))
    nodes = issue_nodes(ca, f"https://127.0.0.1:{server.port}", work)
    for node in nodes:
        await admin.create(NODES, {"apiVersion": "hypermesh.io/v1", "kind": "Node", "metadata": {"name": node.name}})
    await admin.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})

    limit_rate = await sustained_rate(nodes, args.limit_seconds)

    for index in range(args.certificates):
        await admin.create(CERTIFICATES, {
            "apiVersion": "hypermesh.io/v1", "kind": "Certificate",
            "metadata": {"name": f"c{index}", "namespace": NAMESPACE},
            "spec": {"secretName": f"c{index}-tls", "commonName": f"c{index}", "duration": "6s"},
        })  # fmt: skip
    latencies: list[float] = []
    stop_follow = asyncio.Event()
    follower = asyncio.create_task(follow_renewals(admin, latencies, stop_follow))
    await asyncio.sleep(2.0)  # the first issuances

    renewed: list[str] = []
    renewal_failures: list[str] = []

    async def renew(node: Node, at: float) -> None:
        await asyncio.sleep(at)
        try:
            await node.rotation.renew()
            renewed.append(node.name)
        except (join.JoinError, ClientError) as exc:
            renewal_failures.append(f"{node.name}: {exc}")

    tally = Tally()
    rng = random.Random(7)
    renewals_before = server.serving_renewals()
    cpu_before = server.cpu_seconds()
    fresh_every = max(1, round(1 / FRESH_SHARE))

    async def send(n: int) -> None:
        if n % fresh_every == 0:
            await fresh_get(server, tally)
        else:
            await node_get(nodes[n % len(nodes)], tally)

    began = time.monotonic()
    spread = max(1.0, args.duration - 3.0)
    await asyncio.gather(
        paced(args.rate, args.duration, send),
        *(renew(node, rng.uniform(1.0, spread)) for node in nodes),
    )
    elapsed = time.monotonic() - began
    cpu = server.cpu_seconds() - cpu_before
    serving_rotations = server.serving_renewals() - renewals_before
    stop_follow.set()
    follower.cancel()
    for node in nodes:
        await node.client.aclose()
    await admin.aclose()

    failed = sum(tally.failed.values())
    load_details = {
        "requests": tally.total,
        "ok": tally.ok,
        "errors": dict(tally.failed),
        "seconds": round(elapsed, 2),
        "target_rate_per_s": args.rate,
        "achieved_rate_per_s": round(tally.total / elapsed, 1) if elapsed else None,
        "fresh_connection_share": FRESH_SHARE,
        "latency_ms": {"p50": ms(percentile(tally.latencies, 0.5)), "p99": ms(percentile(tally.latencies, 0.99)), "max": ms(max(tally.latencies, default=0.0))},
        "server_cpu_cores": round(cpu / elapsed, 2) if elapsed else None,
        "serving_certificate_rotations": serving_rotations,
        "node_certificates_renewed": len(renewed),
        "node_renewal_failures": renewal_failures[:5],
    }
    renewal_details = {
        "renewals": len(latencies),
        "certificates": args.certificates,
        "lifetime_s": 6,
        "p50_s": _round(percentile(latencies, 0.5)),
        "p99_s": _round(percentile(latencies, 0.99)),
        "max_s": _round(max(latencies) if latencies else None),
        "note": "from status.renewalTime (whole seconds, as written) to the new revision seen in a watch, under the load above",
    }
    sign = sign_cost(ca)
    return {
        "failed_requests": measurement(
            what="requests failed while the serving certificate and 100 node certificates rotated",
            figure=failed if tally.total else None, unit="requests", target=TARGET_FAILED, comparison="<=",
            limits={
                "sustained_rate": limit(round(limit_rate, 1), "requests/s", "what the same 100 node clients get answered here without pacing, before the run"),
                "achieved_rate": limit(load_details["achieved_rate_per_s"], "requests/s", "the load actually offered during the rotations"),
            },
            details=load_details,
        ),
        "renewal_latency": measurement(
            what="Certificate renewal latency after its renewal time (the largest seen)",
            figure=renewal_details["max_s"], unit="s", target=TARGET_RENEWAL_S, comparison="<=",
            limits={"sign_one": limit(round(sign, 4), "s", "generating a P-256 key and signing one leaf in this process")},
            details=renewal_details,
        ),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run (for smoke tests)")
    parser.add_argument("--rate", type=float, default=500.0, help="offered requests/s (default 500)")
    parser.add_argument("--duration", type=float, default=None, help="seconds of load (default 30; 12 with --quick)")
    parser.add_argument("--serving-lifetime", type=float, default=None, help="serving certificate lifetime in s (default 12; 9 with --quick)")
    parser.add_argument("--certificates", type=int, default=None, help="Certificates renewing every 4 s (default 20; 5 with --quick)")
    parser.add_argument("--limit-seconds", type=float, default=None, help="seconds to measure the sustained rate (default 5; 2 with --quick)")
    args = parser.parse_args()
    args.duration = args.duration or (12.0 if args.quick else 30.0)
    args.serving_lifetime = args.serving_lifetime or (9.0 if args.quick else 12.0)
    args.certificates = args.certificates if args.certificates is not None else (5 if args.quick else 20)
    args.limit_seconds = args.limit_seconds or (2.0 if args.quick else 5.0)
    return args


def main() -> None:
    args = parse_args()
    report: dict[str, Any] = {
        "benchmark": "rotation",
        "started": _common.now_iso(),
        "machine": _common.machine_info(),
        "code": _common.code_version(),
        "quick": args.quick,
    }
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    with RotatingServer(args.serving_lifetime) as server:
        report["measurements"] = runner(run(args, server))
    report["finished"] = _common.now_iso()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
