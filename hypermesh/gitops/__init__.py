"""GitOps: keep a cluster in step with a git repository (or a folder).

The GitSync controller (`controllers/gitsync.py`) is a thin reconcile over these pieces, each
usable and testable alone:

- `git`: the `git` command line, one shallow cache repository per GitSync, files read straight
  from a commit's tree; `credentials`: a Secret's https token or ssh key handed to one git
  process without ever reaching a URL, an argument or a log; `source`: a GitSync's url, ref
  and path (or a plain local folder) turned into a `Snapshot` (revision and files);
- `manifests`: the files parsed into objects that remember their file and line, so every error
  reads `file:line: field: problem`;
- `kinds`: apiVersion/kind -> the served Resource (async discovery);
- `sync`: one sync — validate everything (server-side dry run) before applying anything, CRDs
  and Namespaces first, then waves gated on health, then pruning of what left the source;
  `diff` finds drift by comparing the dry run with the live object; `health` is kstatus's
  notion of "ready" for the kinds HyperMesh serves; `inventory` is what a sync records
  (ownership labels, the inventory with digests, changes, per-object errors).

Layering: this package uses `hypermesh.client`, `hypermesh.operator` and nothing of `api` or
`store`; the server is reached only through the API, like every other controller.
"""

from __future__ import annotations
