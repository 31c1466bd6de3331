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
import time
from collections import defaultdict, deque
from collections.abc import Sequence
from typing import cast


class HttpError(Exception):
    """The connection failed or the answer was not HTTP/1.1 with a Content-Length."""


def content_length(buffer: bytes | bytearray, end: int) -> int:
    """The Content-Length of the answer whose head ends at ``end`` (the index of its
    blank line) in ``buffer``; -1 when it has none. uvicorn's lower-case spelling is
    found with one search, any other spelling by reading the head's lines."""
    at = buffer.find(b"\r\ncontent-length:", 0, end)
    if at >= 0:
        stop = buffer.find(b"\r\n", at + 17, end + 2)
        return int(buffer[at + 17 : stop])
    for line in bytes(buffer[:end]).split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return -1


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
        length = content_length(self.buffer, end)
        if length < 0:
            self._fail(HttpError("answer without Content-Length"))
            return
        if len(self.buffer) < end + 4 + length:
            return
        status = int(self.buffer[9:12])
        body = bytes(self.buffer[end + 4 : end + 4 + length])
        del self.buffer[: end + 4 + length]
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


class _Wire(asyncio.Protocol):
    """One keep-alive connection of a :class:`Blaster`: callbacks only, no futures."""

    __slots__ = ("blaster", "buffer", "scheduled", "sent", "transport")

    def __init__(self, blaster: Blaster) -> None:
        self.blaster = blaster
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.scheduled = 0.0  # when the request in progress was due (perf_counter)
        self.sent = 0.0  # when it was written

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.blaster._connected(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.blaster._lost(self, exc)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data if self.buffer else data
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            length = content_length(buffer, end)
            if length < 0:
                self.buffer = b""
                self.blaster._failed(self, "no Content-Length")
                return
            total = end + 4 + length
            if len(buffer) < total:
                break
            status: int | str = int(buffer[9:12])
            if status == 503 and buffer.find(b'"code":"overloaded"', end, total) < 0:
                status = "503 other"  # not shed: e.g. dependency_unavailable
            buffer = buffer[total:]
            self.buffer = buffer
            self.blaster._answered(self, status)
            if not buffer:
                return
        self.buffer = buffer


class Blaster:
    """Load on one server from one process at a few microseconds per request.

    ``requests`` are whole HTTP/1.1 requests as bytes (made once, sent in turn). At most
    ``max_connections`` keep-alive connections are open, each with one request at a
    time; a request due while all are busy waits in the generator for a free one,
    and that wait counts in its latency, as in a real client's pool. Everything runs
    in protocol callbacks and one timer: no task or future per request.

    Latencies (seconds) are recorded per status code (int) or failure (str) in
    ``latencies`` (``"503 other"``: a 503 that is not ``overloaded``), measured from
    when each request was *due* (open loop: the schedule,
    so a late generator or a full pool counts against the answer); ``server_latencies``
    from when it was written, for the same answers. Connections closed by the server
    are opened again for the next request.
    """

    def __init__(
        self, host: str, port: int, requests: Sequence[bytes], max_connections: int = 512
    ) -> None:
        if not requests:
            raise ValueError("no requests to send")
        self.host = host
        self.port = port
        self._requests = list(requests)
        self._next = 0
        self._max = max_connections
        self._opening = 0
        self._connecting: set[asyncio.Task[None]] = set()
        self._open: set[_Wire] = set()
        self._idle: list[_Wire] = []
        self._pending: deque[float] = deque()  # due times of requests waiting for a wire
        self._loop: asyncio.AbstractEventLoop | None = None
        self._done: asyncio.Future[None] | None = None
        self._outstanding = 0  # due, not yet answered or failed
        self._closed_loop_until = 0.0  # closed loop: a wire sends again until then
        self._scheduling = False  # open loop: requests are still to come
        self.latencies: defaultdict[int | str, list[float]] = defaultdict(list)
        self.server_latencies: defaultdict[int | str, list[float]] = defaultdict(list)

    def reset(self) -> None:
        """Forget the latencies recorded so far (between phases)."""
        self.latencies = defaultdict(list)
        self.server_latencies = defaultdict(list)

    # --- schedules ------------------------------------------------------------------------

    async def open_loop(self, rate: float, duration: float, timeout: float = 60.0) -> float:
        """Send ``rate`` requests a second for ``duration`` seconds, each when it is due
        whatever the answers, then wait (at most ``timeout`` s) for the answers; returns
        the seconds from the first request to the last answer."""
        loop = self._loop = asyncio.get_running_loop()
        total = int(rate * duration)
        started = time.perf_counter()
        self._done = loop.create_future()
        self._scheduling = True
        sent = 0

        def tick() -> None:
            nonlocal sent
            now = time.perf_counter()
            due = min(total, int((now - started) * rate) + 1)
            self._outstanding += due - sent
            for i in range(sent, due):
                self._dispatch(started + i / rate, now)
            sent = due
            if sent < total:
                loop.call_at(loop.time() + 0.001, tick)
            else:
                self._scheduling = False
                self._check_done()

        tick()
        try:
            await asyncio.wait_for(asyncio.shield(self._done), duration + timeout)
        except TimeoutError:
            self._abandon()
        return time.perf_counter() - started

    async def closed_loop(self, concurrency: int, duration: float) -> float:
        """``concurrency`` connections each send their next request as soon as the last
        one is answered, for ``duration`` seconds; returns the seconds it took."""
        loop = self._loop = asyncio.get_running_loop()
        self._done = loop.create_future()
        started = time.perf_counter()
        self._closed_loop_until = started + duration
        self._outstanding += concurrency
        for _ in range(concurrency):
            self._dispatch(started, started)
        try:
            await asyncio.wait_for(asyncio.shield(self._done), duration + 60)
        except TimeoutError:
            self._abandon()
        self._closed_loop_until = 0.0
        return time.perf_counter() - started

    async def connect(self, count: int, timeout: float = 30.0) -> int:
        """Open connections until ``count`` are open (at most ``max_connections``), to
        start a phase with them; returns how many are open."""
        self._loop = asyncio.get_running_loop()
        want = min(count, self._max)
        while len(self._open) + self._opening < want:
            self._open_one()
        deadline = time.perf_counter() + timeout
        while self._opening and time.perf_counter() < deadline:
            await asyncio.sleep(0.01)
        return len(self._open)

    def close(self) -> None:
        for wire in list(self._open):
            if wire.transport is not None:
                wire.transport.close()

    # --- the pool -------------------------------------------------------------------------

    def _dispatch(self, due: float, now: float) -> None:
        if self._idle:
            self._send(self._idle.pop(), due, now)
            return
        self._pending.append(due)
        if len(self._open) + self._opening < self._max:
            self._open_one()

    def _open_one(self) -> None:
        assert self._loop is not None
        self._opening += 1
        task = self._loop.create_task(self._connect())
        self._connecting.add(task)  # a reference until it is done
        task.add_done_callback(self._connecting.discard)

    async def _connect(self) -> None:
        assert self._loop is not None
        try:
            await self._loop.create_connection(lambda: _Wire(self), self.host, self.port)
        except OSError as exc:
            self._opening -= 1
            if self._pending:
                due = self._pending.popleft()
                self._record(type(exc).__name__, due, due)
        # else _connected has taken it over

    def _connected(self, wire: _Wire) -> None:
        self._opening -= 1
        self._open.add(wire)
        self._next_or_idle(wire, time.perf_counter())

    def _send(self, wire: _Wire, due: float, now: float) -> None:
        wire.scheduled = due
        wire.sent = now
        requests = self._requests
        i = self._next
        self._next = i + 1 if i + 1 < len(requests) else 0
        assert wire.transport is not None
        wire.transport.write(requests[i])

    def _next_or_idle(self, wire: _Wire, now: float) -> None:
        if self._pending:
            self._send(wire, self._pending.popleft(), now)
        elif now < self._closed_loop_until:
            self._outstanding += 1
            self._send(wire, now, now)
        else:
            self._idle.append(wire)

    def _record(self, kind: int | str, due: float, sent: float) -> None:
        now = time.perf_counter()
        self.latencies[kind].append(now - due)
        self.server_latencies[kind].append(now - sent)
        self._outstanding -= 1
        self._check_done()

    def _answered(self, wire: _Wire, status: int | str) -> None:
        if not wire.scheduled:  # nothing was asked on this wire: not an answer of ours
            self._failed(wire, "UnaskedAnswer")
            return
        now = time.perf_counter()
        self.latencies[status].append(now - wire.scheduled)
        self.server_latencies[status].append(now - wire.sent)
        wire.scheduled = 0.0
        self._outstanding -= 1
        self._next_or_idle(wire, now)
        if self._outstanding <= 0:
            self._check_done()

    def _failed(self, wire: _Wire, reason: str) -> None:
        """Record the request in progress on ``wire`` as failed by ``reason``; close it."""
        if wire.scheduled:
            self._record(reason, wire.scheduled, wire.sent)
            wire.scheduled = 0.0
        if wire.transport is not None:
            wire.transport.close()

    def _lost(self, wire: _Wire, exc: Exception | None) -> None:
        self._open.discard(wire)
        if wire in self._idle:
            self._idle.remove(wire)
        if wire.scheduled:  # a request in progress: it failed
            self._record("ConnectionLost", wire.scheduled, wire.sent)
            wire.scheduled = 0.0
        if self._pending and len(self._open) + self._opening < self._max:
            self._open_one()

    def _check_done(self) -> None:
        done = self._done
        if self._outstanding <= 0 and not self._scheduling and done is not None and not done.done():
            done.set_result(None)

    def _abandon(self) -> None:
        """Give up on the requests still unanswered (recorded as ``Timeout``)."""
        now = time.perf_counter()
        for due in self._pending:
            self.latencies["Timeout"].append(now - due)
        self._outstanding -= len(self._pending)
        self._pending.clear()
        for wire in list(self._open):
            if wire.scheduled:
                self.latencies["Timeout"].append(now - wire.scheduled)
                wire.scheduled = 0.0
                self._outstanding -= 1
                assert wire.transport is not None
                wire.transport.close()
        self._outstanding = 0
