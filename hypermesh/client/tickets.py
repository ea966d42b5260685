"""QUIC session tickets kept between commands, one file per server.

Each `nexus` command is a new process, so resuming a TLS session (a faster handshake, ~6 ms
instead of ~8) needs the ticket on disk. A ticket resumes a session without the private key,
so it is as secret as the key: files are 0600 in a 0700 directory
(`$HYPERMESH_HOME/quic-tickets/`). They are stored as JSON rather than pickled, so a file that
someone else managed to write can at worst fail to parse, never run code.

The HyperMesh listener issues no tickets today (see `hypermesh.transport.h3`): the store then
simply stays empty. A ticket a server rejects is discarded by the caller so the next command
makes a full handshake.
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


class TicketStore:
    """The session ticket of one server (by URL), on disk."""

    def __init__(self, server: str, directory: Path | None = None) -> None:
        self.server = server
        self.path = (directory or default_dir()) / f"{localstate.server_key(server)}.json"

    def load(self) -> SessionTicket | None:
        """The stored ticket if there is a valid one for this server, else None."""
        data = localstate.read_json(self.path)
        if not isinstance(data, dict) or data.get("server") != self.server:
            return None
        try:
            ticket = decode(data["ticket"])
        except (KeyError, TypeError, ValueError):
            return None
        return ticket if ticket.is_valid else None

    def save(self, ticket: SessionTicket) -> None:
        """Keep `ticket` for the next connection (the newest ticket wins)."""
        import orjson

        # Losing a ticket only costs a full handshake; never fail a request over it.
        with contextlib.suppress(OSError):
            localstate.write_private(
                self.path, orjson.dumps({"server": self.server, "ticket": encode(ticket)})
            )

    def discard(self) -> None:
        """Forget the ticket (the server refused to resume with it)."""
        with contextlib.suppress(OSError):
            self.path.unlink()
