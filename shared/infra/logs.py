"""Structured logs (structlog) for every process: one event per line, a request id on each.

- ``SCOOTERS_ENVIRONMENT=production``: one JSON object per line.
- development: ``key=value`` pairs (logfmt), still one event per line.

Caller-controlled text (a path with ``%0A``, a header) can never start a new line: JSON
escapes control characters, and in development :func:`escape_control_characters`
escapes them before rendering. Tracebacks are rendered into the event (``exception``),
not printed below it. Standard-library loggers (uvicorn, asyncpg, ours that still use
``logging.getLogger``) go through the same renderer.

A client decides alone how often uvicorn warns about its requests ("Invalid HTTP request
received." for bytes that are no HTTP request, "Unsupported upgrade request."), so those
warnings pass :class:`ClientNoiseLimit`: ``log_noise_burst`` lines per
``log_noise_interval_seconds``, then one ``log lines suppressed`` line per kind with the
count; every one is counted in ``http_malformed_requests_total{kind}``. Likewise a
dependency that is down or answers nonsense makes the same line once per request (``dependency
unavailable``, ``nonsense answer``...): the events of :data:`REPEATED_FAILURES` pass
:class:`RepeatedFailureLimit` (same settings, per logger, event and ``service``), counted
in ``log_repeated_failure_events_total{event,service}``. Both are :class:`NoiseLimit`
filters: the first lines of a flood are written whole, with their request ids; what is
not limited (an ``unhandled error`` with its traceback) is never suppressed.

:func:`request_ids` is the ASGI middleware that gives each request its id: the caller's
``X-Request-ID`` when it is a short token of safe characters, else a new one; it is bound
to every log line of the request and echoed in the response's ``X-Request-ID``.
"""

from __future__ import annotations

import asyncio
import atexit
import itertools
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Hashable
from contextvars import ContextVar, Token
from typing import TYPE_CHECKING, Any

import structlog
from prometheus_client import Counter
from structlog.typing import EventDict, Processor, WrappedLogger

from shared.settings import Settings

if TYPE_CHECKING:  # not imported at run time: the worker and projector start faster
    from litestar import Litestar
    from litestar.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID_HEADER = b"x-request-id"
_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")
# C0, DEL, C1 (NEL, U+0085, among them) and the Unicode line and paragraph separators:
# every character that str.splitlines() or a log viewer takes for a line break
_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))} | {
    c: f"\\u{c:04x}" for c in (0x2028, 0x2029)
}
_configured: tuple[str, str] | None = None
_limits: list[NoiseLimit] = []  # installed by configure_logging: flushed at shutdown, exit
# a plain context variable, read only when a line is written: binding it costs a set and
# a reset per request (structlog's bind_contextvars measured about 6 times that)
_request_id: ContextVar[bytes | None] = ContextVar("request_id", default=None)
_PROCESS_ID = os.urandom(4).hex().encode()  # our ids: this, then a counter (16 hex)
_counter = itertools.count(1)


