"""Logs: one event per line in both modes, whatever text the caller controls (issue 8)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

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
