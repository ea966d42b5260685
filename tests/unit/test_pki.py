"""The cluster PKI: CA, issued certificates, first-start files, kubeconfigs, identities."""

from __future__ import annotations

import base64
import datetime
import stat
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hypermesh import pki
from hypermesh.pki import (
    CertificateAuthority,
    CertificateRejected,
    ClientCertificateVerifier,
    Identity,
    ensure_server_pki,
    identity_from_der,
    write_kubeconfig,
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _cert(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def _der(pem: bytes) -> bytes:
    return _cert(pem).public_bytes(serialization.Encoding.DER)


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.generate()


# The certificate authority


def test_create_then_load_round_trips(tmp_path: Path) -> None:
    created = CertificateAuthority.create(tmp_path / "ca", common_name="test-ca")
    loaded = CertificateAuthority.load(tmp_path / "ca")
    assert loaded.cert == created.cert
    assert loaded.key.private_numbers() == created.key.private_numbers()
    assert _mode(tmp_path / "ca" / "ca.key") == 0o600
    assert _mode(tmp_path / "ca") == 0o700
    assert loaded.root == created.root
    assert created.root.subject.rfc4514_string() == "CN=test-ca"
    assert created.cert.issuer == created.root.subject
    assert isinstance(created.key, ec.EllipticCurvePrivateKey)
    assert isinstance(created.key.curve, ec.SECP256R1)


def test_load_refuses_a_key_that_does_not_match(tmp_path: Path) -> None:
    CertificateAuthority.create(tmp_path)
    other = CertificateAuthority.generate()
    (tmp_path / "ca.key").write_bytes(
        other.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(ValueError, match="does not match"):
        CertificateAuthority.load(tmp_path)


def test_issuing_ca_is_a_path_length_zero_ca(ca: CertificateAuthority) -> None:
    constraints = ca.cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca and constraints.value.path_length == 0


def test_client_certificate_names_user_and_groups(ca: CertificateAuthority) -> None:
    cert_pem, key_pem = ca.issue("jane", organizations=["dev", "ops"], client=True)
    cert = _cert(cert_pem)
    key = serialization.load_pem_private_key(key_pem, None)
    assert key.public_key() == cert.public_key()
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "jane"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    cert.verify_directly_issued_by(ca.cert)
    assert identity_from_der(_der(cert_pem)) == Identity("jane", ("dev", "ops"))


def test_server_certificate_carries_dns_and_ip_names(ca: CertificateAuthority) -> None:
    cert_pem, _ = ca.issue(
        "server", dns_names=["localhost"], ip_addresses=["127.0.0.1", "::1"], server=True
    )
    san = _cert(cert_pem).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]


def test_issue_requires_a_purpose_and_a_name(ca: CertificateAuthority) -> None:
    with pytest.raises(ValueError, match="client=True"):
        ca.issue("nobody")
    with pytest.raises(ValueError, match="common_name"):
        ca.issue("", client=True)


def test_leaf_never_outlives_its_ca(ca: CertificateAuthority) -> None:
    cert_pem, _ = ca.issue("long", client=True, days=100 * 365)
    assert _cert(cert_pem).not_valid_after_utc <= ca.cert.not_valid_after_utc


# Identities


def test_identity_without_groups() -> None:
    ca = CertificateAuthority.generate()
    cert_pem, _ = ca.issue("system:node:n1", client=True)
    identity = identity_from_der(_der(cert_pem))
    assert identity == Identity(user="system:node:n1", groups=())
    with pytest.raises(AttributeError):
        identity.user = "root"  # type: ignore[misc]


def test_identity_requires_a_common_name(ca: CertificateAuthority) -> None:
    cert = _signed_by(ca, x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "x")]))
    with pytest.raises(ValueError, match="no common name"):
        identity_from_der(cert.public_bytes(serialization.Encoding.DER))


# Verifying client chains (what the HTTP/3 listener relies on)


def _signed_by(
    ca: CertificateAuthority,
    subject: x509.Name,
    *,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - datetime.timedelta(minutes=1))
        .not_valid_after(not_after or now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca.key, hashes.SHA256())
    )


def test_verifier_accepts_a_client_of_the_cluster(ca: CertificateAuthority) -> None:
    verifier = ClientCertificateVerifier(ca.cert_pem)
    cert_pem, _ = ca.issue("admin", organizations=["system:masters"], client=True)
    leaf, *chain = x509.load_pem_x509_certificates(cert_pem)
    assert chain == list(ca.chain)
    assert verifier.verify(leaf, chain) == Identity("admin", ("system:masters",))
    # Without the intermediate there is no path to the root.
    with pytest.raises(CertificateRejected):
        verifier.verify(leaf)


def test_verifier_rejects_another_ca(ca: CertificateAuthority) -> None:
    verifier = ClientCertificateVerifier(ca.cert_pem)
    # Same names, same CA name even: only the signature tells them apart.
    impostor = CertificateAuthority.generate(common_name="hypermesh-ca")
    cert_pem, _ = impostor.issue("admin", organizations=["system:masters"], client=True)
    with pytest.raises(CertificateRejected):
        verifier.verify(_cert(cert_pem), impostor.chain)


def test_verifier_rejects_a_server_only_certificate(ca: CertificateAuthority) -> None:
    verifier = ClientCertificateVerifier(ca.cert_pem)
    cert_pem, _ = ca.issue("apiserver", ip_addresses=["127.0.0.1"], server=True)
    with pytest.raises(CertificateRejected):
        verifier.verify(_cert(cert_pem), ca.chain)


