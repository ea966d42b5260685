"""The API client every HyperMesh process outside the server uses (as client-go is for Kubernetes).

Layers, each usable alone:

- `config`: find and read kubeconfig files (`load_config` -> `ClusterConfig`);
- `http`: `Client`, synchronous HTTP to the API server over HTTP/3 or HTTPS on TCP, with
  `ApiError` for error `Status` answers and `ClientError` for no answer at all;
- `resources`: `Discovery` of served kinds and `Resource`, which turns a kind into URL paths;
- `api`: `Api`, the Kubernetes verbs (get, list, create, apply, patch, delete, watch);
- `remotecommand` and `websocket`: interactive exec's wire format and WebSocket connections
  (imported only by what opens a session).

Importing this package is cheap on purpose (the CLI starts on every keystroke of a shell
loop): aioquic, PyYAML and the TLS stack are imported only when a command first needs them.
"""

from hypermesh.client.api import Api
from hypermesh.client.config import (
    ClusterConfig,
    ConfigError,
    kubeconfig_paths,
    load_config,
    read_kubeconfig,
    use_context,
)
from hypermesh.client.errors import ApiError, ClientError
from hypermesh.client.http import Client, EventStream, Response
from hypermesh.client.resources import Discovery, Resource, UnknownResource

__all__ = [
    "Api",
    "ApiError",
    "Client",
    "ClientError",
    "ClusterConfig",
    "ConfigError",
    "Discovery",
    "EventStream",
    "Resource",
    "Response",
    "UnknownResource",
    "kubeconfig_paths",
    "load_config",
    "read_kubeconfig",
    "use_context",
]
