"""QUIC session tickets kept between commands, one file per server.

Each `nexus` command is a new process, so resuming a TLS session (a shorter handshake, and a
first GET sent as 0-RTT early data: see `bench/quic_bench.py` for what each saves) needs the
ticket on disk. The HyperMesh listener gives tickets only to clients whose certificate it
verified, and a connection resumed with one gets that certificate's identity without showing
any certificate. A ticket is thus as secret as the key: files are 0600 in a 0700 directory
(`$HYPERMESH_HOME/quic-tickets/`).

Tickets are single-use: the server forgets a ticket once a connection resumed with it, and that
connection brings the next ticket, which `save` writes over the used one. Two commands that
start at the same moment read the same ticket; the second one simply makes a full handshake.
They are stored as JSON rather than pickled, so a file that someone else managed to write can
at worst fail to parse, never run code.

Because the identity travels with the ticket, each ticket is also stored with the `owner` it
was earned by (a digest of the client certificate): a kubeconfig that switches to another
user of the same server must not resume as the previous one, so a ticket is offered only
with the same certificate. A ticket the server rejects is discarded by the caller so the next
command makes a full handshake; one the server merely does not know (it restarted) costs
nothing but that full handshake, which brings a fresh ticket.
"""

from __future__ import annotations

import base64
import contextlib
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hypermesh.client import localstate

if TYPE_CHECKING:
    from aioquic.tls import SessionTicket


def default_dir() -> Path:
    """`$HYPERMESH_HOME/quic-tickets`."""
    return localstate.home() / "quic-tickets"


def encode(ticket: SessionTicket) -> dict[str, Any]:
    """A JSON-safe form of `ticket`."""

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode("ascii")

    return {
        "age_add": ticket.age_add,
        "cipher_suite": int(ticket.cipher_suite),
        "not_valid_after": ticket.not_valid_after.isoformat(),
        "not_valid_before": ticket.not_valid_before.isoformat(),
        "resumption_secret": b64(ticket.resumption_secret),
        "server_name": ticket.server_name,
        "ticket": b64(ticket.ticket),
        "max_early_data_size": ticket.max_early_data_size,
        "other_extensions": [[kind, b64(data)] for kind, data in ticket.other_extensions],
    }


def decode(data: dict[str, Any]) -> SessionTicket:
    """The ticket `encode` produced; raises ValueError/KeyError/TypeError on bad input."""
    from aioquic.tls import CipherSuite, SessionTicket

    max_early = data.get("max_early_data_size")
    return SessionTicket(
        age_add=int(data["age_add"]),
        cipher_suite=CipherSuite(int(data["cipher_suite"])),
        not_valid_after=datetime.fromisoformat(data["not_valid_after"]),
        not_valid_before=datetime.fromisoformat(data["not_valid_before"]),
        resumption_secret=base64.b64decode(data["resumption_secret"]),
        server_name=str(data["server_name"]),
        ticket=base64.b64decode(data["ticket"]),
        max_early_data_size=int(max_early) if max_early is not None else None,
        other_extensions=[
            (int(kind), base64.b64decode(blob)) for kind, blob in data.get("other_extensions", [])
        ],
    )


def owner_of(cert_pem: bytes | None) -> str | None:
    """The `owner` of tickets earned with this client certificate (None: no certificate)."""
    if not cert_pem:
        return None
    import hashlib

    return hashlib.sha256(cert_pem).hexdigest()


class TicketStore:
    """The session ticket of one server (by URL) and client certificate, on disk."""

    def __init__(self, server: str, directory: Path | None = None) -> None:
        self.server = server
        self.path = (directory or default_dir()) / f"{localstate.server_key(server)}.json"

    def load(self, owner: str | None = None) -> SessionTicket | None:
        """The stored ticket if there is a valid one for this server and `owner`, else None."""
        data = localstate.read_json(self.path)
        if not isinstance(data, dict) or data.get("server") != self.server:
            return None
        if data.get("owner") != owner:
            return None
        try:
            ticket = decode(data["ticket"])
        except (KeyError, TypeError, ValueError):
            return None
        return ticket if ticket.is_valid else None

    def save(self, ticket: SessionTicket, owner: str | None = None) -> None:
        """Keep `ticket`, earned by `owner`, for the next connection (the newest one wins)."""
        import orjson

        record = {"server": self.server, "owner": owner, "ticket": encode(ticket)}
        # Losing a ticket only costs a full handshake; never fail a request over it.
        with contextlib.suppress(OSError):
            localstate.write_private(self.path, orjson.dumps(record))

    def discard(self) -> None:
        """Forget the ticket (the server refused to resume with it)."""
        with contextlib.suppress(OSError):
            self.path.unlink()
