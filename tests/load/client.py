"""A minimal keep-alive HTTP/1.1 client for load generation.

Why not aiohttp or httpx: on a 2-core box the generator shares the CPU with the
system under test, so every microsecond it spends per request is taken from the
servers. This client does one thing — send a request on an open connection and read
a ``Content-Length`` answer — in a few microseconds, which lets a single generator
process offer well over the query side's target without becoming the bottleneck
(its own CPU is reported beside the servers').
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import cast


class HttpError(Exception):
    """The connection failed or the answer was not HTTP/1.1 with a Content-Length."""


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.buffer = bytearray()
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(HttpError(f"connection lost: {exc!r}"))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end])
        length = -1
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
                break
        if length < 0:
            self._fail(HttpError("answer without Content-Length"))
            return
        if len(self.buffer) < end + 4 + length:
            return
        body = bytes(self.buffer[end + 4 : end + 4 + length])
        del self.buffer[: end + 4 + length]
        status = int(head[9:12])
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((status, body))

    def _fail(self, exc: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)
        if self.transport is not None:
            self.transport.close()


class Connection:
    """One keep-alive connection; one request at a time."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._protocol: _Protocol | None = None

    async def request(
        self, method: str, path: str, body: bytes | None = None, headers: str = ""
    ) -> tuple[int, bytes]:
        protocol = self._protocol
        if protocol is None or protocol.closed:
            loop = asyncio.get_running_loop()
            _, protocol = await loop.create_connection(_Protocol, self.host, self.port)
            self._protocol = protocol
        assert protocol.transport is not None
        waiter: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        protocol.waiter = waiter
        protocol.buffer.clear()
        if body is None:
            head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n{headers}\r\n"
            protocol.transport.write(head.encode())
        else:
            head = (
                f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{headers}\r\n"
            )
            protocol.transport.write(head.encode() + body)
        try:
            return await waiter
        except BaseException:
            protocol.transport.close()
            self._protocol = None
            raise

    def close(self) -> None:
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()


class Pool:
    """Connections to one server, handed out one request at a time.

    At most ``max_connections`` are open, like a real client's pool: when all are busy a
    request waits for one, and that wait counts in its latency (so an overloaded server
    shows as latency, not as the generator running out of file descriptors).
    """

    def __init__(self, host: str, port: int, max_connections: int = 512) -> None:
        self.host = host
        self.port = port
        self._idle: deque[Connection] = deque()
        self._all: list[Connection] = []
        self._max = max_connections
        self._waiters: deque[asyncio.Future[Connection]] = deque()

    async def request(
        self, method: str, path: str, body: bytes | None = None, headers: str = ""
    ) -> tuple[int, bytes]:
        conn = await self._checkout()
        try:
            result = await conn.request(method, path, body, headers)
        except BaseException:
            conn.close()
            self._checkin(conn)  # closed: it reconnects on its next request
            raise
        self._checkin(conn)
        return result

    async def _checkout(self) -> Connection:
        if self._idle:
            return self._idle.pop()
        if len(self._all) < self._max:
            conn = Connection(self.host, self.port)
            self._all.append(conn)
            return conn
        waiter: asyncio.Future[Connection] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        return await waiter

    def _checkin(self, conn: Connection) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        self._idle.append(conn)

    def close(self) -> None:
        for conn in self._all:
            conn.close()
