"""Which errors mean "a store is down" (503) and which are bugs (500): shared/infra/outages.py."""

from __future__ import annotations

import asyncpg
import pytest
from redis import exceptions as redis_errors

from shared.infra.outages import unavailable_dependency


@pytest.mark.parametrize(
    ("error", "service"),
    [
        (asyncpg.CannotConnectNowError("the database system is starting up"), "postgres"),
        (asyncpg.exceptions.AdminShutdownError("terminating connection"), "postgres"),
        (asyncpg.ConnectionDoesNotExistError("connection was closed"), "postgres"),
        (asyncpg.exceptions.TooManyConnectionsError("too many clients"), "postgres"),
        (asyncpg.InterfaceError("connection is closed"), "postgres"),
        (asyncpg.InternalClientError("cannot switch to state 11"), "postgres"),
        (redis_errors.ConnectionError("refused"), "redis"),
        (redis_errors.TimeoutError("timed out"), "redis"),
        (asyncpg.UniqueViolationError("duplicate key"), None),  # a bug, not an outage
        (redis_errors.ResponseError("WRONGTYPE"), None),
        (ValueError("nope"), None),
        (ConnectionRefusedError(111, "refused"), None),  # whose? not raised by a driver
    ],
)
def test_classification(error: BaseException, service: str | None) -> None:
    assert unavailable_dependency(error) == service


def test_the_cause_counts() -> None:
    wrapped = RuntimeError("wrapped")
    wrapped.__cause__ = asyncpg.CannotConnectNowError("starting up")
    assert unavailable_dependency(wrapped) == "postgres"
