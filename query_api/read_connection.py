"""One pipelined Redis connection for the query API's hot reads (``HGET`` of a view,
``ZREVRANGE`` of a rider's recent orders).

redis-py's asyncio client costs ≈ 50 µs of CPU per ``HGET`` on this box (pool checkout
and release, a timeout context per call, command packing, observability hooks), most of
a screen's own work. Here every read of a process shares one connection: the reads
issued in one turn of the event loop are written together (one system call), their
replies come back in order and are parsed by hiredis (the parser redis-py itself uses),
≈ 7 µs per read, and Redis reads and writes fewer, larger packets too
(docs/benchmarks.md, "Issue 13 — read path and reporting").

Failures look as they did with redis-py, so :class:`~query_api.stores.RedisGate` treats
them the same: a refused or lost connection raises ``redis.exceptions.ConnectionError``
(for every read waiting on it); a reply later than ``timeout_seconds`` raises
``redis.exceptions.TimeoutError`` and closes the connection (replies come in order, so
the ones behind it are failed too); more than ``max_pending`` reads waiting raise
``MaxConnectionsError`` (busy, not down). The next read after a failure connects again.
Single Redis only (``redis://``, ``unix://``); a cluster keeps redis-py's client.
Why we own this, what it does not do (TLS, RESP3, ...) and when to drop it:
docs/adr/0008-own-redis-read-connection.md. The command API sends its offer's rate limit
and debt-mark commands through one too (:meth:`ReadConnection.execute`, ADR 0018).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import hiredis
from redis import exceptions as redis_errors
from redis._parsers.base import BaseParser
from redis.asyncio.connection import parse_url

_Waiting = tuple["asyncio.Future[Any]", float]  # a read's future and its deadline (loop time)


class _RespProtocol(asyncio.Protocol):
    """Requests written as they come, replies matched to them in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float, max_pending: int):
        self._loop = loop
        self._timeout = timeout
        self._max_pending = max_pending
        self._reader = hiredis.Reader()
        self._waiting: deque[_Waiting] = deque()
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._unsent: list[bytes] = []
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def request(self, packed: bytes) -> asyncio.Future[Any]:
        if self.closed or self._transport is None:
            raise redis_errors.ConnectionError("the Redis connection is closed")
        if len(self._waiting) >= self._max_pending:
            raise redis_errors.MaxConnectionsError("too many Redis reads waiting")
        future = self._loop.create_future()
        deadline = self._loop.time() + self._timeout
        self._waiting.append((future, deadline))
        if not self._unsent:  # the reads of one turn of the event loop go out in one write
            self._loop.call_soon(self._flush)
        self._unsent.append(packed)
        if self._timer is None:
            self._timer = self._loop.call_at(deadline, self._check_deadline)
        return future

    def _flush(self) -> None:
        unsent, self._unsent = self._unsent, []
        if not self.closed and self._transport is not None:
            self._transport.write(b"".join(unsent))

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        waiting = self._waiting
        try:
            while (reply := self._reader.gets()) is not False:
                future, _ = waiting.popleft()
                if future.done():  # its reader gave up (cancelled)
                    continue
                if isinstance(reply, hiredis.ReplyError):
                    future.set_exception(_reply_error(reply))
                else:
                    future.set_result(reply)
        except (hiredis.ProtocolError, IndexError) as exc:  # garbage, or a reply nobody asked
            self._fail(redis_errors.ConnectionError(f"Redis protocol error: {exc!r}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(redis_errors.ConnectionError(f"connection to Redis lost: {exc!r}"))

    def _check_deadline(self) -> None:
        self._timer = None
        if not self._waiting:
            return
        _, deadline = self._waiting[0]
        if self._loop.time() >= deadline:
            self._fail(redis_errors.TimeoutError("Timeout reading from Redis"))
        else:
            self._timer = self._loop.call_at(deadline, self._check_deadline)

    def _fail(self, exc: Exception) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiting, self._waiting = self._waiting, deque()
        for future, _ in waiting:
            if not future.done():
                future.set_exception(exc)
        if self._transport is not None:
            self._transport.abort()

    def close(self) -> None:
        self._fail(redis_errors.ConnectionError("the Redis connection was closed"))


def _reply_error(reply: hiredis.ReplyError) -> redis_errors.RedisError:
    """The exception redis-py raises for this error reply (its own table: ``LOADING`` is
    busy loading, ``max number of clients reached`` a connection error, ``NOAUTH`` and
    ``WRONGPASS`` authentication errors...), so the Redis gate judges both clients alike."""
    error: redis_errors.RedisError = BaseParser.parse_error(str(reply))  # type: ignore[no-untyped-call]
    return error


def _command(*parts: bytes) -> bytes:
    """``parts`` as a RESP array of bulk strings."""
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


class ReadConnection:
    """``hget`` and ``zrevrange_with_scores`` over one pipelined connection to the Redis
    of ``url`` (single Redis).

    Connects on first use and again on the first use after a failure. ``timeout_seconds``
    bounds the connect and every reply; ``max_pending`` the reads waiting at a time.
    """

    def __init__(self, url: str, *, timeout_seconds: float, max_pending: int) -> None:
        options = parse_url(url)
        self._path: str | None = options.get("path")
        self._host: str = options.get("host", "127.0.0.1")
        self._port: int = int(options.get("port", 6379))
        self._db = int(options.get("db", 0))
        self._username: str | None = options.get("username")
        self._password: str | None = options.get("password")
        self._timeout = timeout_seconds
        self._max_pending = max_pending
        self._protocol: _RespProtocol | None = None
        self._connecting: asyncio.Future[_RespProtocol] | None = None

    @staticmethod
    def supports(url: str) -> bool:
        """Whether ``url`` is a plain single Redis this class can talk to (no TLS)."""
        return url.startswith(("redis://", "unix://"))

    async def hget(self, key: str, field: str) -> bytes | None:
        """``HGET key field``: the value, or None when the key or field is absent."""
        protocol = self._protocol
        if protocol is None or protocol.closed:
            protocol = await self._connected()
        encoded = key.encode()
        name = field.encode()
        packed = b"*3\r\n$4\r\nHGET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (
            len(encoded),
            encoded,
            len(name),
            name,
        )
        reply: bytes | None = await protocol.request(packed)
        return reply

    async def zrevrange_with_scores(self, key: str) -> list[tuple[bytes, float]]:
        """``ZREVRANGE key 0 -1 WITHSCORES``: every member with its score, highest first."""
        protocol = self._protocol
        if protocol is None or protocol.closed:
            protocol = await self._connected()
        flat: list[bytes] = await protocol.request(
            _command(b"ZREVRANGE", key.encode(), b"0", b"-1", b"WITHSCORES")
        )
        return [(flat[i], float(flat[i + 1])) for i in range(0, len(flat), 2)]

    async def execute(self, *commands: tuple[bytes, ...]) -> list[Any]:
        """Each of ``commands`` (a command's name and arguments), sent together; their
        replies in order, as hiredis parses them (bulk strings as bytes, integers as int,
        nil as None). An error reply raises redis-py's exception for it, and the replies
        after it are dropped as they come (the command API's pipeline of a rate-limit
        count, its expiry and a debt mark; a debt mark's ``SET``)."""
        protocol = self._protocol
        if protocol is None or protocol.closed:
            protocol = await self._connected()
        futures: list[asyncio.Future[Any]] = []
        try:
            for parts in commands:
                futures.append(protocol.request(_command(*parts)))
            return [await future for future in futures]
        finally:
            for future in futures:
                if not future.done():
                    future.cancel()  # its reply is dropped when it comes
                elif not future.cancelled():
                    future.exception()  # retrieved: a failed reply is not reported twice

    async def _connected(self) -> _RespProtocol:
        if self._connecting is None:  # one connect for every read that finds none
            self._connecting = asyncio.ensure_future(self._connect())
        connecting = self._connecting
        try:
            return await asyncio.shield(connecting)
        finally:
            if self._connecting is connecting and connecting.done():
                self._connecting = None

    async def _connect(self) -> _RespProtocol:
        loop = asyncio.get_running_loop()

        def factory() -> _RespProtocol:
            return _RespProtocol(loop, self._timeout, self._max_pending)

        protocol: _RespProtocol | None = None
        try:
            async with asyncio.timeout(self._timeout):
                if self._path is not None:
                    _, protocol = await loop.create_unix_connection(factory, self._path)
                else:
                    _, protocol = await loop.create_connection(factory, self._host, self._port)
                if self._password is not None:
                    auth = [self._username.encode()] if self._username else []
                    await protocol.request(_command(b"AUTH", *auth, self._password.encode()))
                if self._db:
                    await protocol.request(_command(b"SELECT", str(self._db).encode()))
        except BaseException as exc:
            if protocol is not None:
                protocol.close()
            if isinstance(exc, TimeoutError):
                raise redis_errors.TimeoutError("Timeout connecting to Redis") from exc
            if isinstance(exc, redis_errors.ResponseError):  # AUTH or SELECT refused
                raise redis_errors.AuthenticationError(str(exc)) from exc
            if isinstance(exc, OSError) and not isinstance(exc, redis_errors.RedisError):
                raise redis_errors.ConnectionError(f"cannot connect to Redis: {exc!r}") from exc
            raise
        self._protocol = protocol
        return protocol

    async def aclose(self) -> None:
        """Close the connection; reads waiting on it fail with ConnectionError."""
        if self._protocol is not None:
            self._protocol.close()
            self._protocol = None
