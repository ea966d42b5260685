"""`nexus` argument parsing and dispatch: kubectl's command shapes, HyperMesh underneath.

This module is imported on every run, so it imports only argparse and the standard library;
each command's code lives in `commands/<name>.py` and is imported after parsing, when it is known
which one runs. Global flags are accepted before or after the command (`nexus -n x get wl` and
`nexus get wl -n x`), as with kubectl: every sub-parser repeats them with SUPPRESS defaults so a
flag given after the command never resets one given before it.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from hypermesh.cli.nexus import errors

PROG = "nexus"
CLIENT_VERSION = "v0.1.0"

# Command name -> module under hypermesh.cli.nexus.commands (which defines `run`).
COMMANDS: dict[str, str] = {
    "get": "get",
    "apply": "apply",
    "delete": "delete",
    "describe": "describe",
    "wait": "wait",
    "watch": "watch",
    "diff": "diff",
    "edit": "edit",
    "explain": "explain",
    "api-resources": "apiresources",
    "version": "version",
    "config": "config",
    "completion": "completion",
    "rollout": "rollout",
    "cordon": "drain",
    "uncordon": "drain",
    "drain": "drain",
    "logs": "logs",
    "exec": "exec",
    "image": "image",
    "auth": "auth",
    "cert": "cert",
    "gitops": "gitops",
}


def parse_duration(text: str) -> float:
    """`60s`, `2m`, `1h30m`, `500ms` or plain seconds, as seconds (argparse type)."""
    value = text.strip()
    try:
        return float(value)
    except ValueError:
        pass
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    total, number = 0.0, ""
    i = 0
    while i < len(value):
        ch = value[i]
        if ch.isdigit() or ch == ".":
            number += ch
            i += 1
            continue
        unit = "ms" if value.startswith("ms", i) else ch
        if unit not in units or not number:
            raise argparse.ArgumentTypeError(f"invalid duration {text!r}: use forms like 30s, 2m or 1h")
        total += float(number) * units[unit]
        number = ""
        i += len(unit)
    if number:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: a number needs a unit (s, m, h)")
    return total


def _bool_flag(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean {text!r}: use true or false")


def _global_flags(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    group = parser.add_argument_group("global options")
    group.add_argument("--kubeconfig", default=default(None), help="path to the kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
    group.add_argument("--context", default=default(None), help="the kubeconfig context to use")
    group.add_argument("-n", "--namespace", default=default(None), help="the namespace for this request")
    group.add_argument("--transport", choices=("auto", "h3", "tcp"), default=default("auto"), help="HTTP/3 first with TCP fallback (auto), or only one")
    group.add_argument("--request-timeout", type=parse_duration, default=default(30.0), metavar="DURATION", help="how long to wait for one server answer (e.g. 30s)")


def _output_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", help="json|yaml|wide|name|jsonpath=TEMPLATE|custom-columns=SPEC")
    parser.add_argument("--no-headers", action="store_true", help="omit the header line of tables")


def _file_flags(parser: argparse.ArgumentParser, *, required: bool) -> None:
    parser.add_argument("-f", "--filename", action="append", required=required, metavar="FILE", help="a manifest file, directory or - for stdin (repeatable)")
    parser.add_argument("-R", "--recursive", action="store_true", help="read directories given with -f recursively")


def build_parser() -> argparse.ArgumentParser:
    """The whole command line."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="nexus drives a HyperMesh cluster; commands and flags follow kubectl's.",
        epilog="Run 'nexus COMMAND --help' for a command's flags.",
    )
    _global_flags(parser, suppress=False)
    common = argparse.ArgumentParser(add_help=False)
    _global_flags(common, suppress=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, description=help_text, parents=[common])

    get = command("get", "Display one or many objects as a table or in a machine format.")
    get.add_argument("kind", metavar="KIND", help="kind, plural, short name (wl, svc, ns) or KIND/NAME")
    get.add_argument("names", metavar="NAME", nargs="*")
    _output_flags(get)
    get.add_argument("-l", "--selector", help="label selector, e.g. app=web,tier!=db")
    get.add_argument("--field-selector", help="field selector, e.g. metadata.name=web")
    get.add_argument("-A", "--all-namespaces", action="store_true", help="list across all namespaces")
    get.add_argument("-w", "--watch", action="store_true", help="after listing, print rows as they change")
    get.add_argument("--watch-only", action="store_true", help="print changes only, without listing first")
    get.add_argument("--show-labels", action="store_true", help="add a LABELS column")
    get.add_argument("--show-managed-fields", action="store_true", help="keep metadata.managedFields in json and yaml")
    get.add_argument("--ignore-not-found", action="store_true", help="no error when a named object does not exist")

    apply = command("apply", "Create or update objects from manifests with server-side apply.")
    _file_flags(apply, required=True)
    apply.add_argument("--dry-run", choices=("none", "server"), default="none", help="server: validate and show the result without saving")
    apply.add_argument("--force-conflicts", action="store_true", help="take ownership of fields other managers own")
    apply.add_argument("--field-manager", default="nexus", help="the field manager recorded for applied fields")
    apply.add_argument("--prune", action="store_true", help="delete objects matching -l that the manifests no longer contain")
    apply.add_argument("-l", "--selector", help="label selector choosing what --prune may delete")
    apply.add_argument("-o", "--output", help="print the applied objects (json|yaml|name)")
    apply.add_argument("--watch", action="store_true", help="after applying, re-apply on every change of the files until Ctrl-C (with --prune, no -l needed: what the watch applied and the files dropped is deleted)")

    delete = command("delete", "Delete objects by kind and name, by label, or from manifests.")
    delete.add_argument("kind", metavar="KIND", nargs="?")
    delete.add_argument("names", metavar="NAME", nargs="*")
    _file_flags(delete, required=False)
    delete.add_argument("-l", "--selector", help="delete every object matching this label selector")
    delete.add_argument("--all", action="store_true", help="delete every object of the kind in the namespace")
    delete.add_argument("--wait", type=_bool_flag, nargs="?", const=True, default=False, help="wait until the objects are gone")
    delete.add_argument("--grace-period", type=int, default=-1, metavar="SECONDS", help="seconds a running Instance gets to stop (default -1: its own terminationGracePeriodSeconds; 0 with --force: at once)")
    delete.add_argument("--force", action="store_true", help="with --grace-period=0: remove at once, without waiting for the node to stop the containers")
    delete.add_argument("--now", action="store_true", help="the same as --grace-period=1")
    delete.add_argument("--timeout", type=parse_duration, default=60.0, help="how long --wait waits (default 60s)")
    delete.add_argument("--cascade", choices=("background", "foreground", "orphan"), default="background", help="what happens to owned objects")
    delete.add_argument("--ignore-not-found", action="store_true", help="no error when an object does not exist")
    delete.add_argument("--dry-run", choices=("none", "server"), default="none")

    describe = command("describe", "Show an object in detail: spec, conditions, owners and events.")
    describe.add_argument("kind", metavar="KIND")
    describe.add_argument("names", metavar="NAME", nargs="*")
    describe.add_argument("-l", "--selector")

    wait = command("wait", "Wait until objects meet a condition, or are deleted.")
    wait.add_argument("kind", metavar="KIND")
    wait.add_argument("names", metavar="NAME", nargs="*")
    wait.add_argument("--for", dest="condition", required=True, metavar="CONDITION", help="condition=Ready[=true] | delete | jsonpath={.status.phase}=Running")
    wait.add_argument("--timeout", type=parse_duration, default=30.0, help="give up after this long (default 30s)")
    wait.add_argument("-l", "--selector")

    watch = command("watch", "Stream events for a kind: type, kind, name, resourceVersion and a summary.")
    watch.add_argument("kind", metavar="KIND")
    watch.add_argument("-l", "--selector")
    watch.add_argument("--field-selector")
    watch.add_argument("-A", "--all-namespaces", action="store_true")
    watch.add_argument("--resource-version", help="start after this resourceVersion instead of listing first")
    watch.add_argument("--timeout", type=parse_duration, default=None, help="stop after this long")

    diff = command("diff", "Show what applying the manifests would change, as a unified diff.")
    _file_flags(diff, required=True)
    diff.add_argument("--force-conflicts", action="store_true")

    edit = command("edit", "Edit a live object in $EDITOR; the change is refused if the object moved on meanwhile.")
    edit.add_argument("kind", metavar="KIND")
    edit.add_argument("name", metavar="NAME")

    explain = command("explain", "Describe a kind's fields from the server's OpenAPI schema.")
    explain.add_argument("target", metavar="KIND[.FIELD...]")
    explain.add_argument("--recursive", action="store_true", help="list nested fields too")

    resources = command("api-resources", "List the kinds the server serves.")
    resources.add_argument("--namespaced", type=_bool_flag, default=None)
    resources.add_argument("--api-group", default=None)
    resources.add_argument("-o", "--output", choices=("wide", "name"))
    resources.add_argument("--no-headers", action="store_true")

    version = command("version", "Print the client and server versions.")
    version.add_argument("--client", action="store_true", help="the client version only (no server needed)")
    version.add_argument("-o", "--output", choices=("json", "yaml"))

    config = command("config", "Read and change kubeconfig files.")
    config_sub = config.add_subparsers(dest="config_command", metavar="SUBCOMMAND", required=True)
    view = config_sub.add_parser("view", help="print the merged kubeconfig (secrets redacted)", parents=[common])
    view.add_argument("--raw", action="store_true", help="show certificate and key data")
    view.add_argument("--minify", action="store_true", help="only the current context")
    view.add_argument("-o", "--output", choices=("yaml", "json"), default="yaml")
    config_sub.add_parser("get-contexts", help="list contexts", parents=[common])
    config_sub.add_parser("current-context", help="print the current context", parents=[common])
    use = config_sub.add_parser("use-context", help="set the current context", parents=[common])
    use.add_argument("name", metavar="CONTEXT")

    rollout = command("rollout", "Manage the rollout of a Workload: status, history, undo, restart.")
    rollout_sub = rollout.add_subparsers(dest="rollout_command", metavar="SUBCOMMAND", required=True)
    rollout_status = rollout_sub.add_parser("status", help="wait until the rollout finishes, printing progress", parents=[common])
    rollout_status.add_argument("--timeout", type=parse_duration, default=0.0, help="give up after this long (default 0: wait for ever)")
    rollout_status.add_argument("-w", "--watch", type=_bool_flag, nargs="?", const=True, default=True, help="keep watching until done (--watch=false: print the status once)")
    rollout_history = rollout_sub.add_parser("history", help="list the remembered revisions", parents=[common])
    rollout_history.add_argument("--revision", type=int, default=0, help="show the template of this revision")
    rollout_undo = rollout_sub.add_parser("undo", help="roll back to the previous (or a given) revision", parents=[common])
    rollout_undo.add_argument("--to-revision", type=int, default=0, help="the revision to roll back to (default: the previous one)")
    rollout_sub.add_parser("restart", help="roll every Instance afresh with the same template", parents=[common])
    for rollout_parser in rollout_sub.choices.values():
        rollout_parser.add_argument("kind", metavar="KIND", help="workload (or KIND/NAME)")
        rollout_parser.add_argument("names", metavar="NAME", nargs="*")

    logs = command("logs", "Print the output of an Instance's container (stdout, then stderr).")
    logs.add_argument("target", metavar="INSTANCE", help="an Instance name, instance/NAME, or KIND/NAME of its owner (workload/web)")
    logs.add_argument("-c", "--container", help="the container (needed when the Instance has several)")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new output until the container ends")
    logs.add_argument("-p", "--previous", action="store_true", help="the output of the container's previous run")
    logs.add_argument("--tail", type=int, default=-1, metavar="N", help="only the last N lines (default -1: all)")
    logs.add_argument("--limit-bytes", type=int, default=None, metavar="N", help="stop after N bytes")

    exec_ = command("exec", "Run a command in an Instance's container: nexus exec [-it] NAME -- COMMAND [ARG...].")
    exec_.add_argument("target", metavar="INSTANCE", help="an Instance name, instance/NAME, or KIND/NAME of its owner")
    exec_.add_argument("exec_args", metavar="COMMAND", nargs="*", help="the command and its arguments (after --)")
    exec_.add_argument("-c", "--container", help="the container (needed when the Instance has several)")
    exec_.add_argument("-i", "--stdin", action="store_true", help="pass stdin to the command (an interactive session)")
    exec_.add_argument("-t", "--tty", action="store_true", help="with -i, run the command in a terminal (when stdin is one)")
    exec_.add_argument("--timeout", type=parse_duration, default=60.0, metavar="DURATION", help="without -i/-t: kill the command after this long (default 60s)")

    from hypermesh.cli.nexus.commands import drain

    drain.add_parsers(sub, common)
    from hypermesh.cli.nexus.commands import image

    image.add_parsers(sub, common)
    from hypermesh.cli.nexus.commands import auth

    auth.add_parsers(sub, common)
    from hypermesh.cli.nexus.commands import cert

    cert.add_parsers(sub, common)
    from hypermesh.cli.nexus.commands import gitops

    gitops.add_parsers(sub, common)
    completion = command("completion", "Print a shell completion script.")
    completion.add_argument("shell", choices=("bash", "zsh"))
    return parser


