"""httpcore's network streams on asyncio's own protocols, for the model client's connections.

httpx reads through httpcore, whose default backend (anyio) pays, on every read of a streamed
answer, for a cancel scope and for turning the socket's reader on and off again (two
``epoll_ctl`` calls). A model server sends each token in its own write, so that was paid per
token. :class:`AsyncioBackend` keeps what arrived in a buffer fed by an :class:`asyncio.Protocol`
(reading stops while more than :data:`READ_HIGH_WATER` bytes wait unread, and resumes below
:data:`READ_LOW_WATER`), and a read that finds data there returns it without waiting; a timer is
armed only when a read has to wait. Timeouts and failures are httpcore's exceptions, as its own
backends raise them, so httpx reports them as it always does.

:func:`use_asyncio_backend` puts it under an :class:`httpx.AsyncClient`'s own transport (the one
without a proxy); proxied connections keep httpcore's default.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ssl
from collections.abc import Coroutine, Iterable
from typing import Any, cast

import httpcore
import httpx

READ_HIGH_WATER = 256 * 1024
READ_LOW_WATER = 64 * 1024
WRITE_HIGH_WATER = 64 * 1024

SocketOption = (
    tuple[int, int, int] | tuple[int, int, bytes | bytearray] | tuple[int, int, None, int]
)


class _StreamProtocol(asyncio.Protocol):
    """Buffers what a connection receives and wakes the one reader waiting for it."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.chunks: collections.deque[bytes] = collections.deque()
        self.size = 0
        self.eof = False
        self.error: BaseException | None = None
        self.paused = False
        self.waiter: asyncio.Future[None] | None = None
        self.drain_waiter: asyncio.Future[None] | None = None
        self.writing_paused = False
        # The read timeout: one timer that outlives the reads it watches (see watch).
        self._timer: asyncio.TimerHandle | None = None
        self._wait_limit = 0.0

    def watch(self, timeout: float) -> None:
        """Fail the waiting read with ``TimeoutError`` if nothing arrives within ``timeout``.

        Arming a timer per read cost as much as the read; instead the timer armed for an
        earlier read stays, and when it goes off it fails the read waiting then only if that
        read has waited its full time, else it is set again for when that read's time is up.
        """
        loop = asyncio.get_running_loop()
        self._wait_limit = loop.time() + timeout
        if self._timer is not None and self._timer.when() > self._wait_limit:
            self.forget_timer()  # set for later than this read may wait
        if self._timer is None:
            self._timer = loop.call_at(self._wait_limit, self._check_wait)

    def _check_wait(self) -> None:
        self._timer = None
        waiter = self.waiter
        if waiter is None or waiter.done():
            return  # no read waiting now: the next one arms a timer again
        loop = asyncio.get_running_loop()
        if loop.time() >= self._wait_limit:
            waiter.set_exception(TimeoutError())
        else:
            self._timer = loop.call_at(self._wait_limit, self._check_wait)

    def forget_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's are not subclasses of asyncio.Transport).
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.size += len(data)
        if self.size > READ_HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.forget_timer()
        self.eof = True
        if exc is not None:
            self.error = exc
        self._wake()
        self.writing_paused = False
        self._wake_drain()

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._wake_drain()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _wake_drain(self) -> None:
        waiter = self.drain_waiter
        if waiter is not None:
            self.drain_waiter = None
            if not waiter.done():
                waiter.set_result(None)


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


async def _wait(waiter: asyncio.Future[None], seconds: float | None) -> None:
    """Await ``waiter``; ``TimeoutError`` after ``seconds`` (``None``: no limit)."""
    if seconds is None:
        await waiter
        return
    timer = asyncio.get_running_loop().call_later(seconds, _expire, waiter)
    try:
        await waiter
    finally:
        timer.cancel()


