"""Overload and slow clients: shed what a process cannot serve soon, at once (issue 8, item 6).

Two guards, both per API process:

- :func:`admission_control`, a Litestar middleware: at most ``max_requests_in_flight``
  requests are handled at a time; the next one is answered ``503`` problem+json with
  ``Retry-After`` and code ``overloaded`` right away, for a few microseconds, instead of
  queueing in the event loop where every admitted request would wait behind it.
- :class:`GuardedHttpToolsProtocol`, uvicorn's httptools protocol with two limits
  uvicorn lacks: a request (headers and body) must arrive within
  ``request_read_timeout_seconds`` of the connection opening or of the previous answer
  (slowloris), and at most ``max_connections`` are open; past that the connection that
  has been *waiting for its request* longest is closed to make room (a slow or idle one;
  the new one is refused 503 only when every open connection is in a request).

Health checks and ``/metrics`` are never shed: an orchestrator must see the process.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import msgspec
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, Scope, Send
from prometheus_client import Counter
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from shared.settings import get_settings

EXEMPT_PREFIXES = ("/health/", "/metrics")

SHED = Counter(
    "http_requests_shed_total",
    "Requests answered 503 overloaded without being handled (admission control)",
    ["app"],
)
CONNECTIONS_CLOSED = Counter(
    "http_connections_closed_total",
    "Connections closed by the server's guards: read_timeout, evicted, refused",
    ["reason"],
)


def overloaded_body(retry_after_seconds: int) -> bytes:
    """The problem-details body of a shed request (same shape as shared.problems)."""
    return msgspec.json.encode(
        {
            "type": "https://superscooters.dev/problems/overloaded",
            "title": "Overloaded",
            "status": 503,
            "detail": f"too many requests in progress; retry in {retry_after_seconds} s",
            "code": "overloaded",
        }
    )


def admission_control(app_name: str, max_in_flight: int, retry_after_seconds: int) -> Any:
    """Litestar middleware factory: admit at most ``max_in_flight`` requests at a time
    (0 admits all); answer the rest 503 ``overloaded`` with ``Retry-After`` at once."""
    in_flight = 0  # one counter for every route of this app (the factory runs per route)
    body = overloaded_body(retry_after_seconds)
    start = {
        "type": "http.response.start",
        "status": 503,
        "headers": [
            (b"content-type", b"application/problem+json"),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", str(retry_after_seconds).encode()),
        ],
    }
    finish = {"type": "http.response.body", "body": body}
    shed = SHED.labels(app_name)

    def middleware(app: ASGIApp) -> ASGIApp:
        async def admit(scope: Scope, receive: Receive, send: Send) -> None:
            nonlocal in_flight
            if (
                max_in_flight <= 0
                or scope["type"] != ScopeType.HTTP
                or scope["path"].startswith(EXEMPT_PREFIXES)
            ):
                await app(scope, receive, send)
                return
            if in_flight >= max_in_flight:
                shed.inc()
                await send(start)  # type: ignore[arg-type]
                await send(finish)  # type: ignore[arg-type]
                return
            in_flight += 1
            try:
                await app(scope, receive, send)
            finally:
                in_flight -= 1

        return admit

    return middleware


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a request read timeout and a connection cap.

    Limits come from the process's settings (``request_read_timeout_seconds``,
    ``max_connections``), read once: uvicorn's worker processes rebuild this class
    from its import path, so class attributes set by the parent would be lost.
    """

    # connections waiting for (the rest of) a request, oldest first; one event loop each
    _reading: ClassVar[dict[GuardedHttpToolsProtocol, None]] = {}
    _limits: ClassVar[tuple[float, int, bytes] | None] = None
    _read_timer: asyncio.TimerHandle | None = None

    @classmethod
    def limits(cls) -> tuple[float, int, bytes]:
        """(read timeout in seconds, max connections, the 503 refusal as raw bytes)."""
        if cls._limits is None:
            serving = get_settings().serving
            body = overloaded_body(serving.retry_after_seconds)
            refusal = (
                b"HTTP/1.1 503 Service Unavailable\r\n"
                b"content-type: application/problem+json\r\n"
                b"retry-after: %d\r\nconnection: close\r\ncontent-length: %d\r\n\r\n%s"
                % (serving.retry_after_seconds, len(body), body)
            )
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

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        pipelined = bool(self.pipeline)  # its next request has fully arrived already
        super().on_response_complete()
        if not pipelined and not self.transport.is_closing():
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
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
