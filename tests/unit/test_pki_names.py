"""Names a certificate may carry: DNS names, IP addresses, URIs and SPIFFE IDs."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hypermesh.pki import names

NS = "team-a"
TD = "cluster.local"


def _uri(value: str, *, namespace: str = NS, trust_domain: str | None = TD) -> str | None:
    return names.uri_error(value, namespace=namespace, trust_domain=trust_domain)


@pytest.mark.parametrize(
    "value", ["web", "web.default.svc", "*.example.com", "a-b.c-d.example", "x" * 63 + ".io"]
)
def test_good_dns_names(value: str) -> None:
    assert names.dns_name_error(value) is None


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("", "empty"),
        ("-web.example", "DNS name"),
        ("web..example", "DNS name"),
        ("x" * 64 + ".io", "DNS name"),
        ("a." * 127 + "io", "253"),
        ("*", "two labels"),
        ("*.com", "two labels"),
        ("www.*.example.com", "first label"),
        ("w*.example.com", "first label"),
        ("web_1.example", "DNS name"),
    ],
)
def test_bad_dns_names_say_why(value: str, why: str) -> None:
    reason = names.dns_name_error(value)
    assert reason is not None and why in reason


@pytest.mark.parametrize("value", ["10.0.0.1", "::1", "fd00::1", "0:0::1"])
def test_ip_addresses(value: str) -> None:
    assert names.ip_address_error(value) is None


@pytest.mark.parametrize("value", ["10.0.0.256", "localhost", "10.0.0.0/8", "", "fd00::1::2"])
def test_bad_ip_addresses(value: str) -> None:
    assert "IPv4 or IPv6" in (names.ip_address_error(value) or "")


@pytest.mark.parametrize(
    "value",
    [
        f"spiffe://{TD}/ns/{NS}/sa/web",
        f"spiffe://{TD}/ns/{NS}/sa/web.api",
        "https://example.com/path?q=1",
        "urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66",
    ],
)
def test_good_uris(value: str) -> None:
    assert _uri(value) is None


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("not a uri", "absolute URI without spaces"),
        ("web.default.svc", "absolute URI (scheme:rest)"),
        ("/just/a/path", "absolute URI"),
        ("spiffe://Cluster.Local/ns/team-a/sa/web", "lower-case letters"),
        ("spiffe://cluster.local:8443/ns/team-a/sa/web", "no port"),
        ("spiffe:///ns/team-a/sa/web", "needs a trust domain"),
        ("spiffe://cluster.local/ns/team-a/sa/web/", "empty segments"),
        ("spiffe://cluster.local/ns/team-a/sa/../web", "'..'"),
        ("spiffe://cluster.local/ns/team-a/sa/web?x=1", "no query"),
        ("spiffe://cluster.local/ns/team-a/sa/w%20b", "only letters"),
        ("spiffe://cluster.local/workload/web", "/ns/<namespace>/sa/<name>"),
        ("spiffe://cluster.local/ns/team-a/sa/Web", "lower-case DNS subdomain"),
        ("SPIFFE://cluster.local/ns/team-a/sa/web", "spiffe:// (lower case)"),
        ("spiffe://other.domain/ns/team-a/sa/web", "this cluster's, 'cluster.local'"),
        ("spiffe://cluster.local/ns/team-b/sa/web", "only name identities of that namespace"),
    ],
)
def test_bad_uris_say_why(value: str, why: str) -> None:
    reason = _uri(value)
    assert reason is not None and why in reason, reason


def test_any_trust_domain_when_none_is_configured() -> None:
    assert _uri("spiffe://elsewhere.example/ns/team-a/sa/web", trust_domain=None) is None


def test_spiffe_id_parts_round_trip() -> None:
    identity = names.parse_spiffe_id(f"spiffe://{TD}/ns/{NS}/sa/web")
    assert identity == names.SpiffeID(TD, NS, "web")
    assert str(identity) == f"spiffe://{TD}/ns/{NS}/sa/web"


def test_check_lists_every_bad_field_with_its_path() -> None:
    with pytest.raises(names.InvalidNames) as caught:
        names.check(
            namespace=NS,
            trust_domain=TD,
            dns_names=["ok.example", "bad..example"],
            ip_addresses=["1.2.3.4", "nope"],
            uris=["not a uri"],
        )
    text = str(caught.value)
    assert [e.path for e in caught.value.errors] == [
        "spec.dnsNames[1]",
        "spec.ipAddresses[1]",
        "spec.uris[0]",
    ]
    assert 'spec.uris[0]: Invalid value: "not a uri": must be an absolute URI' in text


def test_at_most_one_spiffe_id() -> None:
    with pytest.raises(names.InvalidNames, match=r"spec.uris\[1\].*at most one SPIFFE ID"):
        names.check(
            namespace=NS,
            trust_domain=TD,
            dns_names=[],
            ip_addresses=[],
            uris=[f"spiffe://{TD}/ns/{NS}/sa/a", f"spiffe://{TD}/ns/{NS}/sa/b"],
        )


@given(st.text(max_size=80))
def test_uri_checks_never_crash(value: str) -> None:
    reason = _uri(value)
    assert reason is None or isinstance(reason, str)
    assert names.dns_name_error(value) is None or isinstance(names.dns_name_error(value), str)
