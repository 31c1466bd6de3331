"""One-line explanations of environment failures, the retry log and the restart policy."""

from __future__ import annotations

import logging
import socket

import asyncpg
import pytest
import redis.exceptions

from scripts.stack import Restarts, _summary
from shared.infra.failures import (
    FailureError,
    RetryLog,
    check_port_free,
    explain,
    explain_postgres,
    explain_redis,
)

DSN = "postgresql://scooters:secret@db.example:5433/scooters"
REDIS = "redis://cache.example:6380/0"


def _one_line(text: str | None) -> str:
    assert text is not None
    assert "\n" not in text
    assert "Traceback" not in text
    assert "secret" not in text  # never the password
    return text


def test_postgres_unreachable_says_where_and_what_to_do() -> None:
    text = _one_line(explain_postgres(ConnectionRefusedError(111, "Connection refused"), DSN))
    assert "cannot reach PostgreSQL at db.example:5433 (connection refused)" in text
    assert "pg_ctlcluster 15 main start" in text
    assert "SCOOTERS_DATABASE_URL" in text


def test_postgres_timeout_is_unreachable() -> None:
    assert "(timed out)" in _one_line(explain_postgres(TimeoutError(), DSN))


def test_postgres_refused_password() -> None:
    exc = asyncpg.InvalidPasswordError('password authentication failed for user "scooters"')
    text = _one_line(explain_postgres(exc, DSN))
    assert "refused user 'scooters'" in text
    assert "bin/up" in text
    assert "SCOOTERS_DATABASE_URL" in text


def test_postgres_unknown_role() -> None:
    exc = asyncpg.InvalidAuthorizationSpecificationError('role "scooters" does not exist')
    assert "refused user 'scooters'" in _one_line(explain_postgres(exc, DSN))


def test_pg_partman_missing() -> None:
    exc = asyncpg.FeatureNotSupportedError('extension "pg_partman" is not available')
    text = _one_line(explain_postgres(exc, DSN))
    assert "no pg_partman" in text
    assert "apt-get install postgresql-15-partman" in text


def test_redis_down() -> None:
    exc = redis.exceptions.ConnectionError("Error 111 connecting to cache.example:6380.")
    text = _one_line(explain(exc, DSN, REDIS))
    assert "cannot reach Redis at cache.example:6380" in text
    assert "SCOOTERS_REDIS_URL" in text


def test_redis_auth_refused() -> None:
    exc = redis.exceptions.AuthenticationError("invalid username-password pair")
    assert "refused us" in _one_line(explain_redis(exc, REDIS))


def test_unknown_errors_are_not_explained_away() -> None:
    assert explain(ValueError("a bug"), DSN, REDIS) is None
    assert explain(asyncpg.UniqueViolationError("dup"), DSN, REDIS) is None


def test_port_in_use() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(FailureError) as caught:
            check_port_free("127.0.0.1", port, "command API", "SCOOTERS_COMMAND_PORT")
    text = _one_line(str(caught.value))
    assert f"port {port} on 127.0.0.1 (command API) is already in use" in text
    assert "SCOOTERS_COMMAND_PORT" in text


def test_free_port_passes() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    check_port_free("127.0.0.1", port, "stubs", "SCOOTERS_STUBS_PORT")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_retry_log_once_per_interval_not_per_attempt(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    retry = RetryLog(logging.getLogger("t"), "projection", interval_seconds=30, clock=clock)
    with caplog.at_level(logging.INFO, logger="t"):
        for _ in range(100):  # 100 attempts within 10 s: one line
            retry.failed("cannot reach Redis")
            clock.now += 0.1
        assert [r.getMessage() for r in caplog.records] == [
            "projection failed: cannot reach Redis; retrying"
        ]
        clock.now += 21  # 31 s after the first line
        retry.failed("cannot reach Redis")
        retry.failed("cannot reach Redis")
        retry.succeeded()
        retry.succeeded()
    assert [r.getMessage() for r in caplog.records][1:] == [
        "projection still failing after 101 attempts: cannot reach Redis",
        "projection recovered after 102 failed attempts",
    ]
    assert retry.failures == 0


def test_restart_backoff_doubles_to_a_cap_and_resets_after_a_stable_run() -> None:
    policy = Restarts(first_delay=1, max_delay=8, stable_after=30, started_at=0)
    delays = []
    for now in range(6):  # dies right after each start
        policy.started_at = float(now)
        delays.append(policy.died(float(now)))
    assert delays == [1, 2, 4, 8, 8, 8]
    policy.started_at = 100.0
    assert policy.died(200.0) == 1  # ran 100 s: healthy again, back to the first delay
    assert policy.count == 7


def test_a_postponed_restart_backs_off_too() -> None:
    policy = Restarts(first_delay=1, max_delay=8, stable_after=30, started_at=0)
    policy.died(100.0)  # ran 100 s, then died: first delay
    assert [policy.postpone(101.0 + i) for i in range(5)] == [2, 4, 8, 8, 8]
    assert policy.due == 105.0 + 8


def test_stop_summary_is_plain() -> None:
    assert _summary({"stubs": -15, "command_api": 0}) == "stopped stubs, command_api"
    assert _summary({"stubs": -15, "worker": -9, "projector": 1}) == (
        "stopped stubs; killed after the stop timeout: worker;"
        " exited with an error: projector (exit code 1)"
    )
