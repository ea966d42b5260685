"""`python -m hypermesh.cli.nexus`: the same as the `nexus` console script."""

from __future__ import annotations

import sys

from hypermesh.cli.nexus.dispatch import main

sys.exit(main())
