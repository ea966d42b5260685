"""Certificates and identities: the cluster CA, the files a server needs, kubeconfigs.

Everything a caller needs is re-exported here; the submodules are `ca` (issuing), `bootstrap`
(a server's first-start key material), `kubeconfig`, `identity` (certificate -> user/groups),
`verify` (chain verification for TLS stacks that skip it) and `files` (safe key writes).
"""

from hypermesh.pki.bootstrap import DEFAULT_HOSTS, ServerPKI, ensure_server_pki
from hypermesh.pki.ca import CertificateAuthority
from hypermesh.pki.identity import Identity, identity_from_cert, identity_from_der
from hypermesh.pki.kubeconfig import issue_user_kubeconfig, render_kubeconfig, write_kubeconfig
from hypermesh.pki.verify import CertificateRejected, ClientCertificateVerifier

__all__ = [
    "DEFAULT_HOSTS",
    "CertificateAuthority",
    "CertificateRejected",
    "ClientCertificateVerifier",
    "Identity",
    "ServerPKI",
    "ensure_server_pki",
    "identity_from_cert",
    "identity_from_der",
    "issue_user_kubeconfig",
    "render_kubeconfig",
    "write_kubeconfig",
]
