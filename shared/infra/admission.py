"""Overload and slow clients: shed what a process cannot serve soon, at once (issue 8, item 6).

Both guards live in :class:`GuardedHttpToolsProtocol`, uvicorn's httptools protocol
with what uvicorn lacks, per API process:

- **Admission control** (:class:`Admission`): at most ``max_requests_in_flight``
  requests are handled at a time, fewer while the event loop falls behind (the
  adaptive limit, ``*_admission_lag_target_ms``). The next one is answered by the
  protocol itself, before the ASGI app (Litestar) is called: a canned, complete
  ``503`` problem+json with ``Retry-After``, code ``overloaded`` and the request's
  ``X-Request-ID`` (:func:`overloaded_response`), written once the request has been
  read, on a connection that stays open. A read of whole requests without a body costs one
  write, no parsing; the rest cost the parsing and one write: a fraction of what
  reaching Litestar costs (docs/benchmarks.md, "Overload" and "i8edge"), so a process
  at several times its capacity still sheds the excess quickly instead of queueing it.
- **Slow clients**: a request (headers and body) must arrive within
  ``request_read_timeout_seconds`` of the connection opening or of the previous answer
  (slowloris), an idle one is closed after uvicorn's ``timeout_keep_alive``, and at most
  ``max_connections`` are open; past that the connection that has been *waiting for
  its request* longest is closed to make room (a slow or idle one; the new one is
  refused 503 only when every open connection is in a request).

Health checks (``/health/``) and ``/metrics`` are never shed: an orchestrator must see
the process.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from typing import Any, ClassVar

import httptools
import msgspec
from prometheus_client import Counter, Gauge
from uvicorn._types import ASGI3Application, ASGIReceiveCallable, ASGISendCallable, Scope
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from shared.infra.logs import REQUEST_ID_HEADER, new_request_id, request_id_for
from shared.settings import get_settings

EXEMPT_PREFIXES = (b"/health/", b"/metrics")
_REQUEST_ID_LINE = b"\r\n" + REQUEST_ID_HEADER + b":"
WINDOW_SECONDS = 0.02  # the adaptive limit's step (Admission.adapt)

SHED = Counter(
    "http_requests_shed_total",
    "Requests answered 503 overloaded by the HTTP protocol, without calling the app",
    ["app"],
)
IN_FLIGHT = Gauge(
    "http_requests_in_flight",
    "Requests this process is handling now (admission control); one process only",
    ["app"],
)
ADMITTED_LIMIT = Gauge(
    "http_requests_admitted_limit",
    "Requests this process admits at most now (adaptive limit, <= the setting); one process",
    ["app"],
)
CONNECTIONS_CLOSED = Counter(
    "http_connections_closed_total",
    "Connections closed by the server's guards: read_timeout, idle, evicted, refused",
    ["reason"],
)


def overloaded_body(retry_after_seconds: int) -> bytes:
    """The problem-details body of a shed request (same shape as shared.infra.problems)."""
    return msgspec.json.encode(
        {
            "type": "https://superscooters.dev/problems/overloaded",
            "title": "Overloaded",
            "status": 503,
            "detail": f"too many requests in progress; retry in {retry_after_seconds} s",
            "code": "overloaded",
        }
    )


def overloaded_headers(retry_after_seconds: int) -> list[tuple[bytes, bytes]]:
    """The headers of the ``503 overloaded`` answer, for a body of :func:`overloaded_body`."""
    body = overloaded_body(retry_after_seconds)
    return [
        (b"content-type", b"application/problem+json"),
        (b"content-length", b"%d" % len(body)),
        (b"retry-after", b"%d" % retry_after_seconds),
    ]


def overloaded_response(
    retry_after_seconds: int, *, close: bool = False, request_id: bytes | None = None
) -> bytes:
    """The whole ``503 overloaded`` HTTP/1.1 answer as bytes: the one definition of it.

    ``close`` adds ``connection: close`` (the server closes the connection after it);
    ``request_id`` an ``x-request-id`` header (the protocol always gives one: the
    caller's ``X-Request-ID`` when safe, else a new one, as for every other answer).
    """
    lines = [b"HTTP/1.1 503 Service Unavailable"]
    lines += [name + b": " + value for name, value in overloaded_headers(retry_after_seconds)]
    if close:
        lines.append(b"connection: close")
    answer = b"\r\n".join(lines) + b"\r\n\r\n" + overloaded_body(retry_after_seconds)
    return answer if request_id is None else with_request_id(answer, request_id)


def with_request_id(answer: bytes, request_id: bytes) -> bytes:
    """``answer`` (a whole HTTP/1.1 answer without an id) with ``x-request-id: request_id``
    as its last header."""
    end = answer.index(b"\r\n\r\n")
    return answer[:end] + _REQUEST_ID_LINE + b" " + request_id + answer[end:]


def malformed_response(detail: str, request_id: bytes | None = None) -> bytes:
    """The whole ``400 invalid_request`` answer to bytes httptools cannot parse as HTTP
    (the same problem shape as every other refusal; the connection is closed after it).
    ``request_id``: its ``x-request-id`` header (None: none)."""
    body = msgspec.json.encode(
        {
            "type": "https://superscooters.dev/problems/invalid_request",
            "title": "Invalid request",
            "status": 400,
            "detail": detail,
            "code": "invalid_request",
        }
    )
    head = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/problem+json\r\n"
    answer = head + b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
    return answer if request_id is None else with_request_id(answer, request_id)


def _given_request_id(data: bytes, lowered: bytes, start: int, end: int) -> bytes:
    """The id of the request whose head is ``data[start:end]`` (``lowered``: ``data``
    lower-cased): its ``X-Request-ID`` when safe, else a new one."""
    at = lowered.find(_REQUEST_ID_LINE, start, end)
    if at < 0:
        return new_request_id()
    at += len(_REQUEST_ID_LINE)
    return request_id_for(data[at : data.index(b"\r\n", at)].strip(b" \t"))


class _Unheard:
    """The protocol of a checking parser: no callbacks, so httptools parses in C only."""

    __slots__ = ()


_UNHEARD = _Unheard()
_REFUSED = (httptools.HttpParserError, httptools.HttpParserUpgrade)


class Admission:
    """How many requests one process handles at a time, and what the rest are answered.

    ``limit`` requests in flight at most (0: no limit, nothing is counted); the next is
    shed by :class:`GuardedHttpToolsProtocol` with :func:`overloaded_response`. A request
    is in flight from the moment its headers are read (admitted) until the app's call
    for it returns: answered, failed, cancelled, or the client gone (Litestar then
    finishes the handler anyway, so its work is still counted); a pipelined request
    that never started is released when its connection is lost.

    **Adaptive limit** (``lag_target_seconds`` > 0). A process offered several times
    what it can serve cannot also read and shed the excess while it keeps ``limit``
    requests in flight: serving them takes the whole core, the event loop falls behind,
    and every request, admitted or shed, waits in socket buffers and client queues. So
    the number admitted, :attr:`allowed`, follows the event loop's lag: the CPU time of
    one turn of the loop (the admitted requests' steps, then reading and shedding what
    has arrived), which is how long a request that arrives now waits before it is read
    on a core of its own. CPU time, not wall time: on a shared machine a turn also
    waits for the core, and shedding more does not shorten that wait, it only serves
    less. Turns are timed while requests arrive (:meth:`note_read`, two callbacks and
    two CPU-clock reads per timed turn); every :data:`WINDOW_SECONDS` (and at least two
    turns), if even the shortest turn of the window took longer than
    ``lag_target_seconds`` (a standing queue, not one slow turn: CoDel's test),
    :attr:`allowed` halves, down to 1, else it grows by a quarter (at least 2) back to
    ``limit``: AIMD, as adaptive concurrency limiters do. A loop that keeps up admits
    ``limit``; one that falls behind admits fewer and sheds more, which costs it a
    fifth of serving.

    One instance per process: pickling (uvicorn's worker processes) gives each worker a
    fresh one with nothing in flight. ``http_requests_in_flight`` and
    ``http_requests_admitted_limit`` are exported in a single-process server;
    prometheus-client's multiprocess mode cannot read a value computed at scrape time,
    so several workers export only ``http_requests_shed_total``.
    """

    def __init__(
        self, app_name: str, limit: int, retry_after_seconds: int, lag_target_seconds: float = 0.0
    ) -> None:
        self.app_name = app_name
        self.limit = limit
        self.retry_after_seconds = retry_after_seconds
        self.lag_target_seconds = lag_target_seconds
        self.in_flight = 0
        self.allowed = limit  # admitted at most now: ``limit``, or less while the loop lags
        # the 503 in two parts, the request's id between them (one per answer)
        answer = overloaded_response(retry_after_seconds)
        end = answer.index(b"\r\n\r\n")
        self.answer_start = answer[:end] + _REQUEST_ID_LINE + b" "
        self.answer_end = answer[end:]  # blank line and body
        self.answer_end_head = b"\r\n\r\n"  # HEAD: no body
        self.answer_closing = overloaded_response(retry_after_seconds, close=True)
        self.shed = SHED.labels(app_name)
        if limit > 0 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            IN_FLIGHT.labels(app_name).set_function(lambda: self.in_flight)
            ADMITTED_LIMIT.labels(app_name).set_function(lambda: self.allowed)
        self._headers = tuple(overloaded_headers(retry_after_seconds))  # immutable: shared
        self._body = overloaded_body(retry_after_seconds)
        self.timing_turn = False  # a turn of the loop is being timed
        self._turn_started = 0.0
        self._window_started = 0.0
        self._window_shortest = math.inf
        self._window_turns = 0

    def __reduce__(self) -> tuple[type[Admission], tuple[str, int, int, float]]:
        return (
            Admission,
            (self.app_name, self.limit, self.retry_after_seconds, self.lag_target_seconds),
        )

    # --- the adaptive limit ---------------------------------------------------------------

    def note_read(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bytes of a request arrived: time the loop's next turn, unless one is timed."""
        if self.timing_turn or self.lag_target_seconds <= 0:
            return
        self.timing_turn = True
        loop.call_soon(self._turn_starts, loop)

    def _turn_starts(self, loop: asyncio.AbstractEventLoop) -> None:
        # runs among the callbacks of one turn; the one it schedules runs in the next
        # turn, after the loop has polled and read: the time between is one whole turn
        self._turn_started = time.thread_time()
        loop.call_soon(self._turn_ends)

    def _turn_ends(self) -> None:
        turn = time.thread_time() - self._turn_started
        self.timing_turn = False
        if turn < self._window_shortest:
            self._window_shortest = turn
        self._window_turns += 1
        now = time.perf_counter()
        if now - self._window_started >= WINDOW_SECONDS and self._window_turns >= 2:
            self.adapt(self._window_shortest)
            self._window_started = now
            self._window_shortest = math.inf
            self._window_turns = 0

    def adapt(self, shortest_turn_seconds: float) -> None:
        """One window's step of :attr:`allowed`, given its shortest turn of the loop."""
        if shortest_turn_seconds > self.lag_target_seconds:
            self.allowed = max(1, self.allowed // 2)
        elif self.allowed < self.limit:
            self.allowed = min(self.limit, self.allowed + max(2, self.allowed // 4))

    # --- answering --------------------------------------------------------------------------

    def counted(self, app: ASGI3Application) -> ASGI3Application:
        """``app`` releasing its place in flight when its call for a request returns."""

        async def release_after(
            scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
        ) -> None:
            try:
                await app(scope, receive, send)
            finally:
                self.in_flight -= 1

        return release_after

    async def shed_app(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        """The same answer through ASGI, for a pipelined request shed behind another
        one's answer (the protocol cannot write its own bytes in between)."""
        self.shed.inc()
        assert scope["type"] == "http"  # the protocol sheds HTTP requests only
        given = next((v for n, v in scope["headers"] if n == REQUEST_ID_HEADER), None)
        headers = [*self._headers, (REQUEST_ID_HEADER, request_id_for(given))]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": self._body, "more_body": False})


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with admission control, a request read timeout and a
    connection cap.

    ``admission`` is the process's :class:`Admission` (None: no admission control;
    shared/infra/serving.py passes it with ``functools.partial``). The read timeout and
    connection cap come from the process's settings (``request_read_timeout_seconds``,
    ``max_connections``), read once: uvicorn's worker processes rebuild this class
    from its import path, so class attributes set by the parent would be lost.

    **Shedding without the parser.** While the process admits no more, a read that holds
    only whole requests without a body (the usual GET) on an otherwise quiet
    connection is answered by :meth:`_shed_at_once`: one write of one 503 per request,
    without the httptools callbacks, the ASGI scope or any timer. Anything else (a
    body, ``Connection: close``, HTTP/1.0, a health check, a partial request, a request
    being answered) goes through the parser as before. So does a read httptools refuses
    (an unknown method, NUL or a bare line feed in a header, a line that is no header),
    which it answers 400 ``invalid_request`` under any load, as without the shortcut: a
    503 would tell the client to send the same bytes again.

    **Timeouts without a timer per request.** uvicorn arms a keep-alive timer after
    every answer, and the read timeout would need another; two timer handles per request
    cost as much as the rest of a shed answer. Instead the connections waiting for a
    request sit in :attr:`_reading` in the order they began to wait, and one sweep per
    event loop (every :meth:`_sweep_every` seconds) closes those that waited too long:
    ``timeout_keep_alive`` (uvicorn's setting) when no byte of the next request came,
    ``request_read_timeout_seconds`` in any case. A timeout takes effect up to one
    sweep period late.
    """

    # connections waiting for (the rest of) a request, in the order they began to wait
    _reading: ClassVar[dict[GuardedHttpToolsProtocol, None]] = {}
    _sweeping: ClassVar[asyncio.AbstractEventLoop | None] = None  # the loop swept now
    _limits: ClassVar[tuple[float, int, bytes] | None] = None
    _waiting_since = 0.0  # loop.time() when it began to wait for its request
    _got_bytes = False  # a byte of that request has come

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        admission: Admission | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._admission = admission if admission is not None and admission.limit > 0 else None
        self._counted_app = (
            self.app if self._admission is None else self._admission.counted(self.app)
        )
        self._shedding = False  # the request being read is answered 503 once it is complete
        self._checker: Any = None  # httptools' parser without callbacks (_shed_at_once)
        self._in_message = False  # the parser is inside a request (headers or body)

    @classmethod
    def limits(cls) -> tuple[float, int, bytes]:
        """(read timeout in seconds, max connections, the 503 refusal as raw bytes)."""
        if cls._limits is None:
            serving = get_settings().serving
            refusal = overloaded_response(serving.retry_after_seconds, close=True)
            cls._limits = (serving.request_read_timeout_seconds, serving.max_connections, refusal)
        return cls._limits

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        _, max_connections, refusal = self.limits()
        if len(self.connections) > max_connections and not self._evict_a_waiting_connection():
            CONNECTIONS_CLOSED.labels("refused").inc()
            transport.write(with_request_id(refusal, request_id_for(None)))
            transport.close()
            return
        self._arm()

    def send_400_response(self, msg: str) -> None:
        """Bytes that are no HTTP request (two Content-Length headers, a bad chunk size, a
        NUL in a header, an unknown method) are answered 400 problem+json
        (``invalid_request``) like every other refusal, not uvicorn's text/plain line,
        with a new ``x-request-id`` (the request's own cannot be trusted here)."""
        self.transport.write(malformed_response(msg, request_id_for(None)))
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        admission = self._admission
        if (
            admission is not None
            and admission.in_flight >= admission.allowed
            and not self._in_message
            and data.endswith(b"\r\n\r\n")
            and (self.cycle is None or self.cycle.response_complete)
            and self._shed_at_once(admission, data)
        ):
            if not admission.timing_turn:
                admission.note_read(self.loop)
            return
        if admission is not None and not admission.timing_turn:
            admission.note_read(self.loop)
        self._got_bytes = True
        super().data_received(data)

    # --- admission control --------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_message = True
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        admission = self._admission
        if admission is None:
            super().on_headers_complete()
            return
        answering = self.cycle is not None and not self.cycle.response_complete
        if admission.in_flight >= admission.allowed and not self.url.startswith(EXEMPT_PREFIXES):
            if not answering:  # nothing else is written on this connection now
                self._shed_when_read()
                return
            # pipelined behind an answer in progress: the same 503, through a cycle
            self.app = admission.shed_app
        cycle = self.cycle
        try:
            super().on_headers_complete()
        finally:
            self.app = self._counted_app
        if self.cycle is not cycle:  # a request admitted (or queued behind another one)
            admission.in_flight += 1

    def _start_asgi_task(self, cycle: Any, app: ASGI3Application) -> None:
        # every cycle started was counted in on_headers_complete: release it when done
        if self._admission is not None and app is not self._counted_app:
            app = self._admission.counted(app)
        super()._start_asgi_task(cycle, app)

    def _shed_at_once(self, admission: Admission, data: bytes) -> bool:
        """Answer every request in ``data`` 503 in one write, if ``data`` is nothing but
        whole keep-alive HTTP/1.1 requests without a body, none of them exempt, each
        one the parser would take; else False (nothing done: the parser takes ``data``
        and answers what it refuses 400).

        "Would take" is httptools' own verdict: the read is fed to a second parser of the
        connection that has no callbacks (llhttp in C, about 1 ns a byte; the callbacks
        into Python are what the parser-free path saves). Both parsers stay between
        requests: this one is handed whole requests without a body only.
        """
        lowered = data.lower()
        if b"content-length" in lowered or b"transfer-encoding" in lowered or b"close" in lowered:
            return False
        heads = data.split(b"\r\n\r\n")
        heads.pop()  # the empty rest after the last request
        ends = []  # what follows each answer's request id: the rest of its head and body
        for head in heads:
            eol = head.find(b"\r\n")
            line = head if eol < 0 else head[:eol]
            method, _, rest = line.partition(b" ")
            target, _, version = rest.partition(b" ")
            if version != b"HTTP/1.1" or target.startswith(EXEMPT_PREFIXES):
                return False
            ends.append(admission.answer_end_head if method == b"HEAD" else admission.answer_end)
        checker = self._checker
        if checker is None:
            checker = self._checker = httptools.HttpRequestParser(_UNHEARD)
        try:
            checker.feed_data(data)
        except _REFUSED:  # the parser answers it (400); this checker's state is lost
            self._checker = None
            return False
        start = admission.answer_start
        if _REQUEST_ID_LINE not in lowered:  # the usual: no request brings its id
            if len(ends) == 1:
                self.transport.write(start + new_request_id() + ends[0])
            else:
                self.transport.write(b"".join([start + new_request_id() + end for end in ends]))
        else:
            answers = []
            at = 0  # where the head begins in data
            for head, end in zip(heads, ends, strict=False):
                request_id = _given_request_id(data, lowered, at, at + len(head))
                answers.append(start + request_id + end)
                at += len(head) + 4
            self.transport.write(b"".join(answers))
        admission.shed.inc(len(heads))
        self.server_state.total_requests += len(heads)
        self._arm()  # waiting for the next request from now
        return True

    def _shed_when_read(self) -> None:
        """Answer the request being read 503 without the app; at once (and close) when
        the client waits for ``100 Continue`` before its body, else once it is read."""
        self._shedding = True
        if self.expect_100_continue:
            self._write_shed(close=True)

    def on_body(self, body: bytes) -> None:
        if not self._shedding:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._in_message = False
        self._disarm()
        if not self._shedding:
            super().on_message_complete()
            return
        self._shedding = False
        if self.transport.is_closing():  # answered already (100-continue) or closed
            return
        self._write_shed(close=not self.parser.should_keep_alive())
        self.on_response_complete()  # keep-alive and read timers, like any answer

    def _write_shed(self, *, close: bool) -> None:
        admission = self._admission
        assert admission is not None
        admission.shed.inc()
        given = next((v for n, v in self.headers if n == REQUEST_ID_HEADER), None)
        request_id = request_id_for(given)
        if close:
            self.transport.write(with_request_id(admission.answer_closing, request_id))
            self.transport.close()
            return
        head_only = self.parser.get_method() == b"HEAD"
        end = admission.answer_end_head if head_only else admission.answer_end
        self.transport.write(b"".join((admission.answer_start, request_id, end)))

    # --- slow clients -------------------------------------------------------------------

    def on_response_complete(self) -> None:
        # uvicorn's, without its keep-alive timer (the sweep times idle connections out)
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:  # its next request has fully arrived already
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        else:
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._admission is not None and self.pipeline:
            # queued behind an answer that will never complete: never started, release
            self._admission.in_flight -= len(self.pipeline)
            self.pipeline.clear()
        super().connection_lost(exc)

    def _arm(self) -> None:
        """From now on this connection waits for its next request."""
        reading = self._reading
        reading.pop(self, None)
        reading[self] = None
        self._waiting_since = self.loop.time()
        self._got_bytes = False
        if GuardedHttpToolsProtocol._sweeping is not self.loop:
            GuardedHttpToolsProtocol._sweeping = self.loop
            self.loop.call_later(self._sweep_every(), self._sweep, self.loop)

    def _disarm(self) -> None:
        self._reading.pop(self, None)

    def _sweep_every(self) -> float:
        """Seconds between sweeps: a quarter of the shortest timeout, 50 ms to 1 s."""
        shortest = min(self.limits()[0], self.timeout_keep_alive)
        return min(1.0, max(0.05, shortest / 4))

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        """Close the connections that have waited too long for their request."""
        if GuardedHttpToolsProtocol._sweeping is not loop:
            return
        if not self._reading or loop.is_closed():
            GuardedHttpToolsProtocol._sweeping = None  # the next _arm starts it again
            return
        now = loop.time()
        read_timeout = self.limits()[0]
        shortest = min(read_timeout, self.timeout_keep_alive)
        expired = []
        for waiting in self._reading:
            waited = now - waiting._waiting_since
            if waited <= shortest:
                break  # the rest began to wait later still
            if waited > read_timeout or not waiting._got_bytes:
                expired.append(waiting)
        for waiting in expired:
            waiting._disarm()
            if not waiting.transport.is_closing():
                CONNECTIONS_CLOSED.labels("read_timeout" if waiting._got_bytes else "idle").inc()
                waiting.transport.close()
        loop.call_later(self._sweep_every(), self._sweep, loop)

    def _evict_a_waiting_connection(self) -> bool:
        """Close the connection that has waited longest for its request; False if none."""
        for victim in self._reading:
            if victim is not self:
                victim._disarm()
                CONNECTIONS_CLOSED.labels("evicted").inc()
                victim.transport.close()
                return True
        return False
