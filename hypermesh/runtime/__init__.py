"""The node agent: runs the Instances bound to this machine as real OCI containers.

The modules, from the bottom up: `images` (the node's content-addressed image store),
`rootfs` (layers unpacked for overlayfs and mounted as a container's root), `oci` (the runtime
spec of a container), `runc` (driving runc or crun), `network` (the node bridge and each
Instance's network namespace) and `agent` (the loop that watches Instances and converges them).
"""
