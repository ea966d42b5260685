"""`hypermesh`: the daemon entry points (server, up, backup, restore) and `pki` maintenance.

This is where processes are wired together: the state engine, the API server app, and the two
listeners (HTTPS on TCP, HTTP/3 on UDP, same port number). Nothing imports this module; it
imports what it starts.

The server also keeps its own certificates fresh (`rotate_own_certificates`): at the renewal
time of the serving or admin certificate (two thirds of a lifetime of a day by default,
`--serving-cert-lifetime` and `--admin-cert-lifetime`, down to seconds for tests) it issues new
ones, loads the serving certificate into the TCP listener's live TLS context (new handshakes
present it, open connections and watches carry on) and rewrites `admin.kubeconfig` atomically
(every client that reads it afresh, kubectl and nexus at each run, uses the new one). Clients
trust only `ca.crt`, so neither change is visible to them. And it connects the revocation list
to the TCP listener, which closes the connections of a revoked client certificate.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hypermesh.pki.bootstrap import Lifetimes, ServerPKI

log = logging.getLogger("hypermesh")


def _split_listen(text: str) -> tuple[str, int]:
    """`HOST:PORT`, `[V6]:PORT` or `:PORT` (loopback)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"--listen {text!r}: expected HOST:PORT, for example 127.0.0.1:6443")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
# The longest the certificate rotation sleeps between looks (a suspended machine wakes late).
_ROTATION_MAX_SLEEP = 300.0


def _seconds(text: str) -> float:
    """`90`, `90s`, `15m`, `1h` or `1d` as seconds."""
    number, unit = (text[:-1], text[-1]) if text[-1:] in _UNITS else (text, "s")
    try:
        value = float(number) * _UNITS[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a duration such as 3600, 90m or 1h") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a duration cannot be negative")
    return value


def server_url(host: str, port: int) -> str:
    connect = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
    if ":" in connect:
        connect = f"[{connect}]"
    return f"https://{connect}:{port}"


def _lifetime(text: str) -> float:
    """A certificate lifetime (argparse type): a duration of at least 5 s."""
    value = _seconds(text)
    if value < 5:
        raise argparse.ArgumentTypeError(f"{text!r}: a certificate lifetime must be at least 5s")
    return value


def _lifetime_default(variable: str) -> float:
    """A lifetime flag's default: $VARIABLE if set (tests shorten it), else a day."""
    text = os.environ.get(variable)
    if not text:
        return 86400.0
    try:
        return _lifetime(text)
    except argparse.ArgumentTypeError as exc:
        raise SystemExit(f"hypermesh: ${variable}: {exc}") from None


