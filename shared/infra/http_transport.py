"""A lean HTTP/1.1 transport for httpx: keep-alive connections parsed by httptools.

httpx stays the client API (``httpx.AsyncClient(transport=Http1Transport(...))``); this
replaces only what moves the bytes. httpx's default transport (httpcore, h11 in pure
Python) and httpx-aiohttp (a whole aiohttp client session under httpx's) cost several
times more CPU per call than the call itself needs (docs/benchmarks.md, issue 13,
``python -m tests.load.transport_cost``); the external calls are on every command's path.
Why our own code here, what it leaves out (TLS, HTTP/2, proxies) and when to go back to a
library: docs/adr/0009-own-http-transport.md.

What it does, and the httpx errors it raises (so callers map failures as with any
transport):

- plain ``http://`` only (``https`` and proxies: ``httpx.UnsupportedProtocol``); the
  external services are reached over the local network;
- pooled keep-alive connections per origin, at most ``limits.max_connections`` open
  at once (a request waits for a free one up to the pool timeout:
  ``httpx.PoolTimeout``), idle ones kept ``limits.keepalive_expiry`` seconds, at most
  ``limits.max_keepalive_connections`` of them; a connection the server closed is
  never reused;
- connect: ``httpx.ConnectTimeout`` past the connect timeout, ``httpx.ConnectError``
  when refused or unreachable (the request never left);
- the answer: ``httpx.ReadTimeout`` when it is not complete within the read timeout
  of the request (measured from when the request was written: the request is small,
  so this also bounds a server that does not read), ``httpx.RemoteProtocolError`` when
  the server closes before answering or sends something that is not HTTP/1.1,
  ``httpx.ReadError`` when the connection breaks mid-answer;
- a connection whose request was cancelled, timed out or failed is closed, never
  reused (its answer could still arrive);
- the whole body is read before the answer is returned (the services answer small
  JSON documents), so ``response.content`` is ready; chunked bodies are decoded, a
  body without length ends with the connection. Not for ``HEAD`` (refused:
  ``httpx.UnsupportedProtocol``), upgrades or streaming;
- an answer (head and body) longer than ``max_answer_bytes`` (default
  :data:`MAX_ANSWER_BYTES`) is not read further: ``httpx.RemoteProtocolError``, and the
  connection is closed, so a service answering without end costs us at most that much
  memory per call.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any, cast

import httptools
import httpx

_DEFAULT_LIMITS = httpx.Limits()
MAX_ANSWER_BYTES = 1 << 20  # bytes; the services' answers are JSON documents of < 2 KB


class _Answer:
    """The parts of one HTTP answer, filled by the parser's callbacks."""

    __slots__ = ("body", "complete", "headers", "keep_alive", "parser", "reason", "status")

    def __init__(self) -> None:
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.complete = False
        self.keep_alive = False
        self.parser: Any = None

    # httptools callbacks
    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        # asked now: once the message is complete the parser no longer knows
        self.keep_alive = self.parser.should_keep_alive()
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self, max_answer_bytes: int = MAX_ANSWER_BYTES) -> None:
        self.max_answer_bytes = max_answer_bytes
        self.received = 0  # bytes of the answer being read
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._waiter: asyncio.Future[_Answer] | None = None
        self._answer: _Answer | None = None
        self._parser: Any = None
        self._got_bytes = False

    # --- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        if self._parser is None or self._waiter is None:  # bytes nobody asked for
            self.close()
            return
        self._got_bytes = True
        self.received += len(data)
        if self.received > self.max_answer_bytes:
            self._fail(
                httpx.RemoteProtocolError(f"answer longer than {self.max_answer_bytes} bytes")
            )
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"invalid HTTP answer: {exc}"))
            return
        answer = self._answer
        if answer is not None and answer.complete:
            waiter, self._waiter, self._parser = self._waiter, None, None
            answer.parser = None
            if not answer.keep_alive:
                self.close()  # the answer is whole; the server wants the connection closed
            if not waiter.done():
                waiter.set_result(answer)

    def eof_received(self) -> bool | None:
        self.closed = True
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        answer = self._answer
        if answer is not None and answer.status and self._ends_with_close():
            # a body without Content-Length or chunking ends with the connection
            answer.complete = True
            self._waiter = None
            waiter.set_result(answer)
        elif not self._got_bytes:
            waiter.set_exception(httpx.RemoteProtocolError("server disconnected without answering"))
        else:
            waiter.set_exception(httpx.ReadError("connection broken mid-answer"))

    def _ends_with_close(self) -> bool:
        assert self._answer is not None
        names = {name.lower() for name, _ in self._answer.headers}
        return b"content-length" not in names and b"transfer-encoding" not in names

    # --- requests ----------------------------------------------------------------------------

    def send(self, head: bytes, body: bytes) -> asyncio.Future[_Answer]:
        """Write one request; the future completes with its whole answer."""
        assert self.transport is not None
        assert self._waiter is None
        loop = asyncio.get_running_loop()
        self._answer = answer = _Answer()
        self._parser = answer.parser = httptools.HttpResponseParser(answer)
        self._got_bytes = False
        self.received = 0
        self._waiter = loop.create_future()
        self.transport.write(head + body if body else head)  # one write, one syscall
        return self._waiter

    def _fail(self, exc: Exception) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self.close()

    def close(self) -> None:
        self.closed = True
        self._waiter = None
        if self.transport is not None:
            self.transport.close()