def test_verifier_rejects_expired_and_not_yet_valid(ca: CertificateAuthority) -> None:
    verifier = ClientCertificateVerifier(ca.cert_pem)
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "late")])
    expired = _signed_by(
        ca,
        name,
        not_before=now - datetime.timedelta(days=2),
        not_after=now - datetime.timedelta(days=1),
    )
    future = _signed_by(ca, name, not_before=now + datetime.timedelta(days=1))
    for cert in (expired, future):
        with pytest.raises(CertificateRejected):
            verifier.verify(cert, ca.chain)


def test_verifier_rejects_a_valid_chain_without_user(ca: CertificateAuthority) -> None:
    verifier = ClientCertificateVerifier(ca.cert_pem)
    cert = _signed_by(ca, x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "g")]))
    with pytest.raises(CertificateRejected, match="no common name"):
        verifier.verify(cert, ca.chain)


# A server's first start


def test_ensure_server_pki_creates_everything_with_safe_modes(tmp_path: Path) -> None:
    result = ensure_server_pki(tmp_path)
    directory = tmp_path / "pki"
    assert result.directory == directory
    assert _mode(directory) == 0o700
    names = ("ca.crt", "ca.key", "intermediate.pem", "server.crt", "server.key", "admin.crt")
    for name in (*names, "admin.key"):
        assert (directory / name).is_file(), name
    for key in (result.ca_key_path, result.server_key_path, result.admin_key_path):
        assert _mode(key) == 0o600
    assert _mode(directory / "intermediate.pem") == 0o600
    assert result.ca_pem == (directory / "ca.crt").read_bytes()

    admin = _cert(result.admin_cert_pem)
    assert identity_from_der(_der(result.admin_cert_pem)) == Identity("admin", ("system:masters",))
    admin.verify_directly_issued_by(result.ca.cert)
    server = _cert(result.server_cert_pem)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost"}
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}


def test_ensure_server_pki_is_idempotent(tmp_path: Path) -> None:
    first = ensure_server_pki(tmp_path)
    second = ensure_server_pki(tmp_path)
    assert second.ca_pem == first.ca_pem
    assert second.server_cert_pem == first.server_cert_pem
    assert second.server_key_pem == first.server_key_pem
    assert second.admin_cert_pem == first.admin_cert_pem
    assert second.admin_key_pem == first.admin_key_pem


def test_new_host_reissues_only_the_serving_certificate(tmp_path: Path) -> None:
    first = ensure_server_pki(tmp_path)
    second = ensure_server_pki(tmp_path, hosts=("127.0.0.1", "node1.example", "10.1.2.3"))
    assert second.ca_pem == first.ca_pem
    assert second.admin_cert_pem == first.admin_cert_pem
    assert second.server_cert_pem != first.server_cert_pem
    san = (
        _cert(second.server_cert_pem)
        .extensions.get_extension_for_class(x509.SubjectAlternativeName)
        .value
    )
    assert "node1.example" in san.get_values_for_type(x509.DNSName)
    # A subset of the hosts already covered changes nothing.
    third = ensure_server_pki(tmp_path, hosts=("node1.example",))
    assert third.server_cert_pem == second.server_cert_pem


def test_mismatched_pair_is_repaired(tmp_path: Path) -> None:
    first = ensure_server_pki(tmp_path)
    # Simulate a crash between writing a new key and its certificate.
    _, stray_key = first.ca.issue("x", client=True)
    first.admin_key_path.write_bytes(stray_key)
    second = ensure_server_pki(tmp_path)
    cert = _cert(second.admin_cert_pem)
    key = serialization.load_pem_private_key(second.admin_key_pem, None)
    assert cert.public_key() == key.public_key()
    assert second.ca_pem == first.ca_pem


# Kubeconfig


def test_kubeconfig_embeds_credentials(tmp_path: Path) -> None:
    server = ensure_server_pki(tmp_path)
    path = tmp_path / "out" / "admin.kubeconfig"
    write_kubeconfig(
        path,
        server_url="https://127.0.0.1:6443",
        ca_pem=server.ca_pem,
        cert_pem=server.admin_cert_pem,
        key_pem=server.admin_key_pem,
    )
    assert _mode(path) == 0o600
    config = yaml.safe_load(path.read_text())
    assert config["kind"] == "Config"
    assert config["current-context"] == "hypermesh"
    cluster = config["clusters"][0]["cluster"]
    assert cluster["server"] == "https://127.0.0.1:6443"
    assert base64.b64decode(cluster["certificate-authority-data"]) == server.ca_pem
    user = config["users"][0]["user"]
    assert base64.b64decode(user["client-certificate-data"]) == server.admin_cert_pem
    assert base64.b64decode(user["client-key-data"]) == server.admin_key_pem
    context = config["contexts"][0]["context"]
    assert context == {"cluster": "hypermesh", "user": "admin", "namespace": "default"}


def test_issue_user_kubeconfig_names_the_user(tmp_path: Path, ca: CertificateAuthority) -> None:
    path = tmp_path / "jane.kubeconfig"
    pki.issue_user_kubeconfig(
        path, ca, server_url="https://h:1", user="jane", groups=["dev"], namespace="team"
    )
    config = yaml.safe_load(path.read_text())
    cert_pem = base64.b64decode(config["users"][0]["user"]["client-certificate-data"])
    assert identity_from_der(_der(cert_pem)) == Identity("jane", ("dev",))
    assert config["users"][0]["name"] == "jane"
    assert config["contexts"][0]["context"]["namespace"] == "team"
