"""Every example in manifests/ applies cleanly to a fresh server, as the README promises."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.conftest import Server

MANIFESTS = sorted((Path(__file__).parents[2] / "manifests").glob("*.yaml"))


@pytest.mark.parametrize("path", MANIFESTS, ids=[p.name for p in MANIFESTS])
def test_manifest_applies(server: Server, path: Path) -> None:
    out = server.kubectl("apply", "-f", str(path)).stdout
    assert "created" in out or "configured" in out or "unchanged" in out
    again = server.kubectl("apply", "-f", str(path)).stdout
    assert "unchanged" in again, again