def _read_timed_out(waiter: asyncio.Future[_Answer]) -> None:
    if not waiter.done():
        waiter.set_exception(httpx.ReadTimeout("no complete answer within the read timeout"))


class Http1Transport(httpx.AsyncBaseTransport):
    """httpx's transport interface over pooled HTTP/1.1 connections (see the module).

    ``limits``: ``max_connections`` open at once (None: no limit),
    ``max_keepalive_connections`` idle ones kept, ``keepalive_expiry`` seconds an idle
    one is kept (None: as long as the server keeps it). ``max_answer_bytes``: the longest
    answer read, head and body (longer: ``httpx.RemoteProtocolError``).
    """

    def __init__(
        self, limits: httpx.Limits = _DEFAULT_LIMITS, max_answer_bytes: int = MAX_ANSWER_BYTES
    ) -> None:
        self._max_answer = max_answer_bytes
        self._max_idle = limits.max_keepalive_connections
        self._expiry = limits.keepalive_expiry
        self._max_open = limits.max_connections
        self._slots: asyncio.Semaphore | None = None
        self._idle: dict[tuple[bytes, int], deque[_Connection]] = {}
        self._open: set[_Connection] = set()
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme != "http":
            raise httpx.UnsupportedProtocol(f"only http:// is supported, not {url.scheme!r}")
        if request.method == "HEAD":
            raise httpx.UnsupportedProtocol("HEAD is not supported by this transport")
        if self._closed:
            raise httpx.ConnectError("the transport is closed")
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        try:
            body = request.content  # read already (a client request)
        except httpx.RequestNotRead:  # a redirect's request, or a streamed body
            body = await request.aread()
        origin = (url.raw_host, url.port or 80)
        head = _head(request, len(body))
        await self._take_slot(timeouts.get("pool"))
        try:
            conn = self._idle_connection(origin) or await self._connect(
                origin, timeouts.get("connect")
            )
            answer = await self._exchange(conn, head, body, timeouts.get("read"))
            if conn.closed:
                self._forget(conn)
            else:
                self._keep(origin, conn)
        finally:
            if self._slots is not None:
                self._slots.release()
        return httpx.Response(
            status_code=answer.status,
            headers=answer.headers,
            content=b"".join(answer.body),
            request=request,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": answer.reason},
        )

    async def _take_slot(self, wait_seconds: float | None) -> None:
        if self._max_open is None:
            return
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._max_open)
        if not self._slots.locked():
            await self._slots.acquire()  # returns at once
            return
        try:
            async with asyncio.timeout(wait_seconds):
                await self._slots.acquire()
        except TimeoutError:
            raise httpx.PoolTimeout("no free connection within the pool timeout") from None

    def _idle_connection(self, origin: tuple[bytes, int]) -> _Connection | None:
        idle = self._idle.get(origin)
        if not idle:
            return None
        now = time.monotonic()
        while idle:
            conn = idle.pop()  # the most recently used: least likely closed by the server
            if not conn.closed and (self._expiry is None or now - conn.idle_since < self._expiry):
                return conn
            conn.close()
            self._open.discard(conn)
        return None

    async def _connect(
        self, origin: tuple[bytes, int], connect_seconds: float | None
    ) -> _Connection:
        loop = asyncio.get_running_loop()
        host = origin[0].decode("ascii")
        try:
            async with asyncio.timeout(connect_seconds):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self._max_answer), host, origin[1]
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(f"no connection to {host}:{origin[1]} in time") from None
        except OSError as exc:
            raise httpx.ConnectError(f"cannot connect to {host}:{origin[1]}: {exc}") from exc
        self._open.add(conn)
        return conn

    async def _exchange(
        self, conn: _Connection, head: bytes, body: bytes, read_seconds: float | None
    ) -> _Answer:
        waiter = conn.send(head, body)
        timer = (
            None
            if read_seconds is None  # httpx's "no timeout"
            else asyncio.get_running_loop().call_later(read_seconds, _read_timed_out, waiter)
        )
        try:
            return await waiter
        except BaseException:  # timed out, broken, cancelled: never reuse the connection
            conn.close()
            self._forget(conn)
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def _keep(self, origin: tuple[bytes, int], conn: _Connection) -> None:
        idle = self._idle.setdefault(origin, deque())
        if self._max_idle is not None and len(idle) >= self._max_idle:
            conn.close()
            self._forget(conn)
            return
        conn.idle_since = time.monotonic()
        idle.append(conn)

    def _forget(self, conn: _Connection) -> None:
        self._open.discard(conn)

    async def aclose(self) -> None:
        self._closed = True
        for conn in self._open:
            conn.close()
        self._open.clear()
        self._idle.clear()


def _head(request: httpx.Request, length: int) -> bytes:
    """The request line and headers; Content-Length set from the body actually sent."""
    target = request.url.raw_path
    lines = [request.method.encode("ascii"), b" ", target, b" HTTP/1.1\r\n"]
    for name, value in request.headers.raw:
        lowered = name.lower()
        if lowered in (b"content-length", b"transfer-encoding"):
            continue
        lines += [name, b": ", value, b"\r\n"]
    if length or request.method in ("POST", "PUT", "PATCH"):
        lines += [b"Content-Length: ", str(length).encode("ascii"), b"\r\n"]
    lines.append(b"\r\n")
    return b"".join(lines)
