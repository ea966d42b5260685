"""`nexus`: HyperMesh's own command-line client (its commands arrive with the nexus issue)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("nexus: not built yet; use kubectl with the admin kubeconfig for now", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
