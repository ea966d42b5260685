"""How fast `nexus` feels: start-up, and `get` of 1,000 objects, beside kubectl and bare Python.

Targets from the nexus issue: `nexus version` starts in under 0.2 s and `nexus get` of 1,000
objects prints in under 0.5 s. Both are wall-clock times of whole processes (what a person
waits for), medians of several runs, measured against a real server over mutual TLS. The
limits in the same run: a bare `python -c pass` start, and the real kubectl doing the same get.

Prints one JSON document; `--quick` uses 100 objects and 3 runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import HypermeshServer, code_version, limit, machine_info, measurement, now_iso  # noqa: E402

BIN = Path(sys.executable).parent
NEXUS = str(BIN / "nexus")
KUBECTL = str(BIN / "kubectl")


def _timed(cmd: list[str], env: dict[str, str], runs: int) -> tuple[float, str]:
    """Median wall time of `cmd` over `runs` runs (after one warm-up), and its last output."""
    out = ""
    times = []
    for attempt in range(runs + 1):
        start = time.perf_counter()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, check=True)
        if attempt:
            times.append(time.perf_counter() - start)
        out = done.stdout
    return statistics.median(times), out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 objects, 3 runs")
    args = parser.parse_args()
    objects, runs = (100, 3) if args.quick else (1000, 7)
    home = tempfile.mkdtemp(prefix="hypermesh-nexus-bench-")
    env = {**os.environ, "HYPERMESH_HOME": home, "NO_COLOR": "1"}
    report: dict[str, object] = {"benchmark": "nexus", "started": now_iso(), "machine": machine_info(), "code": code_version(), "objects": objects}
    with HypermeshServer(label="nexus") as server:
        kubeconfig = str(server.data_dir / "admin.kubeconfig")
        conn = server.connect()
        conn.request("POST", "/api/v1/namespaces", json.dumps({"metadata": {"name": "bench"}}).encode())
        base = "/apis/hypermesh.io/v1/namespaces/bench/workloads"
        for i in range(objects):
            body = {"apiVersion": "hypermesh.io/v1", "kind": "Workload", "metadata": {"name": f"w{i:04d}", "labels": {"app": "bench"}},
                    "spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "c", "image": "busybox"}]}}}}
            conn.request("POST", base, json.dumps(body).encode())
        python_start, _ = _timed([sys.executable, "-c", "pass"], env, runs)
        version, _ = _timed([NEXUS, "version", "--client"], env, runs)
        gets = {}
        for transport in ("tcp", "h3"):
            seconds, out = _timed([NEXUS, "--kubeconfig", kubeconfig, "--transport", transport, "get", "wl", "-n", "bench"], env, runs)
            assert len(out.splitlines()) == objects + 1, f"expected {objects} rows"
            gets[transport] = seconds
        kubectl, _ = _timed([KUBECTL, "--kubeconfig", kubeconfig, "--cache-dir", f"{home}/kcache", "get", "wl", "-n", "bench"], env, runs)
        conn.close()
    startup_limits = {"python_start": limit(round(python_start, 3), "s", "python -c pass, same machine")}
    get_limits = {
        "python_start": limit(round(python_start, 3), "s", "python -c pass, same machine"),
        "kubectl_get": limit(round(kubectl, 3), "s", f"kubectl get of the same {objects} objects"),
    }
    report["measurements"] = {
        "version_startup": measurement(what="nexus version --client, whole process", figure=round(version, 3), unit="s", target=0.2, comparison="<=", limits=startup_limits),
        "get_tcp": measurement(what=f"nexus get of {objects} Workloads over HTTPS/TCP", figure=round(gets["tcp"], 3), unit="s", target=0.5, comparison="<=", limits=get_limits),
        "get_h3": measurement(what=f"nexus get of {objects} Workloads over HTTP/3", figure=round(gets["h3"], 3), unit="s", target=0.5, comparison="<=", limits=get_limits),
    }
    report["finished"] = now_iso()
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
