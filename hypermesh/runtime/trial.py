"""Does an OCI runtime work here? A throwaway container with HyperMesh's full config says.

crun is preferred when it is installed, but on hosts with hybrid cgroups it fails to create
containers (MACHINE.md), and nothing short of running one tells. `run_trial` runs
`/bin/busybox true` in a bundle made exactly as the agent makes them (cgroup path under
`/hypermesh`, the default hardening) and reports what went wrong, so the agent can fall back
to runc and say why.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from hypermesh.runtime import oci
from hypermesh.runtime.cgroups import CgroupLayout


@dataclass(frozen=True)
class _TrialImage:
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    working_dir: str = "/"
    user: str = ""


def run_trial(binary: Path, state_dir: Path, cgroups: CgroupLayout) -> str | None:
    """Runs /bin/true in a throwaway container with a full HyperMesh config; None if it worked,
    else what went wrong (crun fails here on hybrid cgroups, see docs/MACHINE.md)."""
    busybox = Path("/bin/busybox")
    if not busybox.exists():
        return "no /bin/busybox to build a trial container from"
    container_id = f"hm-trial-{os.getpid()}"
    trial = state_dir / container_id
    root = trial / "state"
    cgroups_path = f"/hypermesh/{container_id}"
    try:
        shutil.rmtree(trial, ignore_errors=True)
        (trial / "rootfs" / "bin").mkdir(parents=True)
        shutil.copy2(busybox, trial / "rootfs" / "bin" / "busybox")
        spec = oci.runtime_spec(
            container={"name": "trial", "image": "trial", "command": ["/bin/busybox", "true"]},
            image=_TrialImage(),
            rootfs=trial / "rootfs",
            hostname="trial",
            cgroups_path=cgroups_path,
            netns=None,
        )
        (trial / "config.json").write_text(json.dumps(spec))
        result = subprocess.run(
            [str(binary), "--root", str(root), "run", "--bundle", str(trial), container_id],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            return (result.stderr.strip().splitlines() or [f"exit code {result.returncode}"])[-1]
        return None
    except (OSError, subprocess.SubprocessError) as exc:
        return str(exc)
    finally:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(
                [str(binary), "--root", str(root), "delete", "--force", container_id],
                capture_output=True, timeout=30, check=False,
            )  # fmt: skip
        cgroups.remove(cgroups_path)
        shutil.rmtree(trial, ignore_errors=True)
