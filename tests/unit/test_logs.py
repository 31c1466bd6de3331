"""Logs: one event per line in both modes, whatever text the caller controls (issue 8)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import Any

import pytest

from shared.infra.logs import (
    REQUEST_ID_HEADER,
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
