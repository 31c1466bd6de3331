"""Logs: one event per line in both modes, whatever text the caller controls (issue 8)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import subprocess
import sys
from typing import Any

import pytest

from shared.infra.logs import (
    MALFORMED_REQUESTS,
    REQUEST_ID_HEADER,
    ClientNoiseLimit,
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