class AsyncioStream(httpcore.AsyncNetworkStream):
    """One connection; httpcore reads and writes it from one task at a time."""

    def __init__(self, protocol: _StreamProtocol) -> None:
        self._protocol = protocol

    @property
    def _transport(self) -> asyncio.Transport:
        transport = self._protocol.transport
        if transport is None:  # pragma: no cover - set by connection_made before we exist
            raise httpcore.ReadError("not connected")
        return transport

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109 (httpcore's interface)
        protocol = self._protocol
        if not protocol.chunks and not protocol.eof:
            waiter = asyncio.get_running_loop().create_future()
            protocol.waiter = waiter
            try:
                if timeout is not None:
                    protocol.watch(timeout)
                await waiter
            except TimeoutError:
                raise httpcore.ReadTimeout("timed out reading from the server") from None
            finally:
                if protocol.waiter is waiter:
                    protocol.waiter = None
        chunks = protocol.chunks
        if not chunks:
            if protocol.error is not None:
                raise httpcore.ReadError(str(protocol.error) or type(protocol.error).__name__)
            return b""
        data = chunks.popleft()
        while chunks and len(data) + len(chunks[0]) <= max_bytes:
            data += chunks.popleft()
        if len(data) > max_bytes:
            chunks.appendleft(data[max_bytes:])
            data = data[:max_bytes]
        protocol.size -= len(data)
        if protocol.paused and protocol.size <= READ_LOW_WATER and protocol.transport is not None:
            protocol.paused = False
            protocol.transport.resume_reading()
        return data

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109 (httpcore's interface)
        if not buffer:
            return
        protocol = self._protocol
        transport = self._transport
        if transport.is_closing() or (protocol.eof and protocol.error is not None):
            raise httpcore.WriteError("the connection is closed")
        transport.write(buffer)
        if protocol.writing_paused:
            waiter = asyncio.get_running_loop().create_future()
            protocol.drain_waiter = waiter
            try:
                await _wait(waiter, timeout)
            except TimeoutError:
                raise httpcore.WriteTimeout("timed out writing to the server") from None
            finally:
                if protocol.drain_waiter is waiter:
                    protocol.drain_waiter = None
            if protocol.error is not None:
                raise httpcore.WriteError(str(protocol.error) or type(protocol.error).__name__)

    async def aclose(self) -> None:
        transport = self._protocol.transport
        if transport is not None:
            transport.close()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        protocol = self._protocol
        try:
            async with asyncio.timeout(timeout):
                wrapped = await loop.start_tls(
                    self._transport, protocol, ssl_context, server_hostname=server_hostname
                )
        except TimeoutError:
            await self.aclose()
            raise httpcore.ConnectTimeout("timed out in the TLS handshake") from None
        except (OSError, ssl.SSLError, ConnectionError) as exc:
            await self.aclose()
            raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc
        if wrapped is None:  # pragma: no cover - only when the loop is closing
            raise httpcore.ConnectError("TLS not started")
        protocol.transport = wrapped
        return AsyncioStream(protocol)

    def get_extra_info(self, info: str) -> Any:
        protocol = self._protocol
        transport = protocol.transport
        if info == "is_readable":
            # httpcore asks before reusing a kept-alive connection: anything (data or the
            # server's close) arrived while it was idle means it is not fit for a new request.
            return (
                bool(protocol.chunks)
                or protocol.eof
                or transport is None
                or (transport.is_closing())
            )
        if transport is None:
            return None
        if info == "ssl_object":
            return transport.get_extra_info("ssl_object")
        if info == "client_addr":
            return transport.get_extra_info("sockname")
        if info == "server_addr":
            return transport.get_extra_info("peername")
        if info == "socket":
            return transport.get_extra_info("socket")
        return None


def _configure(transport: asyncio.BaseTransport, options: Iterable[SocketOption] | None) -> None:
    transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)  # type: ignore[attr-defined]
    sock = transport.get_extra_info("socket")
    for option in options or ():
        sock.setsockopt(*option)


class AsyncioBackend(httpcore.AsyncNetworkBackend):
    """Connections as :class:`AsyncioStream` s (see the module docstring)."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        protocol = _StreamProtocol()
        local_addr = None if local_address is None else (local_address, 0)
        connecting = loop.create_connection(lambda: protocol, host, port, local_addr=local_addr)
        return await _open(connecting, protocol, f"{host}:{port}", timeout, socket_options)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Iterable[SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        protocol = _StreamProtocol()
        connecting = loop.create_unix_connection(lambda: protocol, path)
        return await _open(connecting, protocol, path, timeout, socket_options)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


async def _open(
    connecting: Coroutine[Any, Any, tuple[asyncio.Transport, asyncio.BaseProtocol]],
    protocol: _StreamProtocol,
    where: str,
    timeout: float | None,  # noqa: ASYNC109 (httpcore's connect timeout, passed on)
    socket_options: Iterable[SocketOption] | None,
) -> httpcore.AsyncNetworkStream:
    """Finish a connection attempt, its failures as httpcore's exceptions."""
    try:
        async with asyncio.timeout(timeout):
            transport, _ = await connecting
    except TimeoutError:
        raise httpcore.ConnectTimeout(f"timed out connecting to {where}") from None
    except OSError as exc:
        raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc
    try:
        _configure(transport, socket_options)
    except OSError as exc:
        transport.close()
        raise httpcore.ConnectError(str(exc)) from exc
    return AsyncioStream(protocol)


def use_asyncio_backend(client: httpx.AsyncClient) -> bool:
    """Put :class:`AsyncioBackend` under ``client``'s own transport, before its first request.

    False (and nothing changed) when that transport is not httpx's plain connection pool, e.g.
    one a caller passed in, or when httpx or httpcore no longer keep the pool where this
    looks for it; the client then works as before on httpcore's default backend.
    """
    transport = getattr(client, "_transport", None)
    if type(transport) is not httpx.AsyncHTTPTransport:
        return False
    pool = getattr(transport, "_pool", None)
    if type(pool) is not httpcore.AsyncConnectionPool or not hasattr(pool, "_network_backend"):
        return False
    with contextlib.suppress(AttributeError):
        if pool.connections:
            return False
    pool._network_backend = AsyncioBackend()
    return True
