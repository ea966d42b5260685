"""HTTP/3 (QUIC) behind the client's synchronous API.

`hypermesh.transport.h3client.H3Client` is asyncio; the CLI and most callers are not. Rather
than make every caller async, this transport runs a private event loop in a daemon thread
(started only when HTTP/3 is actually used) and hands it coroutines with
`run_coroutine_threadsafe`. A streamed body crosses back through a thread-safe queue filled by
a pump task, so the caller blocks on the queue, not on the loop.

Session tickets: the server's tickets are saved per server (and per client certificate) in
`hypermesh.client.tickets`, and the next process offers the stored one, so a new command
resumes the TLS session (`H3Transport.resumed`) instead of making a full handshake with the
certificate; the server then gives the connection the identity it verified for the ticket.
A ticket resumes once, and the resumed connection brings the next one, which replaces it.

0-RTT: the server's tickets allow early data, and a command whose first request is a GET (most
are: `get`, `describe`, a watch) sends it in the handshake's first flight, answered one round
trip later instead of two. Writes never go early (`H3Client` holds them until the handshake is
done). With such a ticket `connect()` has nothing to probe: the server answered over QUIC
within the ticket's lifetime (an hour at most), so the connection is opened by the first
request. Should QUIC have stopped working since, that request fails after the connect timeout
(it cannot fall back to TCP from there) and the ticket is dropped, so the next command probes
again and falls back as usual.

This module imports aioquic (~170 ms), so `Client` imports it only when HTTP/3 is attempted.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import queue
import ssl
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

from hypermesh.client.config import ClusterConfig
from hypermesh.client.errors import ClientError
from hypermesh.client.tickets import TicketStore, owner_of
from hypermesh.client.transports import Endpoint, Headers, private_pem_files
from hypermesh.transport.h3client import (
    EARLY_METHODS,
    H3Client,
    H3ConnectionError,
    H3Error,
    H3Response,
)

T = TypeVar("T")

# TLS alerts arrive as QUIC CRYPTO_ERROR 0x100 + alert (RFC 9001 section 4.8).
_CRYPTO_ERROR = 0x100
_BAD_CERTIFICATE = _CRYPTO_ERROR + 42
_CERTIFICATE_REVOKED = _CRYPTO_ERROR + 44
# How long closing may take before we stop waiting for a polite goodbye.
_CLOSE_TIMEOUT = 2.0


class _LoopThread:
    """A private asyncio loop in a daemon thread: the synchronous world's door into aioquic."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name="hypermesh-h3", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule `coro` on the loop; the future resolves in the caller's thread."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None) -> T:
        """Run `coro` on the loop and wait for its result (cancelling it if we stop waiting)."""
        future = self.submit(coro)
        try:
            return future.result(timeout)
        except BaseException:
            # A timeout here or Ctrl-C in the caller: the coroutine must not linger.
            future.cancel()
            raise

    def stop(self, *, grace: float = 0.0, wait: bool = True) -> None:
        """Give running tasks `grace` seconds, cancel the rest, then end the loop and thread.

        With `wait=False` the winding down happens in the background (the thread is a daemon:
        if the process exits first, nothing is lost but a polite goodbye to the server).
        """

        async def wind_down() -> None:
            current = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not current]
            if tasks and grace > 0:
                _, pending = await asyncio.wait(tasks, timeout=grace)
                tasks = list(pending)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            asyncio.get_running_loop().stop()

        if self.loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop already stopped
            self.submit(wind_down())
        if wait:
            self._thread.join(grace + _CLOSE_TIMEOUT)


class _H3Stream:
    """A streamed response; its body crosses from the loop thread through a queue."""

    def __init__(self, transport: H3Transport, loop: _LoopThread, response: H3Response) -> None:
        self._transport = transport
        self._loop = loop
        self._response = response
        self.status = response.status
        self.headers = _decode_headers(response.headers)
        self._queue: queue.SimpleQueue[bytes | BaseException | None] = queue.SimpleQueue()
        self._pump: concurrent.futures.Future[None] | None = None
        self._closed = False

    async def _run_pump(self) -> None:
        try:
            async for chunk in self._response:
                self._queue.put(chunk)
        except H3Error as exc:
            self._queue.put(self._transport.translate(exc))
        except asyncio.CancelledError:
            self._queue.put(None)
            raise
        except Exception as exc:  # an unexpected failure must still wake the reader
            self._queue.put(
                ClientError(f"HTTP/3 stream from {self._transport.url} failed: {exc!r}")
            )
        else:
            self._queue.put(None)

    def chunks(self) -> Iterator[bytes]:
        if self._pump is None:
            self._pump = self._loop.submit(self._run_pump())
        try:
            while True:
                item = self._queue.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.close()

    def read(self) -> bytes:
        try:
            return self._loop.run(self._read(), self._transport.timeout)
        finally:
            self.close()

    async def _read(self) -> bytes:
        try:
            return await self._response.read()
        except H3Error as exc:
            raise self._transport.translate(exc) from None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._pump is not None:
            self._pump.cancel()
        if self._loop.loop.is_running():
            with contextlib.suppress(Exception):
                self._loop.run(self._response.aclose(), _CLOSE_TIMEOUT)


