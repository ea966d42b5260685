"""HTTP/3 session tickets, each bound to the identity verified at its full handshake.

A resumed TLS 1.3 session carries no client certificate, so the QUIC listener (`h3.py`) issues
its own tickets, only on connections whose certificate it verified, and remembers here what
each stands for: the `Identity`, the certificate (its serial, for revocation), and until when.
Tickets are random bytes that mean nothing outside this process; they are single-use (a
resumption takes its ticket and gets a successor with the same identity and expiry), bounded in
number overall and per certificate, and dropped by identity (`forget`) or by revoked serial
(`revoke`). See h3.py's docstring for how the listener uses them.
"""

from __future__ import annotations

import datetime
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from aioquic import tls as quic_tls
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from hypermesh.pki.identity import Identity
from hypermesh.pki.verify import RevocationCheck

# A session ticket resumes the identity of a full handshake for at most this long.
TICKET_LIFETIME = 3600.0
# Tickets remembered at once; the oldest go first (their holders just make a full handshake).
MAX_TICKETS = 10_000
# Tickets remembered per client certificate (a CLI keeps only its newest one anyway).
MAX_TICKETS_PER_CERTIFICATE = 8
# What a ticket allowing 0-RTT says: aioquic's clients send early data only for this value.
MAX_EARLY_DATA = 0xFFFFFFFF

@dataclass(frozen=True, slots=True)
class TicketRecord:
    """What a ticket we issued stands for: a verified identity, until `expires` (epoch s)."""

    session_ticket: quic_tls.SessionTicket
    identity: Identity
    certificate: x509.Certificate
    # The certificate's SHA-256, to bound the tickets of one certificate.
    fingerprint: bytes
    expires: float

    @property
    def serial(self) -> int:
        return int(self.certificate.serial_number)

    @property
    def early_data(self) -> bool:
        """Whether the ticket lets its holder send 0-RTT data."""
        return self.session_ticket.max_early_data_size is not None


class SessionTicketStore:
    """The session tickets one listener issued, in memory, each with its verified identity.

    Only this process can resume with them: a restart (or another server) knows none. A ticket
    is used once (`take`); `forget` drops those of an identity and `revoke` those of revoked
    certificates, so their next connection shows a certificate again. `revoked(serial)`, when
    given, is asked at every lookup as well, so a ticket of a certificate revoked elsewhere is
    never resumed even if `revoke` was not called.

    The store is bounded twice: `max_tickets` in all (the oldest go first) and
    `max_per_certificate`, so one client making full handshakes in a loop (a script that never
    keeps its tickets) cannot push everyone else's out. A ticket lost either way costs its
    holder one full handshake, nothing more.
    """

    def __init__(
        self,
        *,
        lifetime: float = TICKET_LIFETIME,
        max_tickets: int = MAX_TICKETS,
        max_per_certificate: int = MAX_TICKETS_PER_CERTIFICATE,
        early_data: bool = True,
        revoked: RevocationCheck | None = None,
    ) -> None:
        self.lifetime = lifetime
        self.max_tickets = max_tickets
        self.max_per_certificate = max_per_certificate
        # Whether new tickets allow 0-RTT requests (see the module docstring).
        self.early_data = early_data
        # The revocation list's owner's answer for a serial; see `is_revoked`.
        self.revoked = revoked
        self._revoked_serials: set[int] = set()
        # Told the serials `revoke` was given (the listener closes their connections).
        self._revoke_listeners: list[Callable[[frozenset[int]], None]] = []
        self._records: OrderedDict[bytes, TicketRecord] = OrderedDict()
        self._by_certificate: dict[bytes, deque[bytes]] = {}

    def __len__(self) -> int:
        return len(self._records)

    def lifetime_for(self, certificate: x509.Certificate, now: float) -> int:
        """Seconds a ticket for `certificate` may live: the lifetime, capped by notAfter."""
        remaining = certificate.not_valid_after_utc.timestamp() - now
        return int(max(0.0, min(self.lifetime, remaining)))

    def is_revoked(self, serial: int | None) -> bool:
        """Whether certificate `serial` was revoked (through `revoke` or the `revoked` check)."""
        if serial is None:
            return False
        if serial in self._revoked_serials:
            return True
        return self.revoked is not None and self.revoked(serial)

    def add(
        self,
        session_ticket: quic_tls.SessionTicket,
        identity: Identity,
        certificate: x509.Certificate,
        expires: float,
    ) -> None:
        """Remember that `session_ticket` stands for `identity` until `expires`."""
        fingerprint = certificate.fingerprint(hashes.SHA256())
        siblings = self._by_certificate.setdefault(fingerprint, deque())
        while len(siblings) >= self.max_per_certificate:
            self._remove(siblings[0])
        if len(self._records) >= self.max_tickets:
            self._purge(time_now())
            while len(self._records) >= self.max_tickets:
                self._remove(next(iter(self._records)))
        ticket = session_ticket.ticket
        self._records[ticket] = TicketRecord(
            session_ticket, identity, certificate, fingerprint, expires
        )
        self._by_certificate.setdefault(fingerprint, deque()).append(ticket)

    def lookup(self, ticket: bytes) -> TicketRecord | None:
        """The record of a ticket we issued, still valid and not revoked, else None."""
        record = self._records.get(ticket)
        if record is None:
            return None
        if time_now() >= record.expires or self.is_revoked(record.serial):
            self._remove(ticket)
            return None
        return record

    def take(self, ticket: bytes) -> TicketRecord | None:
        """Like `lookup`, and the ticket is used up: it will never be found again."""
        record = self.lookup(ticket)
        if record is not None:
            self._remove(ticket)
        return record

    def forget(self, who: Identity | str) -> int:
        """Drop the tickets of an identity (or of every identity of a user name); how many."""
        return self._drop(
            lambda record: (
                record.identity.user == who if isinstance(who, str) else record.identity == who
            )
        )

    def revoke(self, serials: Iterable[int]) -> int:
        """Treat these certificate serials as revoked from now on; drop their tickets (how many).

        The listener then refuses those certificates at full handshakes and their tickets at
        resumption, and closes the connections they hold now (ending their watches).
        """
        revoked = frozenset(int(serial) for serial in serials)
        self._revoked_serials.update(revoked)
        dropped = self._drop(lambda record: record.serial in self._revoked_serials)
        for listener in self._revoke_listeners:
            listener(revoked)
        return dropped

    def clear(self) -> None:
        self._records.clear()
        self._by_certificate.clear()

    def _drop(self, doomed: Callable[[TicketRecord], bool]) -> int:
        tickets = [ticket for ticket, record in self._records.items() if doomed(record)]
        for ticket in tickets:
            self._remove(ticket)
        return len(tickets)

    def _remove(self, ticket: bytes) -> None:
        record = self._records.pop(ticket, None)
        if record is None:
            return
        siblings = self._by_certificate.get(record.fingerprint)
        if siblings is not None:
            siblings.remove(ticket)
            if not siblings:
                del self._by_certificate[record.fingerprint]

    def _purge(self, now: float) -> None:
        for ticket in [t for t, record in self._records.items() if now >= record.expires]:
            self._remove(ticket)


def time_now() -> float:
    """Wall-clock seconds (ticket and certificate validity are wall-clock times)."""
    return datetime.datetime.now(datetime.UTC).timestamp()


