"""HyperMesh's resource kinds: typed models, the kind registry and schema validation.

Everything here is pure data and logic (no I/O beyond reading the packaged CRD files), so that
every layer above (API server, client, controllers, agents) can import it:
- `models` (and the per-kind modules) are the pydantic models of the hypermesh.io kinds;
- `registry` turns CustomResourceDefinitions into served `ResourceType`s and indexes them;
- `schema` validates, prunes and defaults objects against a type's structural schema.
"""

from hypermesh.resources.errors import CRDError
from hypermesh.resources.models import *  # noqa: F403
from hypermesh.resources.models import __all__ as _model_names
from hypermesh.resources.registry import (
    BUILTIN_DIR,
    CRD_DIR,
    PrinterColumn,
    Registry,
    ResourceType,
    builtin_types,
    load_crd_file,
    types_from_crd,
)
from hypermesh.resources.schema import (
    Cause,
    CompiledSchema,
    apply_defaults,
    compile_schema,
    prune,
    unknown_fields,
    validate,
)

__all__ = [
    "BUILTIN_DIR",
    "CRD_DIR",
    "CRDError",
    "Cause",
    "CompiledSchema",
    "PrinterColumn",
    "Registry",
    "ResourceType",
    "apply_defaults",
    "builtin_types",
    "compile_schema",
    "load_crd_file",
    "prune",
    "types_from_crd",
    "unknown_fields",
    "validate",
    *_model_names,
]
