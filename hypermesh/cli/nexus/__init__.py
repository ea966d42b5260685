"""`nexus`: the command-line client people use every day, kubectl's habits over HyperMesh's API.

The package root only re-exports `main`; argument parsing lives in `dispatch`, one module per
command under `commands/`, output in `tables`, `formats` and `yamlio`. Every heavy import (the
client's TLS and QUIC machinery, ruamel.yaml) happens inside the command that needs it, so
`nexus --help` and `nexus version --client` start in a blink.
"""

from __future__ import annotations

from hypermesh.cli.nexus.dispatch import main

__all__ = ["main"]