def add_request_id(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    """Add the id of the request being served, if any, to the event."""
    request_id = _request_id.get()
    if request_id is not None:
        event.setdefault("request_id", request_id.decode())
    return event


def escape_control_characters(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    """Escape control characters (``\\n``, ``\\r``, ESC, NEL...) and the Unicode line and
    paragraph separators in every string value: one event stays one line however its
    reader splits lines."""
    for key, value in event.items():
        if isinstance(value, str) and not value.isprintable():
            event[key] = value.translate(_CONTROL)
    return event


MALFORMED_REQUESTS = Counter(
    "http_malformed_requests_total",
    "Requests uvicorn warns about, logged or not (ClientNoiseLimit): invalid (bytes that are"
    " no HTTP request, answered 400) or upgrade (an Upgrade header: we serve no WebSocket)",
    ["kind"],
)
# uvicorn's per-request warnings (uvicorn/protocols/http/httptools_impl.py) -> kind
_NOISE = {
    "Invalid HTTP request received.": "invalid",
    "Unsupported upgrade request.": "upgrade",
}
# uvicorn's second line after "Unsupported upgrade request." when ws="none" (ours): advice
# to install a WebSocket library, wrong for us; the request is counted by the first line
_NO_WEBSOCKET = "No supported WebSocket library detected."


class NoiseLimit(logging.Filter):
    """A log filter that bounds lines that repeat once per request: of each kind (what
    :meth:`kind_of` says; None passes untouched), the first ``burst`` of every
    ``interval_seconds`` (a fixed window) are written, the rest counted and reported in
    one line per kind, ``log lines suppressed`` (``kind``, ``suppressed``,
    ``interval_seconds``; :meth:`report`), written when the window ends (a timer on the
    running event loop; without one, with the next limited record) or at :meth:`flush`
    (the app's shutdown, the process's exit). At most ``burst + 1`` lines per kind and
    window. The summary carries no ``request_id``: it speaks for many requests.

    Records are seen only when their level is enabled: the logger drops a disabled level
    before any filter. Used from the event loop's thread only, so it keeps no lock.
    """

    def __init__(
        self,
        burst: int,
        interval_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.burst = burst
        self.interval = interval_seconds
        self._clock = clock
        self._window_ends = -float("inf")
        self._written: dict[Hashable, int] = {}
        self._suppressed: dict[Hashable, int] = {}
        self._timer: asyncio.TimerHandle | None = None

    def kind_of(self, record: logging.LogRecord) -> Hashable | None:
        """The kind ``record`` is limited as; None: not limited (the default)."""
        return None

    def filter(self, record: logging.LogRecord) -> bool:
        kind = self.kind_of(record)
        return True if kind is None else self.admit(kind)

    def admit(self, kind: Hashable) -> bool:
        """Whether a line of ``kind`` is written now (else it is counted for the summary)."""
        now = self._clock()
        if now >= self._window_ends:
            self.flush()
            self._window_ends = now + self.interval
        written = self._written.get(kind, 0)
        if written < self.burst:
            self._written[kind] = written + 1
            return True
        self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
        if self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                pass  # no loop here: the next limited record after the window reports
            else:
                self._timer = loop.call_later(self._window_ends - now, self.flush)
        return False

    def flush(self) -> None:
        """Write the ``log lines suppressed`` lines of the window, and start a new one."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        suppressed, self._suppressed, self._written = self._suppressed, {}, {}
        self._window_ends = -float("inf")
        if not suppressed:
            return
        token = _request_id.set(None)  # not the id of the request that happens to flush
        try:
            for kind, count in suppressed.items():
                self.report(kind, count)
        finally:
            _request_id.reset(token)

    def report(self, kind: Hashable, count: int) -> None:
        """Write that ``count`` lines of ``kind`` were suppressed in the window."""
        raise NotImplementedError


class ClientNoiseLimit(NoiseLimit):
    """A :class:`NoiseLimit` for the ``uvicorn.error`` logger: the warnings a client can
    cause at will, one per request, of each kind of :data:`_NOISE`. Every such warning
    counts in :data:`MALFORMED_REQUESTS`; uvicorn's WebSocket advice after an upgrade
    warning is dropped. Other records pass untouched.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.msg
        if not isinstance(message, str):
            return True
        kind = _NOISE.get(message)
        if kind is None:
            return not message.startswith(_NO_WEBSOCKET)
        MALFORMED_REQUESTS.labels(kind).inc()
        return self.admit(kind)

    def report(self, kind: Hashable, count: int) -> None:
        logging.getLogger("uvicorn.error").warning(
            "log lines suppressed",
            extra={"kind": kind, "suppressed": count, "interval_seconds": self.interval},
        )


# Events written once per request (or per call) while a dependency is down, too slow or
# answering nonsense, by event name; ``service`` names the dependency. A new event of that
# sort goes here (and keeps a constant event name, its details in fields).
REPEATED_FAILURES = frozenset(
    {
        "dependency unavailable",  # shared/infra/problems.py: Postgres/Redis down -> 503
        "nonsense answer",  # command_api/external.py: out of bounds or undecodable
        "offer rate limit skipped",  # command_api/rate_limit.py: Redis did not answer
        "charge deferred to the worker",  # command_api/rides.py: payments did not answer
        "replica read failed, reading the primary",  # query_api/replica.py: per read
        "primary unreachable, reading the replica",  # query_api/replica.py: per check
        "primary busy, reading the primary",  # query_api/replica.py: per check
        "replica unusable, reading the primary",  # query_api/replica.py: per check
        "refills skipped",  # query_api/reads.py (INFO): Redis down
        "undecodable view, refilling",  # query_api/reads.py: Redis held nonsense
    }
) | frozenset(
    {
        # asyncpg's pool (a library's text): on each retry while Postgres is down, with
        # its traceback; tests/unit/test_logs.py checks asyncpg still writes it
        "Failed to restore the pool connection floor; retrying",
    }
)
REPEATED_FAILURE_EVENTS = Counter(
    "log_repeated_failure_events_total",
    "Events of a failure that repeats per request while a dependency is down or answers"
    " nonsense (shared.infra.logs.REPEATED_FAILURES), written or suppressed",
    ["event", "service"],
)


class RepeatedFailureLimit(NoiseLimit):
    """A :class:`NoiseLimit` for the handler every logger writes through (stdlib and
    structlog alike): the events of :data:`REPEATED_FAILURES`, of kind (logger, level,
    event, ``service``). Every one counts in :data:`REPEATED_FAILURE_EVENTS`; all other
    records pass untouched (an ``unhandled error`` is never limited). The summary is
    written by the event's logger at its level, with ``kind`` the event and ``service``.

    An event is recognised by its name: structlog's event (the record's message is
    structlog's event dict until it is rendered) or a standard-library record's message,
    with ``service`` from the event's fields or the record's ``extra``.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.msg
        if isinstance(message, dict):  # structlog's event dict, not yet rendered
            event = message.get("event")
            service = message.get("service")
        else:
            event = message
            service = getattr(record, "service", None)
        if not isinstance(event, str) or event not in REPEATED_FAILURES:
            return True
        service = "" if service is None else str(service)
        REPEATED_FAILURE_EVENTS.labels(event, service).inc()
        return self.admit((record.name, record.levelno, event, service))

    def report(self, kind: Hashable, count: int) -> None:
        assert isinstance(kind, tuple)
        name, level, event, service = kind
        logging.getLogger(name).log(
            level,
            "log lines suppressed",
            extra={
                "kind": event,
                "service": service,
                "suppressed": count,
                "interval_seconds": self.interval,
            },
        )


def configure_logging(settings: Settings) -> None:
    """Route structlog and the standard library through one renderer on stderr (idempotent)."""
    global _configured
    wanted = (settings.runtime.environment, settings.runtime.log_level.upper())
    if _configured == wanted:
        return
    production = settings.runtime.environment == "production"
    shared: list[Processor] = [
        add_request_id,
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: list[Processor] = (
        [structlog.processors.dict_tracebacks, structlog.processors.JSONRenderer()]
        if production
        else [
            structlog.processors.format_exc_info,
            escape_control_characters,
            structlog.processors.LogfmtRenderer(
                key_order=["timestamp", "level", "logger", "event", "request_id"],
                drop_missing=True,
            ),
        ]
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    level = logging.getLevelName(settings.runtime.log_level.upper())
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):  # theirs, same renderer
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    # lines that repeat once per request: a bounded number of lines, all counted. The
    # warnings each bad request causes, on uvicorn's logger; a dependency's failures, on
    # the handler that every logger writes through
    uvicorn_error = logging.getLogger("uvicorn.error")
    for stale in _limits:
        uvicorn_error.removeFilter(stale)
        atexit.unregister(stale.flush)
    burst, interval = settings.runtime.log_noise_burst, settings.runtime.log_noise_interval_seconds
    noise, failures = ClientNoiseLimit(burst, interval), RepeatedFailureLimit(burst, interval)
    uvicorn_error.addFilter(noise)
    handler.addFilter(failures)
    _limits[:] = [noise, failures]
    # a process that stops reports what it suppressed: at exit, and (uvicorn ends on
    # SIGTERM by raising it again, past atexit) when the app shuts down (with_request_ids)
    for limit in _limits:
        atexit.register(limit.flush)
    structlog.configure(
        processors=[
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        # filtered by level before any processor runs: a disabled level costs one call
        wrapper_class=structlog.make_filtering_bound_logger(level),
        cache_logger_on_first_use=True,
    )
    _configured = wanted


def get_logger(name: str) -> Any:
    """A structlog logger named ``name``: ``log.info("event", key=value, ...)``."""
    return structlog.get_logger(name)


def with_request_ids(app: Litestar) -> Litestar:
    """``app`` with :func:`request_ids` outermost, so that every answer has an id, even
    one Litestar gives before routing (no such route, method not allowed); and
    :func:`flush_client_noise` when it shuts down."""
    app.asgi_handler = request_ids(app.asgi_handler)
    app.on_shutdown.append(flush_client_noise)
    return app


def flush_client_noise() -> None:
    """Write what the :class:`NoiseLimit` filters suppressed so far (an app's shutdown hook)."""
    for limit in _limits:
        limit.flush()


def bind_request_id(scope: Scope) -> tuple[bytes, Token[bytes | None]]:
    """The request's id (the caller's ``X-Request-ID`` when safe, else a new one), bound
    to the log lines written until :func:`unbind_request_id` with the returned token.

    For code that answers requests itself and must echo the id (command_api/fast_path.py).
    """
    given = next((value for name, value in scope["headers"] if name == REQUEST_ID_HEADER), None)
    request_id = request_id_for(given)
    return request_id, _request_id.set(request_id)


def request_id_for(given: bytes | None) -> bytes:
    """The id of a request whose ``X-Request-ID`` header is ``given`` (None: absent),
    as :func:`bind_request_id` picks it, without binding it: ``given`` when it is 1-128
    of ``A-Z a-z 0-9 . _ : -``, else a new one (16 hex: this process, then a counter).

    For answers written without the app (shared/infra/admission.py: shed and malformed
    requests), which must carry an id like every other answer.
    """
    if given and _REQUEST_ID.fullmatch(given):
        return given
    return new_request_id()


def new_request_id() -> bytes:
    """A new request id (16 hex: this process, then a counter), as :func:`request_id_for`
    gives to a request without a safe ``X-Request-ID``."""
    return b"%s%08x" % (_PROCESS_ID, next(_counter))


def unbind_request_id(token: Token[bytes | None]) -> None:
    """End what :func:`bind_request_id` bound."""
    _request_id.reset(token)


def request_ids(app: ASGIApp) -> ASGIApp:
    """ASGI middleware: bind a request id to the request's log lines and echo it back."""

    async def with_request_id(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # type: ignore[comparison-overlap]
            await app(scope, receive, send)
            return
        request_id, token = bind_request_id(scope)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), (REQUEST_ID_HEADER, request_id)]
            await send(message)

        try:
            await app(scope, receive, send_with_id)
        finally:
            unbind_request_id(token)

    return with_request_id
