"""The API benchmark still runs end to end and reports every figure beside a target and a limit.

Benchmarks never run as tests (their figures depend on how busy the machine is), but a benchmark
that silently broke is only discovered on the day someone needs its numbers. This runs
`bench/api_bench.py --quick` against a real server and checks the shape of its report, never
the figures themselves.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"
EXPECTED = {"create_rate", "create_p99", "get_rate", "list", "watch_fanout", "memory"}

pytestmark = pytest.mark.e2e


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(BENCH_DIR / "api_bench.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, f"api_bench --quick failed:\n{done.stderr[-4000:]}"
    parsed: dict[str, Any] = json.loads(done.stdout)
    return parsed


def test_report_names_the_machine_and_when(report: dict[str, Any]) -> None:
    assert report["benchmark"] == "api"
    assert report["quick"] is True
    assert is_number(report["machine"]["cores"])
    assert report["started"] <= report["finished"]


def test_every_measurement_has_figure_target_and_limit(report: dict[str, Any]) -> None:
    measurements = report["measurements"]
    assert set(measurements) == EXPECTED
    for name, m in measurements.items():
        assert is_number(m["figure"]), (name, m)
        assert isinstance(m["unit"], str) and m["unit"], name
        assert is_number(m["target"]), name
        assert m["comparison"] in ("<=", ">="), name
        assert isinstance(m["meets_target"], bool), name
        assert m["limit"], f"{name} has no limit measured beside it"
        for limit_name, limit in m["limit"].items():
            assert is_number(limit["value"]), (name, limit_name, limit)
            assert limit["unit"] and limit["what"], (name, limit_name)


def test_load_figures_carry_server_cpu(report: dict[str, Any]) -> None:
    for name in ("create_rate", "get_rate"):
        details = report["measurements"][name]["details"]
        assert details["requests"] > 0
        assert details["errors"] == {}
        assert is_number(details["server_cpu_ms_per_request"])
        assert is_number(details["server_requests_per_core_second"])


def test_memory_states_and_extrapolation_are_reported(report: dict[str, Any]) -> None:
    details = report["measurements"]["memory"]["details"]
    assert set(details["states"]) == {
        "idle",
        "after_paginated_list",
        "with_informer_watch",
        "with_replaying_watch",
        "after_watches_closed",
    }
    # The quick run creates far fewer than 100,000 Instances, so it must say it extrapolated.
    assert details["extrapolated"] is True
    assert details["extrapolation"]
    assert (
        details["states"]["with_replaying_watch"]["events_replayed"] == details["objects_created"]
    )


def test_run_all_turns_the_report_into_table_rows(report: dict[str, Any]) -> None:
    sys.path.insert(0, str(BENCH_DIR))
    try:
        import run_all
    finally:
        sys.path.remove(str(BENCH_DIR))
    table = run_all.markdown({"api_bench": {"ok": True, "result": report}})
    rows = [line for line in table.splitlines() if line.startswith("| api_bench |")]
    assert {row.split(" | ")[1] for row in rows} == EXPECTED