class H3Transport:
    """HTTP/3 to one server over one long-lived QUIC connection (reconnected if it drops)."""

    name = "h3"

    def __init__(
        self,
        endpoint: Endpoint,
        config: ClusterConfig,
        *,
        timeout: float,
        connect_timeout: float,
        tickets: TicketStore | None = None,
    ) -> None:
        self._endpoint = endpoint
        self._config = config
        self.timeout = timeout
        self._connect_timeout = connect_timeout
        self._tickets = tickets
        self._thread: _LoopThread | None = None
        self._client: H3Client | None = None
        # A connect attempt still closing in the background (see `_connected`).
        self._abandoned = False

    @property
    def url(self) -> str:
        return self._endpoint.url

    def _loop(self) -> _LoopThread:
        if self._thread is None:
            self._thread = _LoopThread()
        return self._thread

    # The margin lets the inner, precise timeout fire first and explain itself.
    def _outer(self, timeout: float) -> float:
        return timeout + 5.0

    @property
    def resumed(self) -> bool:
        """True if the open connection resumed a TLS session from a stored ticket."""
        client = self._client
        if client is None:
            return False
        try:
            return client.session_resumed
        except H3Error:
            return False

    @property
    def early_data_accepted(self) -> bool | None:
        """Whether the server took this connection's 0-RTT data (False when none was sent;
        None before the handshake completed)."""
        client = self._client
        if client is None:
            return None
        try:
            return client.early_data_accepted
        except H3Error:
            return None

    def connect(self) -> None:
        """Open the QUIC connection now (raises ClientError); `auto` uses this to probe.

        With a stored ticket that allows 0-RTT this does nothing: the first request opens the
        connection, so that a GET can travel in its first flight (see the module docstring).
        """
        if self._client is None and self._early_ticket_stored():
            return
        self._loop().run(self._connected(early=False), self._outer(self._connect_timeout))

    def _early_ticket_stored(self) -> bool:
        tickets = self._tickets
        if tickets is None:
            return False
        ticket = tickets.load(owner_of(self._config.cert_pem))
        return ticket is not None and ticket.max_early_data_size is not None

    async def _connected(self, *, early: bool) -> H3Client:
        client = self._client
        if client is not None:
            try:
                # Raises if the connection closed since (idle timeout, server restart).
                client.session_resumed  # noqa: B018
                return client
            except H3Error:
                self._client = None
                with contextlib.suppress(Exception):
                    await client.close()
        # A ticket resumes the identity it was issued to: offer it only with that certificate.
        owner = owner_of(self._config.cert_pem)
        tickets = self._tickets
        ticket = tickets.load(owner) if tickets is not None else None
        with private_pem_files(self._config) as files:
            cafile = files.ca or _system_cafile()
            client = H3Client(
                self._endpoint.host,
                self._endpoint.port,
                cafile=cafile,
                certfile=files.cert,
                keyfile=files.key,
                server_name=self._endpoint.server_name,
                connect_timeout=self._connect_timeout,
                session_ticket=ticket,
                on_session_ticket=(
                    functools.partial(tickets.save, owner=owner) if tickets is not None else None
                ),
            )
            connecting = asyncio.ensure_future(client.connect(early_data=early))
            # H3Client gives up after connect_timeout but then spends up to half a second
            # closing; `auto` must fall back to TCP at once, so stop waiting when the timeout
            # fires and let the closing finish in the background.
            done, _ = await asyncio.wait({connecting}, timeout=self._connect_timeout)
            if not done:
                self._abandoned = True
                connecting.add_done_callback(functools.partial(_abandon, client))
                failure: BaseException = H3ConnectionError("HTTP/3 connect timed out")
            else:
                exception = connecting.exception()
                if exception is None:
                    self._client = client
                    return client
                failure = exception
        if ticket is not None and tickets is not None:
            # A refused resumption can look like any failure: start afresh next time.
            tickets.discard()
        if isinstance(failure, H3Error | OSError | ssl.SSLError | ValueError):
            raise self.translate(failure) from None
        raise failure

    def request(
        self, method: str, target: str, headers: Headers, body: bytes | None
    ) -> tuple[int, dict[str, str], bytes]:
        return self._loop().run(
            self._request(method, target, headers, body), self._outer(self.timeout)
        )

    async def _request(
        self, method: str, target: str, headers: Headers, body: bytes | None
    ) -> tuple[int, dict[str, str], bytes]:
        client = await self._connected(early=method in EARLY_METHODS and not body)
        try:
            status, raw, data = await client.request(
                method,
                target,
                headers=_encode_headers(headers),
                body=body or b"",
                timeout=self.timeout,
            )
        except TimeoutError:
            raise self._timed_out() from None
        except H3Error as exc:
            await self._failed(client)
            raise self.translate(exc) from None
        return status, _decode_headers(raw), data

    async def _failed(self, client: H3Client) -> None:
        """A request failed: if its connection never got past the handshake (an early one),
        treat it as a failed connect: drop the connection and the ticket it offered."""
        if client.confirmed:
            return
        if self._client is client:
            self._client = None
        with contextlib.suppress(Exception):
            await client.close()
        if self._tickets is not None:
            self._tickets.discard()

    def open_stream(self, method: str, target: str, headers: Headers) -> _H3Stream:
        loop = self._loop()
        response = loop.run(self._open(method, target, headers), self._outer(self.timeout))
        return _H3Stream(self, loop, response)

    async def _open(self, method: str, target: str, headers: Headers) -> H3Response:
        client = await self._connected(early=method in EARLY_METHODS)
        try:
            async with asyncio.timeout(self.timeout):
                return await client.open(method, target, headers=_encode_headers(headers))
        except TimeoutError:
            raise self._timed_out() from None
        except H3Error as exc:
            await self._failed(client)
            raise self.translate(exc) from None

    def close(self) -> None:
        if self._thread is None:
            return
        client, self._client = self._client, None
        if client is not None and self._thread.loop.is_running():
            with contextlib.suppress(Exception):
                self._thread.run(client.close(), _CLOSE_TIMEOUT)
        if self._abandoned:
            self._thread.stop(grace=_CLOSE_TIMEOUT, wait=False)
        else:
            self._thread.stop()
        self._thread = None

    def _timed_out(self) -> ClientError:
        return ClientError(
            f"no answer from {self.url} over HTTP/3 within {self.timeout:g}s; is the server "
            "overloaded? (--transport=tcp uses HTTPS over TCP instead)"
        )

    def translate(self, exc: BaseException) -> ClientError:
        """A ClientError that says, for people, what `exc` means for this server."""
        url, source = self.url, self._config.source
        if isinstance(exc, H3ConnectionError):
            code = exc.error_code
            if code is None and "timed out" in str(exc):
                return ClientError(
                    f"no HTTP/3 answer from {url} within {self._connect_timeout:g}s (is UDP "
                    "blocked, or the server down?); --transport=tcp uses HTTPS over TCP"
                )
            if code == _BAD_CERTIFICATE:
                return ClientError(
                    f"HTTP/3 to {url}: a certificate was refused ({exc}); check the "
                    f'certificate-authority and the client certificate of user "{self._config.user}" '
                    f"in {source}"
                )
            if code == _CERTIFICATE_REVOKED:
                return ClientError(
                    f"HTTP/3 to {url}: the client certificate of user "
                    f'"{self._config.user}" in {source} has been revoked; ask for a new one'
                )
            if code is not None and _CRYPTO_ERROR <= code < _CRYPTO_ERROR + 0x100:
                return ClientError(f"TLS with {url} over HTTP/3 failed ({exc}); check {source}")
            return ClientError(f"HTTP/3 connection to {url} failed: {exc}")
        if isinstance(exc, H3Error):
            return ClientError(f"HTTP/3 exchange with {url} failed: {exc}")
        if isinstance(exc, ssl.SSLError | ValueError):
            return ClientError(
                f'cannot load the TLS material of context "{self._config.context}" in {source} '
                f"for HTTP/3: {exc}"
            )
        return ClientError(f"cannot reach {url} over HTTP/3: {exc}")


def _abandon(client: H3Client, task: asyncio.Future[None]) -> None:
    """The end of a connect we stopped waiting for: close it if it succeeded after all."""
    if task.cancelled():
        return
    # Retrieving the exception also keeps asyncio from logging it as never retrieved.
    if task.exception() is None:
        asyncio.ensure_future(client.close())


def _system_cafile() -> str:
    paths = ssl.get_default_verify_paths()
    return paths.cafile or paths.openssl_cafile


def _encode_headers(headers: Headers) -> list[tuple[bytes, bytes]]:
    # H3Client sends its own user-agent; a second one would only confuse the server's logs.
    return [
        (name.encode("ascii"), value.encode("latin-1"))
        for name, value in headers
        if name != "user-agent"
    ]


def _decode_headers(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in raw:
        key = name.decode("ascii", "replace").lower()
        text = value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return headers
