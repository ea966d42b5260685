"""Issuing for the Certificate kind: key algorithms, usages, the Signer, and spec intents."""

from __future__ import annotations

import datetime
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509 import verification

from hypermesh.pki import CertificateAuthority, Signer, SigningError, hierarchy, keys, profile
from hypermesh.pki import intent as intents
from hypermesh.pki.ca import cert_to_pem
from hypermesh.pki.profile import LeafRequest

OPENSSL = shutil.which("openssl")
NS = "team-a"
POLICY = intents.Policy(trust_domain="cluster.local", min_duration=datetime.timedelta(seconds=1))


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.generate()


def _intent(spec: dict[str, Any], policy: intents.Policy = POLICY) -> intents.Intent:
    return intents.from_spec({"secretName": "s", **spec}, namespace=NS, policy=policy)


# Keys


@pytest.mark.parametrize(
    ("algorithm", "size", "kind", "bits"),
    [
        (None, None, ec.EllipticCurvePrivateKey, 256),
        ("ECDSA", 384, ec.EllipticCurvePrivateKey, 384),
        ("ECDSA", 521, ec.EllipticCurvePrivateKey, 521),
        ("Ed25519", None, ed25519.Ed25519PrivateKey, 0),
        ("RSA", None, rsa.RSAPrivateKey, 2048),
        ("RSA", 3072, rsa.RSAPrivateKey, 3072),
        ("RSA", 4096, rsa.RSAPrivateKey, 4096),
    ],
)
def test_key_algorithms(algorithm: str | None, size: int | None, kind: type, bits: int) -> None:
    spec = keys.KeySpec.parse(algorithm, size)
    key = keys.generate(spec)
    assert isinstance(key, kind)
    assert keys.spec_of(key) == spec and spec.size == bits
    assert keys.spec_of(keys.load_pem(keys.to_pem(key))) == spec


@pytest.mark.parametrize(
    ("algorithm", "size", "message"),
    [
        ("DSA", None, "use one of ECDSA, Ed25519, RSA"),
        ("RSA", 1024, "use one of 2048, 3072, 4096"),
        ("RSA", 8192, "use one of 2048, 3072, 4096"),
        ("ECDSA", 224, "use one of 256, 384, 521"),
    ],
)
def test_unsupported_keys_are_refused_precisely(
    algorithm: str, size: int | None, message: str
) -> None:
    with pytest.raises(keys.KeySpecError, match=message):
        keys.KeySpec.parse(algorithm, size)


# Usages


def test_usages_map_to_extensions_and_back(ca: CertificateAuthority) -> None:
    usages = profile.normalize_usages(
        ["signing", "key encipherment", "server auth", "client auth", "code signing"]
    )
    assert "signing" not in usages and "digital signature" in usages
    cert = ca.sign(
        LeafRequest(common_name="u", usages=usages),
        keys.generate(keys.KeySpec("RSA", 2048)).public_key(),
    )
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and ku.value.key_encipherment
    assert profile.usages_of(cert) == usages


def test_default_usages_keep_key_encipherment_for_rsa_only() -> None:
    assert profile.default_usages("RSA") == {"digital signature", "key encipherment"}
    assert profile.default_usages("ECDSA") == {"digital signature"}


def test_bad_usage_combinations() -> None:
    with pytest.raises(profile.UsageError, match="unknown usage 'launch'"):
        profile.normalize_usages(["launch"])
    with pytest.raises(profile.UsageError, match="require 'key agreement'"):
        profile.key_usage_extension(frozenset({"encipher only"}))
    assert "cert sign" in profile.normalize_usages([], is_ca=True)


# The Signer


