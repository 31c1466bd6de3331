"""Overload and slow clients: shed what a process cannot serve soon, at once (issue 8, item 6).

Both guards live in :class:`GuardedHttpToolsProtocol`, uvicorn's httptools protocol
with what uvicorn lacks, per API process:

- **Admission control** (:class:`Admission`): at most ``max_requests_in_flight``
  requests are handled at a time. The next one is answered by the protocol itself,
  before the ASGI app (Litestar) is called: a canned, complete ``503`` problem+json
  with ``Retry-After`` and code ``overloaded`` (:func:`overloaded_response`), written
  once the request has been read, on a connection that stays open. It costs the
  parsing of the request and one write, a fraction of what reaching Litestar costs
  (docs/benchmarks.md, "Overload"), so a process at several times its capacity
  still sheds the excess quickly instead of queueing it in its event loop.
- **Slow clients**: a request (headers and body) must arrive within
  ``request_read_timeout_seconds`` of the connection opening or of the previous answer
  (slowloris), and at most ``max_connections`` are open; past that the connection that
  has been *waiting for its request* longest is closed to make room (a slow or idle one;
  the new one is refused 503 only when every open connection is in a request).

Health checks (``/health/``) and ``/metrics`` are never shed: an orchestrator must see
the process.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, ClassVar

import msgspec
from prometheus_client import Counter, Gauge
from uvicorn._types import ASGI3Application, ASGIReceiveCallable, ASGISendCallable, Scope
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from shared.settings import get_settings

EXEMPT_PREFIXES = (b"/health/", b"/metrics")

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
CONNECTIONS_CLOSED = Counter(
    "http_connections_closed_total",
    "Connections closed by the server's guards: read_timeout, evicted, refused",
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


def overloaded_response(retry_after_seconds: int, *, close: bool = False) -> bytes:
    """The whole ``503 overloaded`` HTTP/1.1 answer as bytes: the one definition of it.

    ``close`` adds ``connection: close`` (the server closes the connection after it).
    """
    lines = [b"HTTP/1.1 503 Service Unavailable"]
    lines += [name + b": " + value for name, value in overloaded_headers(retry_after_seconds)]
    if close:
        lines.append(b"connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + overloaded_body(retry_after_seconds)


def malformed_response(detail: str) -> bytes:
    """The whole ``400 invalid_request`` answer to bytes httptools cannot parse as HTTP
    (the same problem shape as every other refusal; the connection is closed after it)."""
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
    return head + b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)


class Admission:
    """How many requests one process handles at a time, and what the rest are answered.

    ``limit`` requests in flight (0: no limit, nothing is counted); the next is shed by
    :class:`GuardedHttpToolsProtocol` with :func:`overloaded_response`. A request is in
    flight from the moment its headers are read (admitted) until the app's call for it
    returns: answered, failed, cancelled, or the client gone (Litestar then finishes
    the handler anyway, so its work is still counted); a pipelined request that never
    started is released when its connection is lost.

    One instance per process: pickling (uvicorn's worker processes) gives each worker a
    fresh one with nothing in flight. ``http_requests_in_flight`` is exported in a
    single-process server; prometheus-client's multiprocess mode cannot read a value
    computed at scrape time, so several workers export only ``http_requests_shed_total``.
    """

    def __init__(self, app_name: str, limit: int, retry_after_seconds: int) -> None:
        self.app_name = app_name
        self.limit = limit
        self.retry_after_seconds = retry_after_seconds
        self.in_flight = 0
        self.answer = overloaded_response(retry_after_seconds)
        self.answer_closing = overloaded_response(retry_after_seconds, close=True)
        self.answer_head = self.answer[: self.answer.index(b"\r\n\r\n") + 4]  # HEAD: no body
        self.shed = SHED.labels(app_name)
        if limit > 0 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            IN_FLIGHT.labels(app_name).set_function(lambda: self.in_flight)
        self._headers = tuple(overloaded_headers(retry_after_seconds))  # immutable: shared
        self._body = overloaded_body(retry_after_seconds)

    def __reduce__(self) -> tuple[type[Admission], tuple[str, int, int]]:
        return (Admission, (self.app_name, self.limit, self.retry_after_seconds))

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
        await send({"type": "http.response.start", "status": 503, "headers": self._headers})
        await send({"type": "http.response.body", "body": self._body, "more_body": False})


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with admission control, a request read timeout and a
    connection cap.

    ``admission`` is the process's :class:`Admission` (None: no admission control;
    shared/infra/serving.py passes it with ``functools.partial``). The read timeout and
    connection cap come from the process's settings (``request_read_timeout_seconds``,
    ``max_connections``), read once: uvicorn's worker processes rebuild this class
    from its import path, so class attributes set by the parent would be lost.
    """

    # connections waiting for (the rest of) a request, oldest first; one event loop each
    _reading: ClassVar[dict[GuardedHttpToolsProtocol, None]] = {}
    _limits: ClassVar[tuple[float, int, bytes] | None] = None
    _read_timer: asyncio.TimerHandle | None = None

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
            transport.write(refusal)
            transport.close()
            return
        self._arm()

    def send_400_response(self, msg: str) -> None:
        """Bytes that are no HTTP request (two Content-Length headers, a bad chunk size, a
        NUL in a header, an unknown method) are answered 400 problem+json
        (``invalid_request``) like every other refusal, not uvicorn's text/plain line."""
        self.transport.write(malformed_response(msg))
        self.transport.close()

    # --- admission control --------------------------------------------------------------

    def on_headers_complete(self) -> None:
        admission = self._admission
        if admission is None:
            super().on_headers_complete()
            return
        answering = self.cycle is not None and not self.cycle.response_complete
        if admission.in_flight >= admission.limit and not self.url.startswith(EXEMPT_PREFIXES):
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
        if close:
            self.transport.write(admission.answer_closing)
            self.transport.close()
        elif self.parser.get_method() == b"HEAD":
            self.transport.write(admission.answer_head)
        else:
            self.transport.write(admission.answer)

    # --- slow clients -------------------------------------------------------------------

    def on_response_complete(self) -> None:
        pipelined = bool(self.pipeline)  # its next request has fully arrived already
        super().on_response_complete()
        if not pipelined and not self.transport.is_closing():
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._admission is not None and self.pipeline:
            # queued behind an answer that will never complete: never started, release
            self._admission.in_flight -= len(self.pipeline)
            self.pipeline.clear()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._read_timer = self.loop.call_later(self.limits()[0], self._read_timed_out)
        self._reading[self] = None

    def _disarm(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None
        self._reading.pop(self, None)

    def _read_timed_out(self) -> None:
        self._read_timer = None
        self._reading.pop(self, None)
        if not self.transport.is_closing():
            CONNECTIONS_CLOSED.labels("read_timeout").inc()
            self.transport.close()

    def _evict_a_waiting_connection(self) -> bool:
        """Close the connection that has waited longest for its request; False if none."""
        for victim in self._reading:
            if victim is not self:
                victim._disarm()
                CONNECTIONS_CLOSED.labels("evicted").inc()
                victim.transport.close()
                return True
        return False