def run(args: argparse.Namespace) -> int:
    """Run the parsed command; errors become messages and exit codes."""
    from hypermesh.cli.nexus.session import Session

    session = Session(
        kubeconfig=args.kubeconfig,
        context=args.context,
        namespace=args.namespace,
        transport=args.transport,
        timeout=args.request_timeout,
    )
    module = importlib.import_module(f"hypermesh.cli.nexus.commands.{COMMANDS[args.command]}")
    runner: Callable[[argparse.Namespace, Session], int] = module.run
    try:
        return runner(args, session)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `nexus get ... | head` closed the pipe: not an error worth a message.
        return 0
    except Exception as exc:  # noqa: BLE001 - every failure becomes a message and a code
        text, code = errors.describe(exc)
        session.err(text)
        return code
    finally:
        try:
            session.close()
        except Exception:  # noqa: BLE001 - closing must not hide the command's outcome
            pass


def _parse(parser: argparse.ArgumentParser, words: list[str]) -> argparse.Namespace:
    """Parse the command line; for exec, everything after `--` is the command to run.

    argparse cannot tell exec's own flags from the command's once options and a variable
    number of positionals mix, so the command is cut off at `--` before parsing, as kubectl
    does.
    """
    if "--" in words and "exec" in words[: words.index("--")]:
        cut = words.index("--")
        args = parser.parse_args(words[:cut])
        if args.command == "exec":
            args.exec_command = [*args.exec_args, *words[cut + 1 :]]
            return args
    args = parser.parse_args(words)
    if args.command == "exec":
        args.exec_command = list(args.exec_args)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """The `nexus` entry point; returns the exit code."""
    parser = build_parser()
    words = list(argv) if argv is not None else sys.argv[1:]
    try:
        args = _parse(parser, words)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else errors.USAGE
    if not args.command:
        parser.print_help()
        return errors.USAGE
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
