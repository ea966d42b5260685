"""Certificates and identities: the cluster's root and intermediate, issuing, kubeconfigs.

Everything a caller needs is re-exported here; the submodules are `ca` (the root and the
issuing intermediate), `hierarchy` (`pki init`, `rotate-intermediate`: the operations needing
the root key), `signer` (what the Certificate controller issues with), `keys` (algorithms),
`profile` (what a leaf says: names, usages), `names` (checking DNS names, IPs, URIs and SPIFFE
IDs), `renewal` (renewal time and failure backoff), `bootstrap` (a server's first-start key
material), `kubeconfig`, `identity` (certificate -> user/groups), `verify` (chain verification
for TLS stacks that skip it), `files` (safe key writes), `csr` (certificate signing requests,
the CA hash a joining node checks, credential ids) and `bootstraptoken` (the tokens nodes join
with, in kubeadm's format).
"""

from hypermesh.pki.bootstrap import DEFAULT_HOSTS, ServerPKI, ensure_server_pki
from hypermesh.pki.ca import CertificateAuthority, LegacyRootError, RootCA
from hypermesh.pki.identity import Identity, identity_from_cert, identity_from_der
from hypermesh.pki.kubeconfig import issue_user_kubeconfig, render_kubeconfig, write_kubeconfig
from hypermesh.pki.signer import Issued, Signer, SigningError
from hypermesh.pki.verify import CertificateRejected, ClientCertificateVerifier

__all__ = [
    "DEFAULT_HOSTS",
    "CertificateAuthority",
    "CertificateRejected",
    "ClientCertificateVerifier",
    "Identity",
    "Issued",
    "LegacyRootError",
    "RootCA",
    "ServerPKI",
    "Signer",
    "SigningError",
    "ensure_server_pki",
    "identity_from_cert",
    "identity_from_der",
    "issue_user_kubeconfig",
    "render_kubeconfig",
    "write_kubeconfig",
]
