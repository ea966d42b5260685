"""`nexus exec INSTANCE [-c CONTAINER] -- COMMAND [ARG...]`: run a command inside a container.

The command runs through the Instance's `exec` subresource: the API server relays it to the
agent of the Instance's node, which runs it in the container's namespaces with `runc exec`,
without input and without a terminal, and answers once it has ended with its exit code and
its output. nexus prints the output and exits with the command's code, after kubectl's
"command terminated with exit code N" line when it is not 0.

Interactive use (`-i`, `-t`, as `kubectl exec -it`) needs a bidirectional stream that the
API does not offer yet; those flags are refused with that explanation.
"""

from __future__ import annotations

import argparse
import math

from hypermesh.cli.nexus import errors
from hypermesh.cli.nexus.commands.logs import instance_name
from hypermesh.cli.nexus.session import Session

# How long a command may run when --timeout is not given (the server's default too).
DEFAULT_TIMEOUT = 60.0


def run(args: argparse.Namespace, session: Session) -> int:
    """Run the command; the exit code is the command's."""
    from hypermesh.client.kinds import INSTANCES

    if args.stdin or args.tty:
        raise errors.CliError(
            "interactive exec (-i/-t) is not supported yet: commands run without input or a "
            "terminal; drop -i and -t (nexus exec NAME -- COMMAND)"
        )
    command = list(args.exec_command or [])
    if not command:
        raise errors.UsageError("exec needs a command: nexus exec NAME -- COMMAND [ARG...]")
    timeout = args.timeout if args.timeout else DEFAULT_TIMEOUT
    # The answer comes only when the command has ended: wait for it that long, and a little.
    session.timeout = max(session.timeout, timeout + 15)
    name = instance_name(session, args.target)
    result = session.api.exec(
        INSTANCES,
        name,
        session.namespace,
        command,
        container=args.container,
        timeout_seconds=max(1, math.ceil(timeout)),
    )
    for data, stream in ((result.stdout, session.stdout), (result.stderr, session.stderr)):
        if not data:
            continue
        buffer = getattr(stream, "buffer", None)
        stream.flush()
        if buffer is not None:
            buffer.write(data)
            buffer.flush()
        else:
            stream.write(data.decode(errors="replace"))
            stream.flush()
    if result.timed_out:
        session.err(f"command timed out after {timeout:g}s and was killed")
    if result.exit_code != 0:
        session.err(f"command terminated with exit code {result.exit_code}")
    # Exit codes beyond a byte wrap in the shell; keep a failure a failure.
    return result.exit_code if 0 <= result.exit_code <= 255 else 1
