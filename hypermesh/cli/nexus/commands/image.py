"""`nexus image import|build|ls|rm`: the node agents' image stores, through the API server.

(Placeholder: the commands are being written.)
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hypermesh.cli.nexus.session import Session


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    sub.add_parser("image", help="Manage the images on the nodes (not available yet).", parents=[common])


def run(args: argparse.Namespace, session: Session) -> int:
    session.err("error: nexus image is not available yet")
    return 1