async def rotate_own_certificates(
    *,
    data_dir: Path,
    hosts: list[str],
    lifetimes: Lifetimes,
    pki: ServerPKI,
    kubeconfig: Path,
    url: str,
    reload_serving: Sequence[Callable[[Path, Path], object]],
    stop: asyncio.Event,
) -> None:
    """Renew the serving and admin certificates when due until `stop` is set (see the module
    docstring); each of `reload_serving(certfile, keyfile)` is called with a new serving pair
    (one per listener). A failed renewal is logged and tried again a few seconds later; the
    current certificates stay in use meanwhile."""
    import datetime

    from hypermesh.pki import ensure_server_pki, write_kubeconfig

    current = pki
    while not stop.is_set():
        # At least a second: a certificate due as soon as it is issued (an intermediate about
        # to expire clamps its lifetime) must not turn this into a busy loop.
        due = max(1.0, (current.renewal_time() - datetime.datetime.now(datetime.UTC)).total_seconds())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), min(due, _ROTATION_MAX_SLEEP))
        if stop.is_set():
            return
        if due > _ROTATION_MAX_SLEEP:
            continue
        try:
            fresh = await asyncio.to_thread(ensure_server_pki, data_dir, hosts=hosts, lifetimes=lifetimes)
            if fresh.server_cert_pem != current.server_cert_pem:
                for reload in reload_serving:
                    reload(fresh.server_cert_path, fresh.server_key_path)
                log.info("serving certificate renewed: serial %x until %s; new connections use it",
                         fresh.server_cert.serial_number, f"{fresh.server_cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}")  # fmt: skip
            if fresh.admin_cert_pem != current.admin_cert_pem:
                await asyncio.to_thread(
                    write_kubeconfig, kubeconfig, server_url=url, ca_pem=fresh.ca_pem,
                    cert_pem=fresh.admin_cert_pem, key_pem=fresh.admin_key_pem,
                )  # fmt: skip
                log.info("admin certificate renewed: serial %x in %s", fresh.admin_cert.serial_number, kubeconfig)
        except Exception as exc:  # the old certificates still serve; try again shortly
            log.error("renewing the server's certificates failed (trying again in 5s): %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 5.0)
            continue
        current = fresh


async def run_server(
    data_dir: Path,
    host: str,
    port: int,
    *,
    banner: bool = False,
    controllers: bool = False,
    event_ttl: float = 3600.0,
    agent: bool = False,
    serving_lifetime: float = 86400.0,
    admin_lifetime: float = 86400.0,
) -> int:
    """Serve until SIGTERM or SIGINT; returns the exit code."""
    import datetime

    from hypermesh.api import encryptedstore, encryptionkeys
    from hypermesh.api.app import APIServer
    from hypermesh.api.compactor import CompactionPolicy
    from hypermesh.pki import ensure_server_pki, write_kubeconfig
    from hypermesh.pki.bootstrap import Lifetimes
    from hypermesh.transport.h3 import ServingQuic, serve_h3
    from hypermesh.transport.sessions import SessionTicketStore
    from hypermesh.transport.tcp import ServingTLS, serve_tcp

    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    hosts = ["127.0.0.1", "localhost", "::1"]
    if host not in hosts and host not in ("0.0.0.0", "::"):
        hosts.append(host)
    lifetimes = Lifetimes(
        serving=datetime.timedelta(seconds=serving_lifetime), admin=datetime.timedelta(seconds=admin_lifetime)
    )
    pki = ensure_server_pki(data_dir, hosts=hosts, lifetimes=lifetimes)
    url = server_url(host, port)
    kubeconfig = data_dir / "admin.kubeconfig"
    write_kubeconfig(kubeconfig, server_url=url, ca_pem=pki.ca_pem, cert_pem=pki.admin_cert_pem, key_pem=pki.admin_key_pem)

    # Secrets are sealed at rest under the key-encryption keys in <data dir>/keys/kek.json.
    try:
        store = await encryptedstore.open_encrypted(data_dir)
    except encryptionkeys.KeyFileError as exc:
        log.error("%s", exc)
        return 1
    # Tests shorten the history window to exercise 410 Expired; users keep the defaults.
    policy = CompactionPolicy(
        interval=float(os.environ.get("HYPERMESH_COMPACT_INTERVAL", "300")),
        min_history=int(os.environ.get("HYPERMESH_COMPACT_MIN_HISTORY", "1000")),
    )
    app = APIServer(store, compaction=policy, event_ttl=event_ttl, pki_dir=pki.directory)
    await app.start()
    tune_gc()

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    listeners_stop = asyncio.Event()
    tcp_ready, h3_ready = asyncio.Event(), asyncio.Event()
    cert, key, ca = pki.server_cert_path, pki.server_key_path, pki.ca_cert_path
    asgi: Any = app
    # The TCP listener's TLS context and open connections: the rotation below loads new
    # serving certificates into it, and a revoked client certificate's connections are closed.
    tls = ServingTLS(cert, key, ca)
    app.revocations.on_revoked(tls.close_revoked)
    # The same for HTTP/3: a live configuration to reload, and session tickets that a
    # revocation drops at once (their connections closed) and that are refused at resumption.
    quic = ServingQuic(cert, key)
    tickets = SessionTicketStore()
    app.revocations.on_revoked(tickets.revoke)
    tasks = [
        loop.create_task(serve_tcp(asgi, host=host, port=port, tls=tls, ready=tcp_ready, shutdown=listeners_stop), name="tcp"),
        loop.create_task(serve_h3(
            asgi, host=host, port=port, certfile=cert, keyfile=key, cafile=ca, ready=h3_ready, shutdown=listeners_stop,
            tickets=tickets, revoked=app.revocations.is_revoked, serving=quic,
        ), name="h3"),
    ]
    rotation = loop.create_task(
        rotate_own_certificates(
            data_dir=data_dir, hosts=hosts, lifetimes=lifetimes, pki=pki, kubeconfig=kubeconfig, url=url,
            reload_serving=[tls.reload, quic.reload], stop=listeners_stop,
        ),
        name="certificate-rotation",
    )  # fmt: skip

    async def both_ready() -> None:
        await tcp_ready.wait()
        await h3_ready.wait()

    controllers_stop = asyncio.Event()
    controllers_task: asyncio.Task[None] | None = None
    if controllers:
        from hypermesh.cli.controllers import start_in_process

        controllers_task = start_in_process(app, controllers_stop, pki_dir=pki.directory)
    agent_task: asyncio.Task[None] | None = None
    if agent:
        from hypermesh.cli import agent as local_agent

        agent_task = local_agent.start_in_process(app, controllers_stop, data_dir=data_dir)

    ready = loop.create_task(both_ready())
    done, _ = await asyncio.wait({ready, *tasks}, return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if ready in done:
        log.info("serving on %s (HTTPS on TCP and HTTP/3 on UDP), data in %s", url, data_dir)
        if banner:
            print(f"HyperMesh is running at {url}\n"
                  f"  nexus get namespaces          # nexus finds {kubeconfig} by itself\n"
                  f"  export KUBECONFIG={kubeconfig}\n"
                  f"  kubectl get namespaces        # the kubectl from make setup is .venv/bin/kubectl\n"
                  f"Stop it with Ctrl-C.", flush=True)
        print("ready", flush=True)
        stopper: asyncio.Task[Any] = loop.create_task(stop.wait())
        done, _ = await asyncio.wait({stopper, *tasks}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
    for task in tasks:
        if task in done and task.exception() is not None:
            log.error("listener %s failed: %s", task.get_name(), task.exception())
            code = 1
    controllers_stop.set()
    for name, background in (("controllers", controllers_task), ("agent", agent_task)):
        if background is None:
            continue
        try:
            await asyncio.wait_for(background, 10)
        except Exception as exc:  # a failed or slow controller must not block shutdown
            log.error("%s did not stop cleanly: %r", name, exc)
    # Drain: end watch streams first so the listeners' graceful shutdown does not wait on them.
    await app.stop()
    listeners_stop.set()
    await asyncio.gather(*tasks, rotation, return_exceptions=True)
    await store.close()
    log.info("stopped")
    return code


def tune_gc() -> None:
    """Make the cyclic garbage collector run far less often.

    The server allocates many short-lived, acyclic objects (decoded JSON) that reference
    counting frees on its own; with the default threshold the collector still walks them every
    700 allocations, which measured as 3-7x the cost of decoding a 10,000-object list. The
    start-up objects (schemas, modules) are frozen out of its view entirely.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


def _home() -> Path:
    return Path(os.environ.get("HYPERMESH_HOME", "~/.hypermesh")).expanduser()


def _run(coro: object) -> int:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    return asyncio.run(coro)  # type: ignore[arg-type]


def _pki(args: argparse.Namespace) -> int:
    """`hypermesh pki init` and `hypermesh pki rotate-intermediate`."""
    from hypermesh.pki import hierarchy

    try:
        if args.pki_command == "init":
            ca = hierarchy.init(args.data_dir, root_out=args.root_out, common_name=args.common_name)
            where = args.root_out or hierarchy.pki_dir(args.data_dir)
            print(f"created root {ca.root.subject.rfc4514_string()} (key in {where / 'ca.key'})")
            if args.root_out is not None:
                print(f"  keep {where} offline: it is needed only for `hypermesh pki rotate-intermediate`")
        else:
            ca = hierarchy.rotate_intermediate(args.data_dir, root_dir=args.root)
        not_after = ca.cert.not_valid_after_utc.strftime("%Y-%m-%d")
        print(f"intermediate {ca.cert.subject.rfc4514_string()} signs until {not_after} ({hierarchy.pki_dir(args.data_dir)})")
    except (hierarchy.PKIError, OSError) as exc:
        print(f"hypermesh pki {args.pki_command}: {exc}", file=sys.stderr)
        return 1
    return 0


def _lifetime_flags(parser: argparse.ArgumentParser) -> None:
    """The lifetimes of the server's own certificates (each renewed at two thirds of it)."""
    parser.add_argument(
        "--serving-cert-lifetime", type=_lifetime, default=_lifetime_default("HYPERMESH_SERVING_CERT_LIFETIME"),
        metavar="DURATION", help="how long the API server's serving certificate lives: 1d (default, or $HYPERMESH_SERVING_CERT_LIFETIME), 12h, 90s",
    )  # fmt: skip
    parser.add_argument(
        "--admin-cert-lifetime", type=_lifetime, default=_lifetime_default("HYPERMESH_ADMIN_CERT_LIFETIME"),
        metavar="DURATION", help="how long the certificate in admin.kubeconfig lives: 1d (default, or $HYPERMESH_ADMIN_CERT_LIFETIME)",
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hypermesh", description="HyperMesh daemons and maintenance commands.")
    parser.add_argument("--log-level", default=os.environ.get("HYPERMESH_LOG_LEVEL", "INFO"))
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("server", help="run the API server and state engine")
    p.add_argument("--data-dir", required=True, type=Path, help="where state, certificates and the admin kubeconfig live")
    p.add_argument("--listen", default="127.0.0.1:6443", type=_split_listen, help="HOST:PORT for HTTPS (TCP) and HTTP/3 (UDP)")
    p.add_argument("--controllers", dest="controllers", action="store_true", default=True, help="run the controllers in this process (the default)")
    p.add_argument("--no-controllers", dest="controllers", action="store_false", help="serve the API only (run `hypermesh controllers` elsewhere)")
    p.add_argument("--event-ttl", type=_seconds, default=3600.0, help="delete Events this long after they last happened: 3600, 90m, 1h (0 keeps them)")
    _lifetime_flags(p)

    p = sub.add_parser("controllers", help="run the controllers against a server")
    p.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"), help="the server and credentials (default: $KUBECONFIG)")
    p.add_argument("--no-leader-election", action="store_true", help="act without holding the Lease (only one copy may run)")

    p = sub.add_parser("simulate-nodes", help="register hollow Nodes that heartbeat and report bound Instances Running")
    p.add_argument("--count", type=int, required=True, help="how many Nodes (named sim-<i>)")
    p.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"), help="the server and credentials (default: $KUBECONFIG)")
    p.add_argument("--zones", type=int, default=3, help="spread the Nodes over zone-0 .. zone-<Z-1>")
    p.add_argument("--cpu", default="8")
    p.add_argument("--memory", default="32Gi")
    p.add_argument("--pods", type=int, default=110)
    p.add_argument("--prefix", default="sim", help="Node names are <prefix>-<i>")
    p.add_argument("--cleanup", action="store_true", help="delete the Nodes on exit")

    p = sub.add_parser("agent", help="run a node agent: register this machine and run the Instances bound to it")
    p.add_argument("--server", default=None, help="join the cluster of this API server URL with --token and --ca-hash (once: the node's credentials stay in DATA_DIR/kubeconfig)")
    p.add_argument("--token", default=None, help="a bootstrap token (`hypermesh token create`) to join with")
    p.add_argument("--ca-hash", default=None, help="sha256:<hex> of the cluster CA's public key: the only CA this node will trust")
    p.add_argument("--kubeconfig", default=None, help="run with these credentials instead of joining (default without --server: DATA_DIR/kubeconfig if it exists, else $KUBECONFIG)")
    p.add_argument("--name", default=None, help="the Node name (default: the host name)")
    p.add_argument("--data-dir", type=Path, default=Path("/var/lib/hypermesh/agent"), help="images, container state, logs and (joined) the node's kubeconfig")
    p.add_argument("--zone", default=None, help="the topology.hypermesh.io/zone label")
    p.add_argument("--oci-runtime", choices=("runc", "crun"), default=None, help="force an OCI runtime (default: crun if it works here, else runc)")
    p.add_argument("--bridge", default="hm0", help="the node bridge Instances attach to")
    p.add_argument("--cluster-prefix", default=None, help="the cluster's IPv6 ULA /48 (default: fd68:6d65:7368::/48)")

    p = sub.add_parser("up", help="run the single-machine cluster in the foreground")
    p.add_argument("--listen", default="127.0.0.1:6443", type=_split_listen)
    p.add_argument("--no-agent", action="store_true", help="no local node agent (then nothing runs Instances)")
    _lifetime_flags(p)

    p = sub.add_parser("keys", help="the keys that encrypt Secrets at rest")
    keys_sub = p.add_subparsers(dest="keys_command", required=True)
    k = keys_sub.add_parser("rotate", help="make a new key-encryption key, re-encrypt every Secret under it, drop the old one (server stopped)")
    k.add_argument("--data-dir", required=True, type=Path)

    p = sub.add_parser("backup", help="write a consistent snapshot of the state (safe while the server runs)")
    p.add_argument("--data-dir", required=True, type=Path)
    p.add_argument("file", type=Path)

    p = sub.add_parser("pki", help="the cluster's root and intermediate CAs")
    pki_sub = p.add_subparsers(dest="pki_command", required=True)
    q = pki_sub.add_parser("init", help="create the root and intermediate CA of a new cluster (before its first start)")
    q.add_argument("--data-dir", required=True, type=Path, help="the server's data dir (the CAs go into DATA_DIR/pki)")
    q.add_argument("--root-out", type=Path, default=None, help="write the root key here instead of the data dir, to keep it offline")
    q.add_argument("--common-name", default="hypermesh-ca", help="the root's common name")
    q = pki_sub.add_parser("rotate-intermediate", help="sign a new intermediate CA with the root (safe while the server runs)")
    q.add_argument("--data-dir", required=True, type=Path)
    q.add_argument("--root", type=Path, default=None, help="the directory holding ca.key (the --root-out of init; default: DATA_DIR/pki)")

    from hypermesh.cli import security

    security.add_parsers(sub)

    p = sub.add_parser("restore", help="replace the state with a snapshot (server must be stopped)")
    p.add_argument("--data-dir", required=True, type=Path)
    p.add_argument("--force", action="store_true", help="replace an existing, non-empty state")
    p.add_argument("file", type=Path)

    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)

    if args.command == "server":
        host, port = args.listen
        return _run(run_server(
            args.data_dir, host, port, controllers=args.controllers, event_ttl=args.event_ttl,
            serving_lifetime=args.serving_cert_lifetime, admin_lifetime=args.admin_cert_lifetime,
        ))  # fmt: skip
    if args.command == "controllers":
        from hypermesh.cli.controllers import run_standalone

        return _run(run_standalone(args.kubeconfig, leader_election=not args.no_leader_election))
    if args.command == "simulate-nodes":
        from hypermesh.cli.simulate import SimSettings, run_simulator

        sim = SimSettings(count=args.count, zones=args.zones, cpu=args.cpu, memory=args.memory, pods=args.pods, prefix=args.prefix, cleanup=args.cleanup)
        return _run(run_simulator(args.kubeconfig, sim))
    if args.command == "agent":
        from hypermesh.cli import agent as node_agent

        name = args.name or node_agent.default_name()
        joining = node_agent.JoinOptions(server=args.server, token=args.token, ca_hash=args.ca_hash)
        return _run(node_agent.run_standalone(
            args.kubeconfig, name=name, data_dir=args.data_dir, zone=args.zone, oci_runtime=args.oci_runtime,
            bridge=args.bridge, cluster_prefix=args.cluster_prefix, joining=joining,
        ))
    if args.command == "up":
        host, port = args.listen
        return _run(run_server(
            _home(), host, port, banner=True, controllers=True, agent=not args.no_agent,
            serving_lifetime=args.serving_cert_lifetime, admin_lifetime=args.admin_cert_lifetime,
        ))  # fmt: skip
    if args.command == "keys":
        from hypermesh.api import encryptionkeys, keyrotation
        from hypermesh.store import StoreError

        try:
            report = asyncio.run(keyrotation.rotate_data_dir(args.data_dir))
        except (keyrotation.RotationError, encryptionkeys.KeyFileError, StoreError, OSError) as exc:
            print(f"hypermesh keys rotate: {exc}", file=sys.stderr)
            return 1
        print(report.summary())
        return 0
    if args.command == "backup":
        from hypermesh.store import backup

        try:
            revision = asyncio.run(backup(args.data_dir, args.file))
        except (OSError, ValueError) as exc:
            print(f"hypermesh backup: {exc}", file=sys.stderr)
            return 1
        print(f"backup of revision {revision} written to {args.file}")
        return 0
    if args.command == "pki":
        return _pki(args)
    if args.command == "user":
        return security.run_user(args)
    if args.command == "audit":
        return security.run_audit(args)
    if args.command == "token":
        return security.run_token(args)
    if args.command == "restore":
        from hypermesh.store import StoreError, restore

        try:
            revision = restore(args.file, args.data_dir, force=args.force)
        except (OSError, ValueError, StoreError) as exc:
            print(f"hypermesh restore: {exc}", file=sys.stderr)
            return 1
        print(f"restored revision {revision} into {args.data_dir}")
        return 0
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
