"""The HTTP/3 listener's session ticket store and the client chain verifier, without sockets.

What the store promises: a ticket resumes once (`take`), never past its expiry, never for a
revoked certificate (whether revocation came through `revoke` or the `revoked` check), and
`forget`/`revoke` say how many tickets they dropped. What the verifier promises: a verdict
remembered for a chain never hides a revocation, and a refusal is never remembered.
"""

from __future__ import annotations

import datetime
import os

import pytest
from aioquic.tls import CipherSuite, SessionTicket
from cryptography import x509

from hypermesh.pki import CertificateAuthority, ServerPKI, ensure_server_pki
from hypermesh.pki.identity import Identity, identity_from_cert
from hypermesh.pki.verify import CertificateRejected, CertificateRevoked, ClientCertificateVerifier
from hypermesh.transport import sessions
from hypermesh.transport.sessions import SessionTicketStore


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> ServerPKI:
    return ensure_server_pki(tmp_path_factory.mktemp("pki"))


def _chain(pem: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem)


@pytest.fixture(scope="module")
def admin_chain(pki: ServerPKI) -> list[x509.Certificate]:
    return _chain(pki.admin_cert_path.read_bytes())


@pytest.fixture(scope="module")
def alice_chain(pki: ServerPKI) -> list[x509.Certificate]:
    return _chain(pki.ca.issue("alice", organizations=["dev"], client=True)[0])


def _ticket(name: bytes | None = None, early: bool = True) -> SessionTicket:
    now = datetime.datetime.now(datetime.UTC)
    return SessionTicket(
        age_add=0,
        cipher_suite=CipherSuite.AES_128_GCM_SHA256,
        not_valid_after=now + datetime.timedelta(minutes=5),
        not_valid_before=now,
        resumption_secret=b"s" * 32,
        server_name="x",
        ticket=name or os.urandom(32),
        max_early_data_size=sessions.MAX_EARLY_DATA if early else None,
    )


def _add(store: SessionTicketStore, chain: list[x509.Certificate], **kwargs: bool) -> bytes:
    ticket = _ticket(**kwargs)
    leaf = chain[0]
    store.add(ticket, identity_from_cert(leaf), leaf, sessions.time_now() + 60)
    return ticket.ticket


# The ticket store


def test_a_ticket_resumes_once(admin_chain: list[x509.Certificate]) -> None:
    store = SessionTicketStore()
    name = _add(store, admin_chain)
    record = store.lookup(name)
    assert record is not None and record.early_data
    assert record.identity.user == "admin"
    assert record.serial == admin_chain[0].serial_number
    assert store.take(name) is record
    assert store.take(name) is None
    assert store.lookup(name) is None
    assert len(store) == 0


def test_tickets_allow_early_data_unless_the_store_says_not(
    admin_chain: list[x509.Certificate],
) -> None:
    store = SessionTicketStore()
    assert store.early_data
    record = store.lookup(_add(store, admin_chain, early=False))
    assert record is not None and not record.early_data


def test_revoke_drops_the_tickets_of_those_serials_and_refuses_them_later(
    admin_chain: list[x509.Certificate], alice_chain: list[x509.Certificate]
) -> None:
    store = SessionTicketStore()
    alices = [_add(store, alice_chain) for _ in range(3)]
    admins = _add(store, admin_chain)
    alice_serial = alice_chain[0].serial_number
    assert store.revoke([alice_serial]) == 3
    assert all(store.lookup(name) is None for name in alices)
    assert store.lookup(admins) is not None
    assert store.is_revoked(alice_serial)
    assert not store.is_revoked(admin_chain[0].serial_number)
    assert not store.is_revoked(None)
    # A ticket issued afterwards (it cannot be, the handshake refuses the certificate, but
    # the store does not rely on that) is not found either.
    assert store.lookup(_add(store, alice_chain)) is None


