"""deploy/haproxy.cfg, the load balancer's configuration in front of the APIs (ADR 0024):
its answers are the APIs' own, every variable it reads is given, and HAProxy accepts it
(that last check only where haproxy is installed: a deployment artifact, not part of
the set-up)."""

from __future__ import annotations

import re

import msgspec
import pytest

from shared.infra.admission import overloaded_body
from tests.front import HAPROXY, MISSING, TEMPLATE, Front, check

TEXT = TEMPLATE.read_text()
FRONT = Front(
    query_front="127.0.0.1:18081",
    query_api="127.0.0.1:8081",
    query_maxconn=128,
    command_front="127.0.0.1:18080",
    command_api="127.0.0.1:8080",
    command_maxconn=16,
)


def _strings(code: str) -> list[bytes]:
    """The bodies of the template's answers with ``code``, as HAProxy sends them."""
    bodies = [
        raw.replace('\\"', '"').replace("${RETRY_AFTER}", str(FRONT.retry_after)).encode()
        for raw in re.findall(r'string "((?:[^"\\]|\\.)*)"', TEXT)
    ]
    return [b for b in bodies if msgspec.json.decode(b)["code"] == code]


def test_the_refusal_is_the_apis_own_overloaded_answer() -> None:
    bodies = _strings("overloaded")
    assert len(bodies) == 3  # the backstop's http-error and each backend's refusal
    assert set(bodies) == {overloaded_body(FRONT.retry_after)}


def test_every_answer_has_retry_after_and_the_request_id() -> None:
    answers = [
        line for line in TEXT.splitlines() if re.search(r"http-(error|request return)", line)
    ]
    assert len(answers) == 5
    for line in answers:
        assert "status 503 content-type application/problem+json" in line
        assert 'hdr retry-after "${RETRY_AFTER}"' in line
        assert 'hdr x-request-id "%[var(txn.rid)]"' in line


def test_every_variable_is_given() -> None:
    used = set(re.findall(r"\$\{([A-Z_]+)\}", TEXT))
    assert used == set(FRONT.environment())


def test_each_server_has_a_connection_limit_and_a_health_check() -> None:
    servers = [line.split() for line in TEXT.splitlines() if line.strip().startswith("server ")]
    assert len(servers) == 2
    for words in servers:
        assert "maxconn" in words
        assert "check" in words
    assert TEXT.count("option httpchk GET /health/ready") == 2


@pytest.mark.skipif(HAPROXY is None, reason=MISSING)
def test_haproxy_accepts_the_template() -> None:
    result = check(FRONT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Configuration file is valid" in result.stdout


@pytest.mark.skipif(HAPROXY is None, reason=MISSING)
def test_haproxy_refuses_the_template_without_its_values() -> None:
    result = check(Front("", "", 0, "", "", 0))
    assert result.returncode != 0
