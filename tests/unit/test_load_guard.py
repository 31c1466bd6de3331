"""The load harness's guard: a 500 in a load run fails it and names the logged exception
(tests/load/service_logs.py). The log lines are made by the services' own logging setup."""

from __future__ import annotations

import subprocess
import sys
from io import StringIO
from pathlib import Path
from typing import Any

from tests.conftest import ROOT
from tests.load.service_logs import check_run, parse_line, print_verdict

# what shared/infra/problems.py logs for an answer 500, with a quote and a line break in
# the path, then a failed shutdown (an error that answered nothing)
EMIT = """
import logging
from shared.infra.logs import configure_logging, get_logger
from shared.settings import Settings
configure_logging(Settings().replace(runtime={"log_level": "WARNING"}))
log = get_logger("problems")
for n in range(2):
    try:
        raise RuntimeError(f"unable to perform operation on <TCPTransport 0x{n}5f6>; closed")
    except RuntimeError as exc:
        log.error("unhandled error", method="GET", path='/orders/a"b\\nc', exc_info=exc)
log.warning("dependency unavailable", service="redis")
logging.getLogger("uvicorn.error").error("Application shutdown failed. Exiting.")
"""


def service_log(tmp_path: Path) -> Path:
    """The lines as ``scripts/stack.py`` writes them: prefixed with the process's name."""
    run = subprocess.run(
        [sys.executable, "-c", EMIT], cwd=ROOT, capture_output=True, text=True, check=True
    )
    path = tmp_path / "services.log"
    path.write_text("".join(f"query_api  | {line}\n" for line in run.stderr.splitlines()))
    return path


def test_a_logged_500_is_read_back_with_its_exception(tmp_path: Path) -> None:
    lines = service_log(tmp_path).read_text().splitlines()
    assert len(lines) == 4, lines
    event = parse_line(lines[0])
    assert event is not None
    assert event.service == "query_api"
    assert event.level == "error"
    assert event.event == "unhandled error"
    assert event.fields["path"] == '/orders/a"b\\x0ac'  # escaped by the renderer, not ours
    assert event.exception.startswith("Traceback (most recent call last):\n")
    assert event.cause == (
        "RuntimeError: unable to perform operation on <TCPTransport 0x05f6>; closed"
    )
    assert parse_line("a line of no process") is None


def test_a_500_fails_the_run_and_names_the_exception(tmp_path: Path) -> None:
    log = service_log(tmp_path)
    reports = [
        {"errors": {"GET /orders/{id}: HTTP 500 internal_error": 2, "GET /x: HttpError": 5}},
        {"errors": {"GET /orders/{id}: HTTP 503 dependency_unavailable": 7}},
    ]
    verdict = check_run(reports, log)
    assert verdict.failed
    assert dict(verdict.bad_answers) == {"GET /orders/{id}: HTTP 500 internal_error": 2}
    assert len(verdict.errors) == 2
    assert sum(verdict.others.values()) == 1  # the failed shutdown: reported, not failing
    out = StringIO()
    print_verdict(verdict, log, out)
    text = out.getvalue()
    assert "2 answers were 5xx other than 503" in text
    # the two are one failure (addresses aside), printed once with its traceback
    assert text.count("2 x query_api: RuntimeError: unable to perform operation") == 1
    assert "Traceback (most recent call last):" in text


def test_503s_and_a_clean_log_pass(tmp_path: Path) -> None:
    log = tmp_path / "services.log"
    log.write_text('query_api  | timestamp=t level=warning event="dependency unavailable"\n')
    reports: list[dict[str, Any]] = [
        {"errors": {"GET /orders/{id}: HTTP 503 overloaded": 40}},
        {"errors": {}},
    ]
    assert not check_run(reports, log).failed
