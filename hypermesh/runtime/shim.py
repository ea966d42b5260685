"""The shim every container runs under: a busybox `sh` that runs `runc run` in the foreground.

The agent must not be the parent of its containers (a restart of the agent would take them
along, or leave their exit codes with nobody), and runc's own `--detach` hands the exit status
to whoever reaps the init. So each container gets a tiny shell, started through a launcher
that exits at once (the shim is never the agent's child), which runs `runc run` and, when it
returns, writes the exit code, whether the init ever started, and the cgroup's OOM-kill and
memory-failure counters to the exit file, atomically. The agent reads that file whenever it
likes, across its own restarts. `ShimRecord` is what the agent keeps of each start.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

# The shim. Positional parameters: runtime, state root, bundle, id, stdout, stderr, exit file,
# runtime log, pid file, OOM-events file, memory failcnt file (the last two may be empty).
SCRIPT = r"""
rt=$1 root=$2 bundle=$3 id=$4 out=$5 err=$6 exitf=$7 log=$8 pidf=$9
shift 9
oomf=$1 failf=$2
{ echo -998 > /proc/self/oom_score_adj; } 2>/dev/null
"$rt" --root "$root" --log "$log" --log-format json run --keep --bundle "$bundle" \
    --pid-file "$pidf" "$id" </dev/null >>"$out" 2>>"$err"
code=$?
started=0
[ -s "$pidf" ] && started=1
oom=
fail=
if [ -n "$oomf" ] && [ -r "$oomf" ]; then
    while read -r key value; do [ "$key" = oom_kill ] && oom=$value; done < "$oomf"
fi
if [ -n "$failf" ] && [ -r "$failf" ]; then read -r fail < "$failf"; fi
printf 'code=%s\nstarted=%s\noom_kill=%s\nfailcnt=%s\nlog=%s\n' \
    "$code" "$started" "$oom" "$fail" "$log" > "$exitf.tmp" && mv -f "$exitf.tmp" "$exitf"
"""
# Starts the shim in the background and prints its pid; the launcher exits at once, so the
# shim is never a child of the agent. $0 is the file the shim's own errors go to.
LAUNCHER = '"$@" </dev/null >/dev/null 2>>"$0" & echo $!'



@dataclass(frozen=True)
class ShimRecord:
    """What run() remembers of a container, for delete() and for an agent that restarted."""

    bundle: str
    cgroups_path: str
    exit_file: str
    shim_pid: int

    @classmethod
    def load(cls, path: Path) -> ShimRecord | None:
        try:
            data = json.loads(path.read_bytes())
            return cls(
                str(data["bundle"]),
                str(data["cgroups_path"]),
                str(data["exit_file"]),
                int(data["shim_pid"]),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.__dict__))
        tmp.replace(path)



def shell() -> tuple[str, ...]:
    # A static busybox sh costs ~60 KiB of private memory per shim; dash is close behind.
    for candidate in (Path("/bin/busybox"), Path("/usr/bin/busybox")):
        if candidate.exists():
            return (str(candidate), "sh")
    return ("/bin/sh",)


