"""`nexus cert revoke NAME` and `nexus cert revoke --serial HEX`: put a certificate on the
revocation list.

With a Certificate's name, the serial revoked is the one in the Certificate's Secret (the
certificate its users hold), and `status.serialNumber` too if it differs; the certificates
controller sees the revocation and issues a replacement with a new key at once (`--wait` waits
for it and prints the new serial). With `--serial`, any certificate of the cluster CA can be
revoked: a user's from `hypermesh user create`, a node's, the admin's. Either way the API server
and every node agent refuse the certificate within seconds and close the connections it holds.

A revocation is a CertificateRevocation named by the serial in hex, so revoking twice says so
instead of failing; `nexus get certrev` lists them and deleting one un-revokes. Only
cluster-admin may revoke.

The dispatcher imports this module to build its sub-parsers, so only argparse and the standard
library are imported at the top.
"""

from __future__ import annotations

import argparse
import base64
import time
from typing import TYPE_CHECKING, Any

from hypermesh.cli.nexus import errors

if TYPE_CHECKING:
    from cryptography import x509

    from hypermesh.cli.nexus.session import Session

REASONS = (
    "unspecified",
    "keyCompromise",
    "cACompromise",
    "affiliationChanged",
    "superseded",
    "cessationOfOperation",
    "certificateHold",
    "privilegeWithdrawn",
    "aACompromise",
)
POLL_INTERVAL = 0.25


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    """The `cert` command and its `revoke` sub-command."""
    from hypermesh.cli.nexus.dispatch import parse_duration

    cert = sub.add_parser("cert", help="Certificates: revoke one.", description="Certificates of the cluster CA.", parents=[common])
    cert_sub = cert.add_subparsers(dest="cert_command", metavar="SUBCOMMAND", required=True)
    revoke = cert_sub.add_parser(
        "revoke", parents=[common],
        help="revoke a Certificate's current certificate (it is re-issued) or any certificate by serial",
        description="Revoke a Certificate's current certificate (the controller issues a new one) or, with --serial, any certificate of the cluster CA.",
    )  # fmt: skip
    revoke.add_argument("name", metavar="NAME", nargs="?", help="a Certificate in the namespace (certificate/NAME also works)")
    revoke.add_argument("--serial", metavar="HEX", help="revoke this serial number (hex, as `openssl x509 -serial` or status.serialNumber shows it)")
    revoke.add_argument("--reason", choices=REASONS, default=None, help="the RFC 5280 reason (default: keyCompromise for a Certificate, unspecified for --serial)")
    revoke.add_argument("--wait", action="store_true", help="with NAME: wait until the Certificate holds a new certificate")
    revoke.add_argument("--timeout", type=parse_duration, default=60.0, metavar="DURATION", help="how long --wait waits (default 60s)")


def run(args: argparse.Namespace, session: Session) -> int:
    if (args.name is None) == (args.serial is None):
        raise errors.UsageError("usage: nexus cert revoke NAME [-n NAMESPACE], or nexus cert revoke --serial HEX")
    if args.serial is not None:
        return _revoke_serial(args, session)
    return _revoke_certificate(args, session)


def parse_serial(text: str) -> int:
    """A serial as people copy it: hex, with or without `0x` and `:` separators (openssl)."""
    cleaned = text.strip().lower().removeprefix("0x").replace(":", "")
    try:
        value = int(cleaned, 16)
    except ValueError:
        raise errors.UsageError(f"--serial {text!r}: not a hexadecimal serial number") from None
    if value < 0 or value.bit_length() > 160:
        raise errors.UsageError(f"--serial {text!r}: a certificate serial has at most 40 hex digits")
    return value


def _revoke_serial(args: argparse.Namespace, session: Session) -> int:
    from hypermesh.resources import certificaterevocation as revocations

    serial = parse_serial(args.serial)
    body = revocations.revocation(serial, reason=args.reason or "unspecified")
    _create(session, body)
    return 0


def _revoke_certificate(args: argparse.Namespace, session: Session) -> int:
    from hypermesh.client.errors import ApiError
    from hypermesh.resources import certificaterevocation as revocations

    kind, _, name = args.name.rpartition("/")
    if kind and session.resolve(kind).kind != "Certificate":
        raise errors.UsageError(f"nexus cert revoke takes a Certificate, not {args.name!r}")
    resource = session.resolve("certificates.hypermesh.io")
    namespace = session.namespace
    cert = session.api.get(resource, name, namespace)
    status = cert.get("status") or {}
    secret_name = (cert.get("spec") or {}).get("secretName")
    leaves: dict[int, x509.Certificate | None] = {}
    if isinstance(status.get("serialNumber"), str):
        leaves[int(status["serialNumber"], 16)] = None
    try:
        secret = session.api.get(session.resolve("secrets"), str(secret_name), namespace)
    except ApiError as exc:
        if exc.status not in (403, 404):
            raise
        secret = None
    leaf = _leaf_of(secret)
    if leaf is not None and _issued_for(secret, name):
        leaves[leaf.serial_number] = leaf
    if not leaves:
        raise errors.CliError(f'certificate "{name}" in namespace "{namespace}" has not issued anything yet: nothing to revoke')
    ref = revocations.CertificateRef(namespace=namespace, name=name, uid=cert["metadata"].get("uid"))
    for serial, held in leaves.items():
        body = revocations.revocation(
            serial, reason=args.reason or "keyCompromise", certificate_ref=ref,
            subject=held.subject.rfc4514_string() if held is not None else None,
            issuer=held.issuer.rfc4514_string() if held is not None else None,
            not_after=held.not_valid_after_utc if held is not None else None,
        )  # fmt: skip
        _create(session, body)
    if args.wait:
        _wait_for_new(session, resource, name, namespace, set(leaves), args.timeout)
    return 0


def _create(session: Session, body: dict[str, Any]) -> None:
    from hypermesh.client.errors import ApiError

    resource = session.resolve("certificaterevocations.hypermesh.io")
    name = body["metadata"]["name"]
    try:
        session.api.create(resource, body, None)
    except ApiError as exc:
        if exc.status != 409:
            raise
        session.out(f"certificaterevocation.hypermesh.io/{name} already revoked\n")
        return
    session.out(f"certificaterevocation.hypermesh.io/{name} revoked\n")


def _leaf_of(secret: dict[str, Any] | None) -> x509.Certificate | None:
    from cryptography import x509

    value = ((secret or {}).get("data") or {}).get("tls.crt")
    if not isinstance(value, str):
        return None
    try:
        return x509.load_pem_x509_certificate(base64.b64decode(value))
    except ValueError:
        return None


def _issued_for(secret: dict[str, Any] | None, name: str) -> bool:
    """Whether the Secret holds what this Certificate issued (not another one's)."""
    annotations = ((secret or {}).get("metadata") or {}).get("annotations") or {}
    return annotations.get("hypermesh.io/certificate-name") == name


def _wait_for_new(session: Session, resource: Any, name: str, namespace: str, old: set[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        status = session.api.get(resource, name, namespace).get("status") or {}
        serial = status.get("serialNumber")
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
        if isinstance(serial, str) and int(serial, 16) not in old and ready:
            session.out(f'certificate.hypermesh.io/{name} re-issued: serial {serial} (revision {status.get("revision")})\n')
            return
        if time.monotonic() > deadline:
            raise errors.CliError(f'certificate "{name}" was not re-issued within {timeout:g}s; see nexus describe certificate {name}')
        time.sleep(POLL_INTERVAL)
