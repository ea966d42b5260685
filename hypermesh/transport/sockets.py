"""Listening sockets for the two listeners, which share one port number (TCP and UDP).

The listeners bind their sockets themselves rather than letting uvicorn or aioquic do it, so
that an address already in use is an OSError for the caller (uvicorn would call sys.exit) and
so that IPv6 behaves the same on both: "::" listens dual-stack, any other IPv6 address (for
instance "::1") IPv6 only.
"""

from __future__ import annotations

import socket
from typing import Any


def resolve(host: str, port: int, kind: socket.SocketKind) -> tuple[int, tuple[Any, ...]]:
    """Resolve a listening address to `(family, sockaddr)`; IPv6 literals stay IPv6."""
    infos = socket.getaddrinfo(host, port, type=kind, flags=socket.AI_PASSIVE)
    if not infos:
        raise OSError(f"cannot resolve listen address {host!r}")
    family, _, _, _, sockaddr = infos[0]
    return family, sockaddr


def tcp_listener(host: str, port: int, backlog: int) -> socket.socket:
    """A non-blocking listening TCP socket on `host:port`."""
    family, sockaddr = resolve(host, port, socket.SOCK_STREAM)
    sock = socket.create_server(
        sockaddr,
        family=family,
        backlog=backlog,
        dualstack_ipv6=family == socket.AF_INET6 and sockaddr[0] == "::",
    )
    sock.setblocking(False)
    return sock


def udp_listener(host: str, port: int) -> socket.socket:
    """A non-blocking UDP socket bound to `host:port`."""
    family, sockaddr = resolve(host, port, socket.SOCK_DGRAM)
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            dual_stack = sockaddr[0] == "::"
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if dual_stack else 1)
        # Bursts of handshakes from many clients overflow the default receive buffer; the
        # kernel caps this at net.core.rmem_max, which is fine.
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        except OSError:
            pass
        sock.bind(sockaddr)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
