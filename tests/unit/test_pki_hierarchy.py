"""The root and intermediate: chains that every verifier accepts, the offline root, rotation,
and data dirs made before intermediates existed."""

from __future__ import annotations

import datetime
import shutil
import socket
import ssl
import stat
import subprocess
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import verification
from cryptography.x509.oid import NameOID

from hypermesh.cli import daemon
from hypermesh.pki import (
    CertificateAuthority,
    ClientCertificateVerifier,
    Identity,
    LegacyRootError,
    RootCA,
    Signer,
    ensure_server_pki,
    hierarchy,
    keys,
)
from hypermesh.pki.ca import cert_to_pem, key_to_pem
from hypermesh.pki.profile import LeafRequest

OPENSSL = shutil.which("openssl")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _chain(pem: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem)


def _constraints(cert: x509.Certificate) -> x509.BasicConstraints:
    return cert.extensions.get_extension_for_class(x509.BasicConstraints).value


def _server_verifier(root_pem: bytes, name: str) -> verification.ServerVerifier:
    store = verification.Store(x509.load_pem_x509_certificates(root_pem))
    return verification.PolicyBuilder().store(store).build_server_verifier(x509.DNSName(name))


def _legacy_ca(directory: Path) -> x509.Certificate:
    """A CA as HyperMesh wrote it before intermediates: self-signed, path length 0."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hypermesh-ca")])
    now = datetime.datetime.now(datetime.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, mode=0o700)
    (directory / "ca.crt").write_bytes(cert_to_pem(cert))
    (directory / "ca.key").write_bytes(key_to_pem(key))
    return cert


# The hierarchy


def test_root_signs_an_intermediate_that_signs_leaves() -> None:
    root = RootCA.generate("test-root")
    ca = root.new_intermediate()
    assert _constraints(root.cert).path_length == 1
    assert _constraints(ca.cert).ca and _constraints(ca.cert).path_length == 0
    ca.cert.verify_directly_issued_by(root.cert)
    assert ca.root == root.cert and ca.chain == (ca.cert,) and not ca.is_root
    assert ca.cert_pem == root.cert_pem
    assert ca.cert.not_valid_after_utc <= root.cert.not_valid_after_utc

    cert_pem, _ = ca.issue("web", dns_names=["localhost"], server=True)
    leaf, intermediate = _chain(cert_pem)
    assert intermediate == ca.cert
    # cryptography's WebPKI verifier builds leaf -> intermediate -> root.
    path = _server_verifier(root.cert_pem, "localhost").verify(leaf, [intermediate])
    assert path[-1] == root.cert


def test_a_ca_below_the_intermediate_cannot_chain_to_the_root() -> None:
    """Why an allowed isCA Certificate still cannot mint identities the cluster trusts."""
    root = RootCA.generate()
    ca = root.new_intermediate()
    cert_pem, _ = ca.issue("x", client=True)
    assert _constraints(_chain(cert_pem)[0]).ca is False
    sub_key = keys.generate()
    sub_cert = ca.sign(
        LeafRequest(common_name="sub-ca", usages=frozenset({"cert sign"}), is_ca=True),
        sub_key.public_key(),
    )
    assert _constraints(sub_cert).ca
    sub = CertificateAuthority(sub_cert, sub_key, root=root.cert)
    leaf = sub.sign(
        LeafRequest(dns_names=("deep.example",), usages=frozenset({"server auth"})),
        keys.generate().public_key(),
    )
    with pytest.raises(verification.VerificationError):
        _server_verifier(root.cert_pem, "deep.example").verify(leaf, [sub_cert, ca.cert])


def test_an_intermediate_of_another_root_is_refused(tmp_path: Path) -> None:
    ours, theirs = RootCA.generate("same-name"), RootCA.generate("same-name")
    cert_pem, _ = theirs.new_intermediate().issue("web", dns_names=["localhost"], server=True)
    leaf, intermediate = _chain(cert_pem)
    with pytest.raises(verification.VerificationError):
        _server_verifier(ours.cert_pem, "localhost").verify(leaf, [intermediate])


def test_create_writes_root_and_intermediate_privately(tmp_path: Path) -> None:
    ca = CertificateAuthority.create(tmp_path / "pki")
    directory = tmp_path / "pki"
    assert _mode(directory) == 0o700
    assert _mode(directory / "ca.key") == 0o600
    assert _mode(directory / "intermediate.pem") == 0o600
    assert (directory / "ca.crt").read_bytes() == ca.cert_pem
    loaded = CertificateAuthority.load(directory)
    assert (loaded.cert, loaded.root) == (ca.cert, ca.root)


def test_load_refuses_an_intermediate_of_another_root(tmp_path: Path) -> None:
    CertificateAuthority.create(tmp_path)
    CertificateAuthority.generate().save(tmp_path)
    with pytest.raises(ValueError, match="not signed by the root"):
        CertificateAuthority.load(tmp_path)


# A server's key material


def test_server_pki_hands_out_chains_to_the_root(tmp_path: Path) -> None:
    server = ensure_server_pki(tmp_path)
    assert server.ca_pem == (tmp_path / "pki" / "ca.crt").read_bytes()
    assert not server.ca.is_root
    for pem in (server.server_cert_pem, server.admin_cert_pem):
        leaf, intermediate = _chain(pem)
        assert intermediate == server.ca.cert
        assert server.ca.issued(leaf)
    leaf, intermediate = _chain(server.server_cert_pem)
    _server_verifier(server.ca_pem, "localhost").verify(leaf, [intermediate])
    # The HTTP/3 listener's check of client chains.
    admin, intermediate = _chain(server.admin_cert_pem)
    verifier = ClientCertificateVerifier(server.ca_pem)
    assert verifier.verify(admin, [intermediate]) == Identity("admin", ("system:masters",))


def test_tls_handshake_sends_and_accepts_the_chain(tmp_path: Path) -> None:
    """What the TCP listener and every client do: load the chain file, trust only ca.crt."""
    pki = ensure_server_pki(tmp_path)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(pki.server_cert_path, pki.server_key_path)
    server_ctx.load_verify_locations(pki.ca_cert_path)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client_ctx = ssl.create_default_context(cafile=str(pki.ca_cert_path))
    client_ctx.load_cert_chain(pki.admin_cert_path, pki.admin_key_path)

    a, b = socket.socketpair()
    seen: dict[str, object] = {}

    def serve() -> None:
        with server_ctx.wrap_socket(a, server_side=True) as tls:
            seen["client"] = tls.getpeercert()
            tls.sendall(b"ok")

    thread = threading.Thread(target=serve)
    thread.start()
    with client_ctx.wrap_socket(b, server_hostname="localhost") as tls:
        assert tls.recv(2) == b"ok"
    thread.join(10)
    subject = dict(item[0] for item in seen["client"]["subject"])  # type: ignore[index]
    assert subject["commonName"] == "admin"


@pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed")
def test_openssl_verifies_the_chains(tmp_path: Path) -> None:
    pki = ensure_server_pki(tmp_path)
    for pem, purpose in ((pki.server_cert_pem, "sslserver"), (pki.admin_cert_pem, "sslclient")):
        leaf, intermediate = _chain(pem)
        (tmp_path / "leaf.pem").write_bytes(cert_to_pem(leaf))
        (tmp_path / "untrusted.pem").write_bytes(cert_to_pem(intermediate))
        args = [str(OPENSSL), "verify", "-CAfile", str(pki.ca_cert_path), "-purpose", purpose]
        ok = subprocess.run(
            [*args, "-untrusted", str(tmp_path / "untrusted.pem"), str(tmp_path / "leaf.pem")],
            capture_output=True,
            text=True,
        )
        assert ok.returncode == 0, ok.stdout + ok.stderr
        # Without the intermediate there is no path: the chain file is what makes it work.
        alone = subprocess.run([*args, str(tmp_path / "leaf.pem")], capture_output=True)
        assert alone.returncode != 0


def test_rotated_intermediate_reissues_server_certificates_and_keeps_the_root(
    tmp_path: Path,
) -> None:
    first = ensure_server_pki(tmp_path)
    rotated = hierarchy.rotate_intermediate(tmp_path)
    assert rotated.cert != first.ca.cert and rotated.root == first.ca.root
    second = ensure_server_pki(tmp_path)
    assert second.ca_pem == first.ca_pem
    assert second.ca.cert == rotated.cert
    assert second.server_cert_pem != first.server_cert_pem
    assert _chain(second.admin_cert_pem)[1] == rotated.cert
    # What the old intermediate signed still verifies: it carries its own intermediate.
    leaf, old_intermediate = _chain(first.server_cert_pem)
    _server_verifier(first.ca_pem, "localhost").verify(leaf, [old_intermediate])


def test_an_intermediate_near_expiry_is_renewed_when_the_root_is_at_hand(tmp_path: Path) -> None:
    directory = tmp_path / "pki"
    root = RootCA.generate()
    root.save(directory)
    short = root.new_intermediate(days=30)
    short.save(directory)
    renewed = hierarchy.ensure_issuer(directory)
    assert renewed.cert != short.cert
    assert renewed.cert.not_valid_after_utc > short.cert.not_valid_after_utc


# The offline root


def test_init_with_root_out_leaves_no_root_key_in_the_data_dir(tmp_path: Path) -> None:
    data, offline = tmp_path / "data", tmp_path / "offline"
    ca = hierarchy.init(data, root_out=offline)
    assert not (data / "pki" / "ca.key").exists()
    assert _mode(offline / "ca.key") == 0o600 and _mode(offline) == 0o700
    assert (data / "pki" / "ca.crt").read_bytes() == (offline / "ca.crt").read_bytes()
    # The server starts from it and signs with the intermediate.
    server = ensure_server_pki(data)
    assert server.ca.cert == ca.cert
    assert not (data / "pki" / "ca.key").exists()
    # Rotation needs the offline root, and says so.
    with pytest.raises(hierarchy.PKIError, match="--root"):
        hierarchy.rotate_intermediate(data)
    rotated = hierarchy.rotate_intermediate(data, root_dir=offline)
    assert CertificateAuthority.load(data / "pki").cert == rotated.cert


def test_init_never_replaces_a_cluster_ca(tmp_path: Path) -> None:
    ensure_server_pki(tmp_path)
    before = (tmp_path / "pki" / "ca.crt").read_bytes()
    with pytest.raises(hierarchy.PKIError, match="already exists"):
        hierarchy.init(tmp_path)
    assert (tmp_path / "pki" / "ca.crt").read_bytes() == before


def test_rotation_refuses_another_clusters_root(tmp_path: Path) -> None:
    hierarchy.init(tmp_path / "a", root_out=tmp_path / "root-a")
    hierarchy.init(tmp_path / "b", root_out=tmp_path / "root-b")
    with pytest.raises(hierarchy.PKIError, match="is not this cluster's root"):
        hierarchy.rotate_intermediate(tmp_path / "a", root_dir=tmp_path / "root-b")


def test_cli_init_and_rotate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, offline = tmp_path / "data", tmp_path / "offline"
    assert daemon.main(["pki", "init", "--data-dir", str(data), "--root-out", str(offline)]) == 0
    first = CertificateAuthority.load(data / "pki").cert
    assert daemon.main(["pki", "rotate-intermediate", "--data-dir", str(data)]) == 1
    assert "--root" in capsys.readouterr().err
    code = daemon.main(
        ["pki", "rotate-intermediate", "--data-dir", str(data), "--root", str(offline)]
    )
    assert code == 0
    assert CertificateAuthority.load(data / "pki").cert != first
    assert daemon.main(["pki", "init", "--data-dir", str(data)]) == 1
    assert "already exists" in capsys.readouterr().err


# Data dirs from before intermediates


def test_a_legacy_data_dir_keeps_its_ca_and_kubeconfigs(tmp_path: Path) -> None:
    legacy = _legacy_ca(tmp_path / "pki")
    anchor = (tmp_path / "pki" / "ca.crt").read_bytes()
    server = ensure_server_pki(tmp_path)
    assert server.ca_pem == anchor
    assert server.ca.is_root and server.ca.cert == legacy
    assert not (tmp_path / "pki" / "intermediate.pem").exists()
    # Leaves are signed by the old CA directly, so clients holding the old ca.crt still verify.
    (leaf,) = _chain(server.server_cert_pem)
    _server_verifier(anchor, "localhost").verify(leaf, [])
    (admin,) = _chain(server.admin_cert_pem)
    assert ClientCertificateVerifier(anchor).verify(admin) == Identity("admin", ("system:masters",))
    # A Signer over it works too.
    assert Signer.from_directory(tmp_path / "pki").authority().cert == legacy


def test_a_legacy_root_refuses_to_sign_an_intermediate(tmp_path: Path) -> None:
    _legacy_ca(tmp_path / "pki")
    with pytest.raises(LegacyRootError, match="path length 0"):
        RootCA.load(tmp_path / "pki").new_intermediate()
    with pytest.raises(hierarchy.PKIError, match="path length 0"):
        hierarchy.rotate_intermediate(tmp_path)
