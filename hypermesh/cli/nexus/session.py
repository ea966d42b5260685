"""One command's connection to a cluster, built only when the command first needs it.

The global flags (`--kubeconfig`, `--context`, `-n`, `--transport`, `--request-timeout`) are
turned into a client lazily: `nexus version --client`, `completion` and `--help` never touch
the kubeconfig, and never import the client's TLS and QUIC machinery. Commands receive a
`Session` and ask it for the `api`, the `discovery` or the effective namespace.
"""

from __future__ import annotations

import os
import sys
from functools import cached_property
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from hypermesh.client import Api, Client, ClusterConfig, Discovery, Resource


class Session:
    """Global options plus the lazily created config, client, discovery and API wrapper."""

    def __init__(
        self,
        *,
        kubeconfig: str | None = None,
        context: str | None = None,
        namespace: str | None = None,
        transport: str = "auto",
        timeout: float = 30.0,
        stdout: TextIO | None = None,
        stderr: TextIO | None = None,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.context = context
        self.namespace_flag = namespace
        self.transport = transport
        self.timeout = timeout
        self.stdout = stdout if stdout is not None else sys.stdout
        self.stderr = stderr if stderr is not None else sys.stderr
        self._client: Client | None = None

    # -- output ----------------------------------------------------------------------------

    @property
    def color(self) -> bool:
        """Colour only on a terminal, and never when NO_COLOR is set."""
        isatty = getattr(self.stdout, "isatty", None)
        return bool(isatty and isatty()) and not os.environ.get("NO_COLOR")

    def out(self, text: str) -> None:
        """Write to stdout and flush, so streamed rows show up at once."""
        self.stdout.write(text)
        self.stdout.flush()

    def err(self, text: str) -> None:
        """Write a line to stderr."""
        self.stderr.write(text if text.endswith("\n") else text + "\n")
        self.stderr.flush()

    # -- the cluster -----------------------------------------------------------------------

    @cached_property
    def config(self) -> ClusterConfig:
        """The kubeconfig context in use (raises ConfigError with what to fix)."""
        from hypermesh.client import load_config

        return load_config(self.kubeconfig, context=self.context)

    @property
    def client(self) -> Client:
        """The HTTP client, connected on first use."""
        if self._client is None:
            from hypermesh.client import Client

            self._client = Client(self.config, transport=self.transport, timeout=self.timeout)  # type: ignore[arg-type]
        return self._client

    @cached_property
    def discovery(self) -> Discovery:
        """Which kinds the server serves (cached on disk between commands)."""
        from hypermesh.client import Discovery

        return Discovery(self.client)

    @cached_property
    def api(self) -> Api:
        """Typed verbs over the client."""
        from hypermesh.client import Api

        return Api(self.client, self.discovery)

    @property
    def namespace(self) -> str:
        """`-n`, else the context's namespace, else `default`."""
        if self.namespace_flag:
            return self.namespace_flag
        return self.config.namespace or "default"

    def resolve(self, name: str) -> Resource:
        """A kind, plural, singular or short name as a Resource (raises UnknownResource)."""
        return self.discovery.resolve(name)

    def namespace_for(self, resource: Resource, obj: dict[str, Any] | None = None) -> str | None:
        """The namespace a request about `obj` goes to: None for cluster-scoped kinds."""
        if not resource.namespaced:
            return None
        if obj is not None:
            given = (obj.get("metadata") or {}).get("namespace")
            if given:
                if self.namespace_flag and given != self.namespace_flag:
                    from hypermesh.cli.nexus.errors import CliError

                    raise CliError(
                        f"the namespace from the provided object \"{given}\" does not match the namespace "
                        f"\"{self.namespace_flag}\". You must pass '--namespace={given}' to perform this operation."
                    )
                return str(given)
        return self.namespace

    def close(self) -> None:
        """Close the connection if one was opened."""
        if self._client is not None:
            self._client.close()
            self._client = None
