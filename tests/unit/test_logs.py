"""Logs: one event per line in both modes, whatever text the caller controls (issue 8)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg.pool
import pytest

from shared.infra.logs import (
    MALFORMED_REQUESTS,
    REPEATED_FAILURE_EVENTS,
    REPEATED_FAILURES,
    REQUEST_ID_HEADER,
    ClientNoiseLimit,
    RepeatedFailureLimit,
    bind_request_id,
    request_id_for,
    unbind_request_id,
)
from tests.conftest import ROOT

EMIT = """
import logging
from shared.infra.logs import configure_logging, get_logger
from shared.settings import Settings
configure_logging(Settings().replace(runtime={{"environment": {env!r}, "log_level": "INFO"}}))
get_logger("t").info("evil", path="/a\\nforged: line\\r\\x1b[31m")
logging.getLogger("std").warning("stdlib %s", "b\\nforged")
try:
    raise ValueError("boom\\nforged")
except ValueError:
    get_logger("t").exception("failed")
"""


def emit(env: str) -> list[str]:
    run = subprocess.run(
        [sys.executable, "-c", EMIT.format(env=env)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return run.stderr.splitlines()


@pytest.mark.parametrize("env", ["production", "development"])
def test_three_events_are_three_lines(env: str) -> None:
    lines = emit(env)
    assert len(lines) == 3, lines
    assert not any(line.startswith("forged") for line in lines)


def test_production_lines_are_json_with_the_text_intact() -> None:
    events = [json.loads(line) for line in emit("production")]
    assert events[0]["event"] == "evil"
    assert events[0]["path"] == "/a\nforged: line\r\x1b[31m"
    assert events[1]["event"] == "stdlib b\nforged"
    assert events[1]["logger"] == "std"
    assert events[2]["level"] == "error"
    assert "ValueError" in json.dumps(events[2]["exception"])


def test_development_lines_escape_control_characters() -> None:
    evil, stdlib, failed = emit("development")
    assert "event=evil" in evil
    assert "\\x0a" in evil
    assert "\\x1b" in evil
    assert "\\x0a" in stdlib
    assert "ValueError" in failed


UNICODE_BREAKS = """
from shared.infra.logs import configure_logging, get_logger
from shared.settings import Settings
configure_logging(Settings().replace(runtime={{"environment": {env!r}, "log_level": "INFO"}}))
get_logger("t").info("evil", path={path!r})
"""


@pytest.mark.parametrize("env", ["production", "development"])
@pytest.mark.parametrize("separator", ["\x85", "\u2028", "\u2029", "\x0b", "\x1e"])
def test_unicode_line_breaks_stay_in_their_line(env: str, separator: str) -> None:
    """break8: development lines wrote NEL and U+2028/U+2029 as they were, so a reader
    splitting lines the Unicode way (``str.splitlines``, log viewers) saw a forged line."""
    path = f"/orders/x{separator}forged: line"
    run = subprocess.run(
        [sys.executable, "-c", UNICODE_BREAKS.format(env=env, path=path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    lines = run.stderr.splitlines()
    assert len(lines) == 1, lines
    if env == "production":
        assert json.loads(lines[0])["path"] == path


def test_a_request_id_is_the_callers_only_when_it_is_wholly_safe() -> None:
    """Every path that picks a request id (the middleware, the fast path, the shed and
    malformed answers) keeps the caller's X-Request-ID only when all of it is 1-128 of
    ``A-Z a-z 0-9 . _ : -``; a trailing line break or anything else gets a new one."""
    kept = b"abc-1.2:3_x"
    assert request_id_for(kept) == kept
    scope: Any = {"type": "http", "headers": [(REQUEST_ID_HEADER, kept)]}
    bound, token = bind_request_id(scope)
    unbind_request_id(token)
    assert bound == kept
    for unsafe in (b"abc\n", b"a b", b"x" * 129, b"", None):
        new = request_id_for(unsafe)
        assert re.fullmatch(rb"[0-9a-f]{16}", new), (unsafe, new)
        if unsafe is not None:
            scope = {"type": "http", "headers": [(REQUEST_ID_HEADER, unsafe)]}
            bound, token = bind_request_id(scope)
            unbind_request_id(token)
            assert re.fullmatch(rb"[0-9a-f]{16}", bound), unsafe
    assert request_id_for(None) != request_id_for(None)  # a new one each time


INVALID = "Invalid HTTP request received."  # uvicorn's words (httptools_impl.py)
UPGRADE = "Unsupported upgrade request."
NO_WEBSOCKET = "No supported WebSocket library detected. Please use pip install ..."


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def record(message: str, name: str = "uvicorn.error") -> logging.LogRecord:
    return logging.LogRecord(name, logging.WARNING, __file__, 1, message, None, None)


class Collect(logging.Handler):
    """The records the ``uvicorn.error`` logger writes (the filter's own summary lines)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def written() -> Any:
    collect = Collect()
    logger = logging.getLogger("uvicorn.error")
    level = logger.level
    logger.setLevel(logging.WARNING)
    logger.addHandler(collect)
    yield collect.records
    logger.removeHandler(collect)
    logger.setLevel(level)


def suppressed_lines(records: list[logging.LogRecord]) -> dict[str, int]:
    return {
        r.__dict__["kind"]: r.__dict__["suppressed"]
        for r in records
        if r.getMessage() == "log lines suppressed"
    }


def test_client_noise_is_bounded_per_window_and_every_request_counted(
    written: list[logging.LogRecord],
) -> None:
    """``burst`` lines of each kind per window; the rest are one summary line when the
    window has passed; all are counted; other records pass; the WebSocket advice never."""
    clock = Clock()
    noise = ClientNoiseLimit(3, 60.0, clock)
    before = {k: MALFORMED_REQUESTS.labels(k)._value.get() for k in ("invalid", "upgrade")}
    passed = [noise.filter(record(INVALID)) for _ in range(100)]
    assert passed == [True] * 3 + [False] * 97
    assert [noise.filter(record(UPGRADE)) for _ in range(5)] == [True] * 3 + [False] * 2
    assert not noise.filter(record(NO_WEBSOCKET))
    assert noise.filter(record("Exception in ASGI application\n"))  # not noise: passes
    assert noise.filter(record("Invalid HTTP request received. (not uvicorn's)", "x"))
    assert written == []  # no summary before the window ends (no event loop here)
    clock.now += 60.0
    assert noise.filter(record(INVALID))  # a new window: written, and the old one reported
    assert suppressed_lines(written) == {"invalid": 97, "upgrade": 2}
    assert written[0].__dict__["interval_seconds"] == 60.0
    after = {k: MALFORMED_REQUESTS.labels(k)._value.get() for k in ("invalid", "upgrade")}
    assert after["invalid"] - before["invalid"] == 101
    assert after["upgrade"] - before["upgrade"] == 5
    noise.flush()  # nothing suppressed since: no line
    assert len(written) == 2


def test_a_burst_of_zero_writes_only_summaries(written: list[logging.LogRecord]) -> None:
    noise = ClientNoiseLimit(0, 60.0, Clock())
    assert not any(noise.filter(record(INVALID)) for _ in range(10))
    noise.flush()
    assert suppressed_lines(written) == {"invalid": 10}


async def test_the_summary_comes_when_the_window_ends_on_the_event_loop(
    written: list[logging.LogRecord],
) -> None:
    """Under an event loop a timer writes the summary: a flood that stops is reported
    without waiting for the next bad request."""
    noise = ClientNoiseLimit(1, 0.2)
    for _ in range(10):
        noise.filter(record(INVALID))
    assert written == []
    for _ in range(50):
        await asyncio.sleep(0.05)
        if written:
            break
    assert suppressed_lines(written) == {"invalid": 9}


# --- a dependency's failures, once per request (RepeatedFailureLimit) ---------------------


def failure(event: str, service: str | None, name: str = "problems", structlog: bool = True) -> Any:
    """A record as structlog hands it to the standard library (its message the event
    dict), or a standard-library record with ``service`` in its ``extra``."""
    if structlog:
        fields: dict[str, Any] = {"event": event, "path": "/offers"}
        if service is not None:
            fields["service"] = service
        return logging.LogRecord(name, logging.WARNING, __file__, 1, fields, None, None)
    record = logging.LogRecord(name, logging.WARNING, __file__, 1, event, None, None)
    if service is not None:
        record.service = service
    return record


def failure_count(event: str, service: str) -> float:
    return REPEATED_FAILURE_EVENTS.labels(event, service)._value.get()  # type: ignore[no-any-return]


@pytest.fixture
def reported() -> Any:
    """The summary lines the filter writes through its events' loggers."""
    collect = Collect()
    loggers = [logging.getLogger(name) for name in ("problems", "rides")]
    for logger in loggers:
        logger.addHandler(collect)
    yield collect.records
    for logger in loggers:
        logger.removeHandler(collect)


def test_a_dependency_failure_is_bounded_per_event_and_service_and_every_one_counted(
    reported: list[logging.LogRecord],
) -> None:
    """``burst`` lines per (logger, event, service) and window, structlog's and the
    standard library's alike; one summary per kind, at the event's level and logger."""
    clock = Clock()
    limit = RepeatedFailureLimit(2, 60.0, clock)
    before = failure_count("dependency unavailable", "postgres")
    down = [limit.filter(failure("dependency unavailable", "postgres")) for _ in range(50)]
    assert down == [True] * 2 + [False] * 48
    # another dependency, another event, a stdlib record: each a kind of its own
    assert [limit.filter(failure("dependency unavailable", "redis")) for _ in range(3)] == [
        True,
        True,
        False,
    ]
    assert [limit.filter(failure("nonsense answer", "scooters")) for _ in range(2)] == [True] * 2
    deferred = [
        limit.filter(failure("charge deferred to the worker", "payments", "rides", False))
        for _ in range(5)
    ]
    assert deferred == [True] * 2 + [False] * 3
    assert failure_count("dependency unavailable", "postgres") - before == 50
    assert reported == []
    clock.now += 60.0
    assert limit.filter(failure("dependency unavailable", "postgres"))  # a new window
    summaries = {
        (r.name, r.__dict__["kind"], r.__dict__["service"]): r.__dict__["suppressed"]
        for r in reported
    }
    assert summaries == {
        ("problems", "dependency unavailable", "postgres"): 48,
        ("problems", "dependency unavailable", "redis"): 1,
        ("rides", "charge deferred to the worker", "payments"): 3,
    }
    assert {r.levelno for r in reported} == {logging.WARNING}
    limit.flush()
    assert len(reported) == 3  # nothing suppressed since: no line


def test_what_is_no_repeated_failure_is_never_suppressed() -> None:
    """An unhandled error (with its traceback), other events, other messages and the
    summary lines themselves always pass, however many."""
    limit = RepeatedFailureLimit(0, 60.0, Clock())
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        exc_info = sys.exc_info()
    for _ in range(100):
        unhandled = failure("unhandled error", None)
        unhandled.exc_info = exc_info
        assert limit.filter(unhandled)
        assert limit.filter(failure("request refused", None))
        assert limit.filter(failure("log lines suppressed", "postgres", structlog=False))
        assert limit.filter(failure("payment operation %s/%s failed: %r", None, "worker", False))
        assert limit.filter(logging.LogRecord("x", logging.ERROR, "", 1, ["a list"], None, None))
    assert not limit.filter(failure("dependency unavailable", "postgres"))  # burst 0


def test_every_repeated_failure_event_is_written_somewhere() -> None:
    """The list names events that exist: one renamed at its call site would escape it."""
    sources = "\n".join(
        path.read_text()
        for folder in ("command_api", "query_api", "shared")
        for path in (ROOT / folder).rglob("*.py")
        if path.name != "logs.py"
    )
    library = {"Failed to restore the pool connection floor; retrying"}
    for event in REPEATED_FAILURES - library:
        assert f'"{event}"' in sources, event
    # asyncpg's own text, split over two string literals in asyncpg/pool.py
    pool_source = Path(asyncpg.pool.__file__).read_text()
    assert "'Failed to restore the pool connection '\n" in pool_source
    assert "'floor; retrying'" in pool_source
    assert library <= REPEATED_FAILURES


FLOOD = """
import logging
from shared.infra.logs import bind_request_id, configure_logging, get_logger, unbind_request_id
from shared.settings import Settings
configure_logging(Settings().replace(
    runtime={"environment": "production", "log_level": "WARNING", "log_noise_burst": 3}
))
log = get_logger("problems")
for n in range(40):
    _, token = bind_request_id({"headers": [(b"x-request-id", b"r-%d" % n)]})
    log.warning("dependency unavailable", service="postgres", path="/offers")
    logging.getLogger("rate_limit").warning(
        "offer rate limit skipped", extra={"service": "redis", "error": "ConnectionError()"}
    )
    if n % 10 == 0:
        try:
            raise ValueError(n)
        except ValueError as exc:
            log.error("unhandled error", path="/offers", exc_info=exc)
    unbind_request_id(token)
"""


def test_a_configured_process_writes_the_first_failures_then_one_summary_at_exit() -> None:
    """Through ``configure_logging``'s renderer: the first ``burst`` lines with their
    request ids, every unhandled error with its traceback, the summaries at exit."""
    run = subprocess.run(
        [sys.executable, "-c", FLOOD],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    lines = [json.loads(line) for line in run.stderr.splitlines()]
    down = [e["request_id"] for e in lines if e["event"] == "dependency unavailable"]
    assert down == ["r-0", "r-1", "r-2"]
    skipped = [e for e in lines if e["event"] == "offer rate limit skipped"]
    assert [e["request_id"] for e in skipped] == ["r-0", "r-1", "r-2"]
    assert skipped[0]["service"] == "redis"
    assert skipped[0]["logger"] == "rate_limit"
    errors = [e for e in lines if e["event"] == "unhandled error"]
    assert [e["request_id"] for e in errors] == ["r-0", "r-10", "r-20", "r-30"]
    assert all("ValueError" in json.dumps(e["exception"]) for e in errors)
    summaries = {
        (e["logger"], e["kind"], e["service"]): e["suppressed"]
        for e in lines
        if e["event"] == "log lines suppressed"
    }
    assert summaries == {
        ("problems", "dependency unavailable", "postgres"): 37,
        ("rate_limit", "offer rate limit skipped", "redis"): 37,
    }
    assert not any("request_id" in e for e in lines if e["event"] == "log lines suppressed")
    assert len(lines) == 3 + 3 + 4 + 2