def test_revoked_check_is_asked_at_every_lookup(
    admin_chain: list[x509.Certificate], alice_chain: list[x509.Certificate]
) -> None:
    revoked: set[int] = set()
    store = SessionTicketStore(revoked=revoked.__contains__)
    alice, admin = _add(store, alice_chain), _add(store, admin_chain)
    assert store.lookup(alice) is not None
    # Revoked elsewhere, without telling the store: its next lookup refuses (and forgets) it.
    revoked.add(alice_chain[0].serial_number)
    assert store.lookup(alice) is None
    assert store.take(alice) is None
    assert store.lookup(admin) is not None
    assert len(store) == 1


def test_expired_tickets_are_not_found(
    admin_chain: list[x509.Certificate], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SessionTicketStore()
    name = _add(store, admin_chain)
    real_now = sessions.time_now
    monkeypatch.setattr(sessions, "time_now", lambda: real_now() + 61)
    assert store.lookup(name) is None


def test_forget_by_identity_or_user(
    admin_chain: list[x509.Certificate], alice_chain: list[x509.Certificate]
) -> None:
    store = SessionTicketStore()
    for _ in range(2):
        _add(store, alice_chain)
    _add(store, admin_chain)
    assert store.forget(Identity("alice", ("dev",))) == 2
    assert store.forget("nobody") == 0
    assert store.forget("admin") == 1
    assert len(store) == 0


# Identities carry their certificate's serial


def test_identity_carries_the_serial_but_compares_without_it(
    admin_chain: list[x509.Certificate],
) -> None:
    identity = identity_from_cert(admin_chain[0])
    assert identity.serial == admin_chain[0].serial_number
    # The serial is provenance: the same user and groups are the same identity.
    assert identity == Identity("admin", ("system:masters",))
    assert hash(identity) == hash(Identity("admin", ("system:masters",), serial=1))


# The chain verifier


def test_verifier_checks_revocation_even_for_a_remembered_chain(
    pki: ServerPKI, alice_chain: list[x509.Certificate]
) -> None:
    revoked: set[int] = set()
    verifier = ClientCertificateVerifier(pki.ca_pem, revoked=revoked.__contains__)
    leaf, intermediates = alice_chain[0], alice_chain[1:]
    assert verifier.verify(leaf, intermediates).user == "alice"
    assert verifier.verify(leaf, intermediates).serial == leaf.serial_number
    revoked.add(leaf.serial_number)
    with pytest.raises(CertificateRevoked) as caught:
        verifier.verify(leaf, intermediates)
    assert caught.value.serial == leaf.serial_number
    # A revoked certificate is a rejected one, for callers that only know the base class.
    assert isinstance(caught.value, CertificateRejected)
    revoked.clear()
    assert verifier.verify(leaf, intermediates).user == "alice"


def test_verifier_never_remembers_a_refusal(pki: ServerPKI) -> None:
    other = CertificateAuthority.generate(common_name="hypermesh-ca")
    foreign = _chain(other.issue("admin", client=True)[0])
    verifier = ClientCertificateVerifier(pki.ca_pem)
    for _ in range(2):
        with pytest.raises(CertificateRejected):
            verifier.verify(foreign[0], foreign[1:])
    # The leaf alone (without the intermediate that links it to the root) is refused too,
    # even after the full chain passed: the chain, not the leaf, is what is remembered.
    admin = _chain(pki.admin_cert_path.read_bytes())
    assert verifier.verify(admin[0], admin[1:]).user == "admin"
    with pytest.raises(CertificateRejected):
        verifier.verify(admin[0], [])


def test_verifier_memory_is_bounded(pki: ServerPKI) -> None:
    verifier = ClientCertificateVerifier(pki.ca_pem, cache_size=2)
    chains = [_chain(pki.ca.issue(f"user{i}", client=True)[0]) for i in range(4)]
    for chain in chains:
        assert verifier.verify(chain[0], chain[1:]).user.startswith("user")
    assert len(verifier._verified) == 2
