"""The operations that need the root key: creating the cluster PKI and rotating its intermediate.

`hypermesh pki init --data-dir D [--root-out DIR]` creates the root and the first intermediate
before a server first starts; with `--root-out` the root key is written to DIR (meant to be
carried off the machine) and never to D, so D alone can issue leaves but cannot mint another
intermediate. `hypermesh pki rotate-intermediate --data-dir D --root DIR` brings the root back
for a moment to sign a fresh intermediate.

Rotation changes nothing a client holds: `ca.crt` (the root) stays the same, certificates
signed by the previous intermediate stay valid until they expire (each carries its own
intermediate), and the server's own certificates and every Certificate are re-issued from the
new one (at the server's next start and at once by the controller, respectively).

When the root key is at hand (the default layout of `hypermesh up`), `ensure_issuer` also
renews an intermediate that is within a year of expiry, so a leaf of up to a year is never cut
short by its intermediate. With the root offline it can only warn.
"""

from __future__ import annotations

import datetime
import logging
from pathlib import Path

from hypermesh.pki import files
from hypermesh.pki.ca import (
    CA_CERT_FILE,
    CA_KEY_FILE,
    INTERMEDIATE_FILE,
    CertificateAuthority,
    RootCA,
)

log = logging.getLogger(__name__)

# An intermediate closer than this to its expiry is replaced (root at hand) or warned about.
RENEW_INTERMEDIATE_BEFORE = datetime.timedelta(days=365)


class PKIError(Exception):
    """A PKI operation that cannot be done as asked; the message says what to do instead."""


def pki_dir(data_dir: str | Path) -> Path:
    """Where a data dir keeps its certificates."""
    return Path(data_dir) / "pki"


def init(
    data_dir: str | Path, *, root_out: str | Path | None = None, common_name: str = "hypermesh-ca"
) -> CertificateAuthority:
    """Create a root and an intermediate for a new cluster; return the intermediate.

    Refuses a data dir that already has a CA: every kubeconfig handed out trusts it, so
    replacing it is never what a re-run of `init` should do."""
    directory = pki_dir(data_dir)
    files.ensure_private_dir(directory)
    with files.locked(directory):
        if (directory / CA_CERT_FILE).exists():
            raise PKIError(
                f"{directory / CA_CERT_FILE} already exists: this data dir has a cluster CA, and "
                "every kubeconfig it issued trusts it. Use `hypermesh pki rotate-intermediate` "
                "to replace the intermediate; to start over, move the pki directory away first."
            )
        root = RootCA.generate(common_name)
        ca = root.new_intermediate()
        if root_out is not None:
            out = Path(root_out)
            if (out / CA_KEY_FILE).exists():
                raise PKIError(
                    f"{out / CA_KEY_FILE} already exists: refusing to overwrite a root key"
                )
            if out.resolve() == directory.resolve():
                raise PKIError("--root-out must be another directory than the data dir's pki/")
            root.save(out)
            files.write_public(directory / CA_CERT_FILE, root.cert_pem)
        else:
            root.save(directory)
        ca.save(directory)
    return ca


def rotate_intermediate(
    data_dir: str | Path, *, root_dir: str | Path | None = None
) -> CertificateAuthority:
    """Sign a new intermediate with the root in `root_dir` (default: the data dir's pki/,
    when the root key lives there) and make it the issuing CA; return it."""
    directory = pki_dir(data_dir)
    if not (directory / CA_CERT_FILE).exists():
        raise PKIError(f"{directory / CA_CERT_FILE} does not exist: run `hypermesh pki init` first")
    source = Path(root_dir) if root_dir is not None else directory
    with files.locked(directory):
        if root_dir is None and not (directory / CA_KEY_FILE).exists():
            raise PKIError(
                f"{directory / CA_KEY_FILE} does not exist (the root key is kept offline): pass "
                "--root with the directory `hypermesh pki init --root-out` wrote it to"
            )
        try:
            root = RootCA.load(source)
        except (OSError, ValueError) as exc:
            raise PKIError(str(exc)) from exc
        anchor = (directory / CA_CERT_FILE).read_bytes()
        if root.cert_pem != anchor:
            raise PKIError(
                f"the root in {source} ({root.cert.subject.rfc4514_string()}) is not this "
                f"cluster's root ({directory / CA_CERT_FILE}): pass the --root-out directory "
                "of this cluster's `hypermesh pki init`"
            )
        try:
            ca = root.new_intermediate()
        except ValueError as exc:
            raise PKIError(str(exc)) from exc
        ca.save(directory)
    return ca


def ensure_issuer(directory: Path) -> CertificateAuthority:
    """Load (or create) the issuing CA in `directory`, renewing an intermediate near expiry
    when the root key is present. The caller holds `files.locked(directory)`."""
    ca = CertificateAuthority.load_or_create(directory)
    if ca.is_root:
        return ca
    left = ca.cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    if left > RENEW_INTERMEDIATE_BEFORE:
        return ca
    if (directory / CA_KEY_FILE).exists():
        ca = RootCA.load(directory).new_intermediate()
        ca.save(directory)
        log.info("renewed the intermediate CA in %s (the old one had %s left)", directory, left)
        return ca
    log.warning(
        "the intermediate CA in %s expires in %d days (%s) and the root key is offline: run "
        "`hypermesh pki rotate-intermediate --data-dir %s --root <root dir>`",
        directory / INTERMEDIATE_FILE,
        max(0, left.days),
        ca.cert.not_valid_after_utc.strftime("%Y-%m-%d"),
        directory.parent,
    )
    return ca
