"""`nexus completion bash|zsh`: static completion scripts for commands, flags and kinds.

The scripts never run nexus while completing (a network round trip per Tab would be slow and
surprising); kinds come from the discovery cache nexus already keeps on disk, read with a tiny
inline parser, plus the built-in short names when no cache exists yet.
"""

from __future__ import annotations

import argparse

from hypermesh.cli.nexus.dispatch import COMMANDS
from hypermesh.cli.nexus.session import Session

FLAGS = (
    "--kubeconfig --context --namespace -n --transport --request-timeout --output -o --selector -l "
    "--field-selector --all-namespaces -A --watch -w --show-labels --no-headers --filename -f --recursive -R "
    "--dry-run --force-conflicts --prune --wait --cascade --for --timeout --client --help"
)
KINDS = "workloads wl instances inst services svc nodes no certificates cert namespaces ns events secrets leases endpoints"
KINDS_COMMANDS = "get describe delete wait watch explain edit"

# Prints the plural and short names found in cached discovery documents, one per line.
CACHE_KINDS = (
    'd="${HYPERMESH_HOME:-$HOME/.hypermesh}/cache"; '
    '[ -d "$d" ] && grep -rhoE \'"(name|plural|shortNames)": *(\\["[^]]*\\]|"[a-z0-9.-]+")\' "$d" 2>/dev/null '
    "| grep -oE '\"[a-z0-9.-]+\"' | tr -d '\"' | grep -vE '^(name|plural|shortNames)$' | sort -u"
)

BASH = """# nexus bash completion: source <(nexus completion bash)
_nexus_kinds() {{
    {{ {cache_kinds}; echo {kinds}; }} 2>/dev/null | tr ' ' '\\n' | sort -u
}}
_nexus() {{
    local cur prev cmd
    cur="${{COMP_WORDS[COMP_CWORD]}}"
    prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    cmd="${{COMP_WORDS[1]}}"
    if [[ "$cur" == -* ]]; then
        COMPREPLY=( $(compgen -W "{flags}" -- "$cur") )
        return
    fi
    case "$prev" in
        -f|--filename|--kubeconfig) COMPREPLY=( $(compgen -f -- "$cur") ); return ;;
        -o|--output) COMPREPLY=( $(compgen -W "json yaml wide name jsonpath= custom-columns=" -- "$cur") ); return ;;
        --transport) COMPREPLY=( $(compgen -W "auto h3 tcp" -- "$cur") ); return ;;
        --cascade) COMPREPLY=( $(compgen -W "background foreground orphan" -- "$cur") ); return ;;
    esac
    if [[ $COMP_CWORD -eq 1 ]]; then
        COMPREPLY=( $(compgen -W "{commands}" -- "$cur") )
        return
    fi
    case "$cmd" in
        {kinds_case}) [[ $COMP_CWORD -eq 2 ]] && COMPREPLY=( $(compgen -W "$(_nexus_kinds)" -- "$cur") ) ;;
        config) COMPREPLY=( $(compgen -W "view get-contexts current-context use-context" -- "$cur") ) ;;
        completion) COMPREPLY=( $(compgen -W "bash zsh" -- "$cur") ) ;;
    esac
}}
complete -o default -F _nexus nexus
"""

ZSH = """#compdef nexus
# nexus zsh completion: source <(nexus completion zsh)
_nexus_kinds() {{
    {{ {cache_kinds}; echo {kinds}; }} 2>/dev/null | tr ' ' '\\n' | sort -u
}}
_nexus() {{
    local -a commands flags
    commands=({commands})
    flags=({flags})
    if [[ "$words[CURRENT]" == -* ]]; then
        compadd -- $flags
    elif (( CURRENT == 2 )); then
        compadd -- $commands
    else
        case "$words[2]" in
            {kinds_case}) (( CURRENT == 3 )) && compadd -- ${{(f)"$(_nexus_kinds)"}} ;;
            config) compadd -- view get-contexts current-context use-context ;;
            completion) compadd -- bash zsh ;;
            *) _files ;;
        esac
    fi
}}
compdef _nexus nexus
"""


def script(shell: str) -> str:
    """The completion script for `shell` (bash or zsh)."""
    template = BASH if shell == "bash" else ZSH
    return template.format(
        commands=" ".join(COMMANDS), flags=FLAGS, kinds=KINDS, kinds_case="|".join(KINDS_COMMANDS.split()), cache_kinds=CACHE_KINDS
    )


def run(args: argparse.Namespace, session: Session) -> int:
    """Print the script."""
    session.out(script(args.shell))
    return 0
