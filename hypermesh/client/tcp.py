"""HTTPS over TCP with the standard library: the transport that always works.

`http.client` plus an `ssl` context is all a command-line client needs and starts in a few
milliseconds (httpx would cost more to import than most commands take to run). One keep-alive
connection carries every ordinary request; each stream (a watch) gets a connection of its own,
because a watch holds its connection for minutes while the caller goes on making requests.

The `ssl` context is built once: the CA comes straight from memory, the client certificate and
key through `private_pem_files` (ssl can load a key only from a file), deleted at once.
"""

from __future__ import annotations

import http.client
import socket
import ssl
from collections.abc import Iterator

from hypermesh.client.config import ClusterConfig
from hypermesh.client.errors import ClientError
from hypermesh.client.transports import Endpoint, Headers, private_pem_files

# Read size for streamed bodies: one event line is usually far smaller.
_CHUNK = 64 * 1024
# Errors that mean a kept-alive connection was closed by the server while idle; the request
# never reached it, so sending it again on a fresh connection is safe.
_STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)


def build_ssl_context(config: ClusterConfig) -> ssl.SSLContext:
    """A TLS client context trusting the config's CA and presenting its client certificate."""
    if config.ca_pem:
        try:
            context = ssl.create_default_context(cadata=config.ca_pem.decode("ascii"))
        except (ssl.SSLError, ValueError) as exc:
            raise ClientError(
                f"the certificate authority in {config.source} cannot be loaded ({exc}); "
                "re-copy certificate-authority-data from the server's admin.kubeconfig"
            ) from None
    else:
        context = ssl.create_default_context()
    if config.cert_pem and config.key_pem:
        with private_pem_files(config) as files:
            try:
                context.load_cert_chain(str(files.cert), str(files.key))
            except ssl.SSLError as exc:
                raise ClientError(
                    f'the client certificate or key of user "{config.user}" in {config.source} '
                    f"cannot be loaded ({exc.reason or exc}); do they belong together?"
                ) from None
    context.set_alpn_protocols(["http/1.1"])
    return context


class _Connection(http.client.HTTPSConnection):
    """An HTTPS connection that may verify a server name other than the host it dials."""

    def __init__(self, endpoint: Endpoint, context: ssl.SSLContext, timeout: float) -> None:
        super().__init__(endpoint.host, endpoint.port, timeout=timeout, context=context)
        self._server_name = endpoint.server_name
        self._ssl_context = context

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)
        # Keepalive probes notice a server that vanished under a quiet watch.
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self.sock = self._ssl_context.wrap_socket(self.sock, server_hostname=self._server_name)


class _TcpStream:
    """A streamed response on its own connection."""

    def __init__(
        self, transport: TcpTransport, conn: _Connection, response: http.client.HTTPResponse
    ) -> None:
        self._transport = transport
        self._conn = conn
        self._response = response
        self.status = response.status
        self.headers = _headers(response)

    def chunks(self) -> Iterator[bytes]:
        try:
            while True:
                chunk = self._response.read1(_CHUNK)
                if not chunk:
                    return
                yield chunk
        except (OSError, http.client.HTTPException) as exc:
            if self._conn.sock is None:
                return  # closed by us
            raise self._transport.translate(exc) from None
        finally:
            self.close()

    def read(self) -> bytes:
        try:
            return self._response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise self._transport.translate(exc) from None
        finally:
            self.close()

    def close(self) -> None:
        self._conn.close()


class TcpTransport:
    """HTTP/1.1 over TLS over TCP; one reused connection, one more per open stream."""

    name = "tcp"

    def __init__(self, endpoint: Endpoint, config: ClusterConfig, *, timeout: float) -> None:
        self._endpoint = endpoint
        self._config = config
        self._timeout = timeout
        self._context: ssl.SSLContext | None = None
        self._conn: _Connection | None = None
        self._used = False

    def _new_connection(self) -> _Connection:
        if self._context is None:
            self._context = build_ssl_context(self._config)
        return _Connection(self._endpoint, self._context, self._timeout)

    def request(
        self, method: str, target: str, headers: Headers, body: bytes | None
    ) -> tuple[int, dict[str, str], bytes]:
        for attempt in (1, 2):
            reused = self._conn is not None and self._used
            if self._conn is None:
                self._conn = self._new_connection()
                self._used = False
            conn = self._conn
            try:
                conn.request(method, target, body=body, headers=dict(headers))
                response = conn.getresponse()
                self._used = True
                data = response.read()
            except _STALE as exc:
                self._drop()
                if reused and attempt == 1:
                    continue
                raise self.translate(exc) from None
            except (OSError, http.client.HTTPException) as exc:
                self._drop()
                raise self.translate(exc) from None
            except BaseException:
                # Interrupted midway (Ctrl-C): the connection's state is unknown.
                self._drop()
                raise
            if response.will_close:
                self._drop()
            return response.status, _headers(response), data
        raise AssertionError("unreachable")

    def open_stream(self, method: str, target: str, headers: Headers) -> _TcpStream:
        conn = self._new_connection()
        try:
            conn.request(method, target, headers=dict(headers))
            response = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise self.translate(exc) from None
        except BaseException:
            conn.close()
            raise
        # Headers arrived in time; the body of a watch may be quiet for as long as it likes.
        if conn.sock is not None:
            conn.sock.settimeout(None)
        return _TcpStream(self, conn, response)

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def close(self) -> None:
        self._drop()

    def translate(self, exc: BaseException) -> ClientError:
        """A ClientError that says, for people, what `exc` means for this server."""
        url = self._endpoint.url
        source = self._config.source
        if isinstance(exc, ConnectionRefusedError):
            return ClientError(
                f"cannot connect to {url}: connection refused; is the server running? "
                f"(start one with `make up`, or check `server:` in {source})"
            )
        if isinstance(exc, socket.gaierror):
            return ClientError(
                f"cannot resolve {self._endpoint.host} (server {url}): {exc.strerror}; "
                f"check `server:` in {source}"
            )
        if isinstance(exc, TimeoutError):
            return ClientError(
                f"no answer from {url} within {self._timeout:g}s; is the server overloaded or "
                "the address wrong?"
            )
        if isinstance(exc, ssl.SSLCertVerificationError):
            return ClientError(
                f"cannot verify the certificate of {url}: {exc.verify_message}; the "
                f"certificate-authority in {source} is not the one that signed this server's "
                "certificate"
            )
        if isinstance(exc, ssl.SSLError):
            reason = exc.reason or str(exc)
            return ClientError(
                f"TLS with {url} failed ({reason}); the server may have refused the client "
                f'certificate of user "{self._config.user}" in {source}'
            )
        if isinstance(exc, http.client.RemoteDisconnected | ConnectionResetError):
            return ClientError(f"{url} closed the connection before answering; try again")
        return ClientError(f"cannot talk to {url}: {exc}")


def _headers(response: http.client.HTTPResponse) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in response.getheaders():
        key = name.lower()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return headers
