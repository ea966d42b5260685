"""What the client needs from a transport, and the pieces both transports share.

`Client` speaks HTTP semantics (methods, paths, status codes, `Status` errors); a transport
only moves bytes: one request and its whole response, or one request whose response body is
read as it arrives (watches). Keeping the contract this small is what lets the client pick
HTTP/3 or TCP per server at run time, and lets each transport import its heavy library
(aioquic for HTTP/3) only when it is chosen.

Both TLS stacks load client certificates from files only, while a kubeconfig usually embeds
them. `private_pem_files` bridges that as safely as files allow: a fresh 0700 directory of
0600 files that exists only while the TLS library reads them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from hypermesh.client.config import ClusterConfig

# Request headers as the client builds them: lower-case names, str values.
Headers = list[tuple[str, str]]


@dataclass(frozen=True)
class Endpoint:
    """Where the server is: parsed once from the kubeconfig's server URL."""

    url: str
    host: str
    port: int
    prefix: str
    server_name: str

    @classmethod
    def from_config(cls, config: ClusterConfig) -> Endpoint:
        parts = urlsplit(config.server)
        host = parts.hostname or ""
        return cls(
            url=config.server,
            host=host,
            port=parts.port or 443,
            prefix=parts.path.rstrip("/"),
            server_name=config.tls_server_name or host,
        )


class StreamHandle(Protocol):
    """A response whose headers have arrived and whose body is read as it comes."""

    status: int
    headers: dict[str, str]

    def chunks(self) -> Iterator[bytes]:
        """Body chunks as they arrive, until the server ends the response."""
        ...

    def read(self) -> bytes:
        """The whole remaining body (for error responses)."""
        ...

    def close(self) -> None:
        """Abandon the response; the server sees the client go away."""
        ...


class Transport(Protocol):
    """Moves one HTTP exchange over some connection; raises ClientError when it cannot."""

    name: str

    def request(
        self, method: str, target: str, headers: Headers, body: bytes | None
    ) -> tuple[int, dict[str, str], bytes]:
        """Send a request and return `(status, headers, body)` once the body is complete."""
        ...

    def open_stream(self, method: str, target: str, headers: Headers) -> StreamHandle:
        """Send a request and return once the response headers have arrived."""
        ...

    def close(self) -> None:
        """Close every connection (idempotent)."""
        ...


@dataclass(frozen=True)
class PemFiles:
    """Paths of the PEM files a TLS library should load (None where there is nothing)."""

    ca: Path | None
    cert: Path | None
    key: Path | None


@contextlib.contextmanager
def private_pem_files(config: ClusterConfig) -> Iterator[PemFiles]:
    """The config's CA, certificate and key as 0600 files in a private directory, briefly."""
    import shutil
    import tempfile

    directory = Path(tempfile.mkdtemp(prefix="hypermesh-tls-"))  # mode 0700 by contract
    try:

        def put(name: str, data: bytes | None) -> Path | None:
            if not data:
                return None
            path = directory / name
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            return path

        yield PemFiles(
            ca=put("ca.pem", config.ca_pem),
            cert=put("cert.pem", config.cert_pem),
            key=put("key.pem", config.key_pem),
        )
    finally:
        shutil.rmtree(directory, ignore_errors=True)
