"""The hypermesh.io kinds more than one process talks about, named once.

Controllers, the node agent and the simulator all read and write Workloads, Nodes and
Instances (and node agents and the CSR signer, CertificateSigningRequests) through `hypermesh.client`, which names a kind with a `Resource`; spelling them out
here means no module guesses a plural, and none has to import another's private module.
"""

from __future__ import annotations

from hypermesh.client.resources import Resource

WORKLOADS = Resource(
    group="hypermesh.io",
    version="v1",
    kind="Workload",
    plural="workloads",
    singular="workload",
    namespaced=True,
    short_names=("wl",),
    subresources=("status",),
)
NODES = Resource(
    group="hypermesh.io",
    version="v1",
    kind="Node",
    plural="nodes",
    singular="node",
    namespaced=False,
    short_names=("no",),
    subresources=("status",),
)
INSTANCES = Resource(
    group="hypermesh.io",
    version="v1",
    kind="Instance",
    plural="instances",
    singular="instance",
    namespaced=True,
    subresources=("status",),
)
CSRS = Resource(
    group="certificates.k8s.io",
    version="v1",
    kind="CertificateSigningRequest",
    plural="certificatesigningrequests",
    singular="certificatesigningrequest",
    namespaced=False,
    short_names=("csr",),
    subresources=("status",),
)