@pytest.mark.parametrize(
    "spec",
    [
        keys.KeySpec(),
        keys.KeySpec("ECDSA", 384),
        keys.KeySpec("Ed25519", 0),
        keys.KeySpec("RSA", 2048),
    ],
)
def test_signer_issues_chains_for_every_algorithm(
    ca: CertificateAuthority, spec: keys.KeySpec, tmp_path: Path
) -> None:
    signer = Signer.from_authority(ca)
    request = LeafRequest(
        common_name="web",
        dns_names=("web.team-a.svc",),
        ip_addresses=("10.0.0.1",),
        uris=("spiffe://cluster.local/ns/team-a/sa/web",),
        usages=frozenset({"digital signature", "server auth", "client auth"}),
        lifetime=datetime.timedelta(hours=2),
    )
    issued = signer.issue(request, keys.generate(spec))
    leaf, intermediate = x509.load_pem_x509_certificates(issued.cert_pem)
    assert leaf == issued.certificate and intermediate == ca.cert
    assert issued.ca_pem == ca.cert_pem
    assert keys.spec_of(leaf.public_key()) == spec  # type: ignore[arg-type]
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == datetime.timedelta(hours=2)
    store = verification.Store([ca.root])
    verifier = (
        verification.PolicyBuilder()
        .store(store)
        .build_server_verifier(x509.DNSName("web.team-a.svc"))
    )
    verifier.verify(leaf, [intermediate])
    assert signer.problem_with(issued.cert_pem, issued.key_pem) is None
    if OPENSSL:
        (tmp_path / "leaf.pem").write_bytes(cert_to_pem(leaf))
        (tmp_path / "chain.pem").write_bytes(ca.chain_pem)
        (tmp_path / "ca.pem").write_bytes(issued.ca_pem)
        result = subprocess.run(
            [OPENSSL, "verify", "-CAfile", str(tmp_path / "ca.pem"), "-untrusted",
             str(tmp_path / "chain.pem"), str(tmp_path / "leaf.pem")],
            capture_output=True, text=True,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr


def test_signer_names_what_is_wrong_with_a_stored_chain(ca: CertificateAuthority) -> None:
    signer = Signer.from_authority(ca)
    request = LeafRequest(common_name="web", usages=frozenset({"digital signature"}))
    issued = signer.issue(request, keys.generate())
    other = Signer.from_authority(CertificateAuthority.generate()).issue(request, keys.generate())
    assert "not by the current issuing CA" in (signer.problem_with(other.cert_pem) or "")
    leaf_only = cert_to_pem(issued.certificate)
    assert "current chain" in (signer.problem_with(leaf_only) or "")
    assert "does not match" in (signer.problem_with(issued.cert_pem, other.key_pem) or "")
    assert "no readable PEM" in (signer.problem_with(b"garbage") or "")


def test_directory_signer_follows_a_rotation(tmp_path: Path) -> None:
    hierarchy.init(tmp_path)
    signer = Signer.from_directory(tmp_path / "pki")
    request = LeafRequest(common_name="web", usages=frozenset({"digital signature"}))
    before = signer.issue(request, keys.generate())
    rotated = hierarchy.rotate_intermediate(tmp_path)
    assert signer.authority().cert == rotated.cert
    # What the previous intermediate signed is now "not the current CA": it will be re-issued.
    assert "not by the current issuing CA" in (signer.problem_with(before.cert_pem) or "")
    after = signer.issue(request, keys.generate())
    assert x509.load_pem_x509_certificates(after.cert_pem)[1] == rotated.cert


def test_directory_signer_without_a_ca_raises_signing_error(tmp_path: Path) -> None:
    signer = Signer.from_directory(tmp_path / "missing")
    with pytest.raises(SigningError, match="cannot load the issuing CA"):
        signer.issue(LeafRequest(common_name="x"), keys.generate())


def test_a_leaf_never_outlives_the_intermediate() -> None:
    short = hierarchy.RootCA.generate().new_intermediate(days=1)
    issued = Signer.from_authority(short).issue(
        LeafRequest(common_name="x", lifetime=datetime.timedelta(days=30)), keys.generate()
    )
    assert issued.certificate.not_valid_after_utc == short.cert.not_valid_after_utc


# Intents (what a Certificate's spec asks for)


def test_intent_defaults_are_cert_managers() -> None:
    intent = _intent({"dnsNames": ["web.team-a.svc"]})
    assert intent.duration == datetime.timedelta(hours=24)
    assert intent.renew_before is None
    assert intent.key == keys.KeySpec("ECDSA", 256)
    assert intent.rotate_key is True
    assert intent.request.usages == {"digital signature"}
    assert intent.request.is_ca is False


def test_intent_lists_every_problem_with_field_paths() -> None:
    with pytest.raises(intents.InvalidSpec) as caught:
        _intent(
            {
                "uris": ["not a uri"],
                "ipAddresses": ["10.0.0.300"],
                "privateKey": {"algorithm": "RSA", "size": 1024},
                "duration": "10s",
                "renewBefore": "20s",
                "isCA": True,
                "issuerRef": {"name": "letsencrypt"},
            }
        )
    paths = [error.path for error in caught.value.errors]
    assert paths == [
        "spec.ipAddresses[0]",
        "spec.uris[0]",
        "spec.issuerRef",
        "spec.privateKey",
        "spec.isCA",
        "spec.renewBefore",
    ]
    assert 'spec.uris[0]: Invalid value: "not a uri": must be an absolute URI' in str(caught.value)


def test_intent_needs_a_name_and_a_long_enough_duration() -> None:
    with pytest.raises(intents.InvalidSpec, match="at least one of commonName"):
        _intent({})
    strict = intents.Policy()
    with pytest.raises(intents.InvalidSpec, match=r"spec.duration.*at least 1h0m0s"):
        _intent({"commonName": "x", "duration": "30m"}, strict)


def test_is_ca_only_when_allowed() -> None:
    with pytest.raises(intents.InvalidSpec, match="allow_ca"):
        _intent({"commonName": "sub", "isCA": True})
    allowed = _intent({"commonName": "sub", "isCA": True}, intents.Policy(allow_ca=True))
    assert allowed.request.is_ca and "cert sign" in allowed.request.usages


def test_fingerprint_follows_what_issuance_depends_on() -> None:
    base = {"dnsNames": ["a.example"], "duration": "2h"}
    first = _intent(base).fingerprint
    assert _intent({**base, "renewBefore": "30m"}).fingerprint == first
    assert _intent({**base, "duration": "3h"}).fingerprint != first
    assert _intent({**base, "dnsNames": ["b.example"]}).fingerprint != first
    assert _intent({**base, "privateKey": {"algorithm": "Ed25519"}}).fingerprint != first
    assert _intent({**base, "privateKey": {"rotationPolicy": "Never"}}).fingerprint == first


def test_mismatch_reads_the_certificate(ca: CertificateAuthority) -> None:
    intent = _intent(
        {
            "commonName": "web",
            "dnsNames": ["web.team-a.svc"],
            "ipAddresses": ["0:0::1"],
            "uris": ["spiffe://cluster.local/ns/team-a/sa/web"],
            "usages": ["server auth", "digital signature"],
        }
    )
    signer = Signer.from_authority(ca)
    good = signer.issue(intent.request, keys.generate(intent.key)).certificate
    assert intents.mismatch(intent, good) is None
    other = _intent({"commonName": "web", "dnsNames": ["other.team-a.svc"]})
    assert "DNS names are [web.team-a.svc]" in (intents.mismatch(other, good) or "")
    rsa_intent = _intent({**{"commonName": "web"}, "privateKey": {"algorithm": "RSA"}})
    wrong_key = signer.issue(rsa_intent.request, keys.generate()).certificate
    assert "its key is ECDSA 256, the spec asks for RSA 2048" in (
        intents.mismatch(rsa_intent, wrong_key) or ""
    )
