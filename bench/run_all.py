"""Run every benchmark in bench/ and print one combined JSON report and a Markdown table.

Each benchmark is a script that prints one JSON object; this runner starts each in its own
process (one after the other: on two cores, benchmarks running together would measure each
other), collects the objects under the script's name, and adds the machine and timestamps.

The Markdown table has one row per figure that has a target. `api_bench.py` reports every
figure in the same shape (`figure`, `unit`, `target`, `comparison`, `limit`); for the older
flat reports (`store_bench.py`, `transport_bench.py`) a figure is paired with its target by
name: `range_target_ms` goes with `range_ms`, `target_capacity_per_core_rps` with
`server_capacity_per_core_rps`, and `limit_*` keys are shown as the limits beside them.

    .venv/bin/python bench/run_all.py [--quick] [--only api_bench,store_bench]
        [--json | --markdown] [--save]

By default the JSON comes first, then the Markdown table. `--save` also writes both to
bench/results/run_all.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402

RESULTS_DIR = _common.BENCH_DIR / "results"


def discover() -> list[Path]:
    """Every benchmark script: bench/*.py except private modules and this runner."""
    return sorted(
        path
        for path in _common.BENCH_DIR.glob("*.py")
        if not path.name.startswith("_") and path.name != Path(__file__).name
    )


def supports_quick(script: Path) -> bool:
    """Whether the script has a --quick option (older benchmarks size themselves)."""
    result = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=60
    )
    return "--quick" in result.stdout


def run_one(script: Path, *, quick: bool, timeout: float) -> dict[str, Any]:
    """Run one benchmark script; its JSON report, or why there is none."""
    command = [sys.executable, str(script)]
    if quick and supports_quick(script):
        command.append("--quick")
    began = time.monotonic()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout} s", "command": command}
    entry: dict[str, Any] = {
        "ok": done.returncode == 0,
        "returncode": done.returncode,
        "seconds": round(time.monotonic() - began, 1),
        "command": command,
    }
    try:
        entry["result"] = json.loads(done.stdout)
    except json.JSONDecodeError:
        entry["ok"] = False
        entry["error"] = "the script did not print one JSON object"
        entry["stdout_tail"] = done.stdout[-2000:]
    if done.returncode != 0:
        entry["stderr_tail"] = done.stderr[-4000:]
    return entry


# The Markdown table


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _tokens(key: str) -> set[str]:
    return set(key.lower().split("_")) - {"target", "limit"}


def rows_from_measurements(bench: str, measurements: dict[str, Any]) -> list[list[str]]:
    """Rows from the uniform shape: figure, unit, target, comparison, meets_target, limit."""
    rows = []
    for name, m in measurements.items():
        limits = "; ".join(
            f"{key} {limit['value']} {limit['unit']}" for key, limit in m.get("limit", {}).items()
        )
        rows.append(
            [
                bench,
                name,
                f"{m['figure']} {m['unit']}",
                f"{m['comparison']} {m['target']}",
                "yes" if m["meets_target"] else "**no**",
                limits,
            ]
        )
    return rows


def rows_from_flat(bench: str, report: dict[str, Any], path: str = "") -> list[list[str]]:
    """Rows from a flat report: each `*target*` number paired with the closest-named figure."""
    rows = []
    limits = "; ".join(
        f"{key} {value}"
        for key, value in report.items()
        if key.startswith("limit_") and _number(value)
    )
    for key, value in report.items():
        if isinstance(value, dict):
            rows += rows_from_flat(bench, value, f"{path}{key}.")
            continue
        if "target" not in key or not _number(value):
            continue
        candidates = [
            k
            for k, v in report.items()
            if _number(v) and "target" not in k and not k.startswith("limit_")
        ]
        if not candidates:
            continue
        figure_key = max(candidates, key=lambda k: len(_tokens(k) & _tokens(key)))
        # Times and sizes are ceilings, rates are floors.
        lower_is_better = key.endswith(("_ms", "_s", "_mib", "_bytes")) and not key.endswith(
            "per_s"
        )
        figure = report[figure_key]
        meets = figure <= value if lower_is_better else figure >= value
        rows.append(
            [
                bench,
                f"{path}{figure_key}",
                str(figure),
                f"{'<=' if lower_is_better else '>='} {value}",
                "yes" if meets else "**no**",
                limits,
            ]
        )
    return rows


def markdown(benches: dict[str, Any]) -> str:
    """One table of every figure with a target, across all benchmarks."""
    lines = [
        "| bench | measurement | figure | target | met | limits measured in the same run |",
        "|---|---|---|---|---|---|",
    ]
    for bench, entry in benches.items():
        result = entry.get("result")
        if not isinstance(result, dict):
            lines.append(f"| {bench} | (failed: {entry.get('error', 'see JSON')}) | | | | |")
            continue
        measurements = result.get("measurements")
        if isinstance(measurements, dict) and all(
            isinstance(m, dict) and "figure" in m for m in measurements.values()
        ):
            rows = rows_from_measurements(bench, measurements)
        else:
            rows = rows_from_flat(bench, result)
        lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    """Run the benchmarks and print (and optionally save) the combined report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="pass --quick where supported")
    parser.add_argument("--only", help="comma-separated script names (with or without .py)")
    shown = parser.add_mutually_exclusive_group()
    shown.add_argument("--json", action="store_true", help="print only the JSON")
    shown.add_argument("--markdown", action="store_true", help="print only the Markdown table")
    parser.add_argument("--save", action="store_true", help="also write bench/results/run_all.*")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per benchmark")
    args = parser.parse_args()

    scripts = discover()
    if args.only:
        wanted = {name.strip().removesuffix(".py") for name in args.only.split(",")}
        unknown = wanted - {script.stem for script in scripts}
        if unknown:
            parser.error(f"--only: no benchmark {sorted(unknown)} in {_common.BENCH_DIR}")
        scripts = [script for script in scripts if script.stem in wanted]

    report: dict[str, Any] = {
        "started": _common.now_iso(),
        "machine": _common.machine_info(),
        "quick": args.quick,
        "benches": {},
    }
    for script in scripts:
        print(f"running {script.name} ...", file=sys.stderr, flush=True)
        report["benches"][script.stem] = run_one(script, quick=args.quick, timeout=args.timeout)
    report["finished"] = _common.now_iso()
    report["ok"] = all(entry["ok"] for entry in report["benches"].values())

    text = json.dumps(report, indent=2)
    table = markdown(report["benches"])
    if args.save:
        RESULTS_DIR.mkdir(exist_ok=True)
        (RESULTS_DIR / "run_all.json").write_text(text + "\n")
        (RESULTS_DIR / "run_all.md").write_text(table)
    if not args.markdown:
        print(text)
    if not args.json:
        if not args.markdown:
            print()
        print(table, end="")
    sys.exit(0 if report["ok"] else 1)


if __name__ == "__main__":
    main()
