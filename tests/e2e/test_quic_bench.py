"""`bench/quic_bench.py` still runs end to end and reports its figures in the shared shape.

Benchmarks never run as tests (their figures depend on how busy the machine is); this runs the
QUIC benchmark with a handful of connections and checks the report's shape, never the figures:
each figure beside its target and the limits measured with it, and every QUIC stack either
measured or skipped with a reason (qh3 and aiopquic are not project dependencies).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "quic_bench.py"

pytestmark = pytest.mark.e2e


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(BENCH), "--count", "6"], capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, f"quic_bench failed:\n{done.stderr[-4000:]}"
    parsed: dict[str, Any] = json.loads(done.stdout)
    return parsed


@pytest.mark.parametrize("name", ["full_handshake", "resumed_0rtt", "resumed_1rtt"])
def test_each_figure_has_its_target_and_limits(report: dict[str, Any], name: str) -> None:
    m = report["measurements"][name]
    assert is_number(m["figure"]) and m["unit"] == "ms"
    assert is_number(m["target"]) and m["comparison"] == "<="
    assert isinstance(m["meets_target"], bool)
    assert set(m["limit"]) == {"tcp_tls13_full_p50", "tcp_tls13_resumed_p50", "udp_round_trip_p50"}
    assert all(is_number(limit["value"]) for limit in m["limit"].values())
    assert is_number(m["details"]["p99_ms"])


def test_every_stack_is_measured_or_skipped_with_a_reason(report: dict[str, Any]) -> None:
    stacks = report["stacks"]
    for name in ("hypermesh", "aioquic"):
        assert is_number(stacks[name]["full_handshake"]["p50_ms"]), name
        assert is_number(stacks[name]["resumed_0rtt"]["p50_ms"]), name
    assert stacks["aioquic"]["all_early_data_accepted"] is True
    for name in ("qh3", "aiopquic"):
        entry = stacks[name]
        assert "full_handshake" in entry or entry.get("skipped"), (name, entry)
    assert set(stacks["guarantees"]) == {"hypermesh", "aioquic", "qh3", "aiopquic"}
