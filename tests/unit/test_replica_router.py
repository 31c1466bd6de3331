"""ReadRouter.read: a read the replica fails after it was chosen is read on the primary;
the primary's own errors, and any other error, pass (pure logic over stand-in pools)."""

from __future__ import annotations

from typing import Any, cast

import asyncpg
import pytest

from query_api.replica import ReadRouter


class StandInPool:
    """Answers the router's position checks as a current replica (or primary) would."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def fetchval(self, query: str, *args: Any) -> Any:
        return "0/1" if "insert_lsn" in query else True


def router() -> ReadRouter:
    primary = cast(asyncpg.Pool, StandInPool("primary"))
    replica = cast(asyncpg.Pool, StandInPool("replica"))
    return ReadRouter(primary, replica)


def failing_on(name: str, error: Exception) -> Any:
    async def query(pool: Any) -> str:
        if pool.name == name:
            raise error
        return f"answered by the {pool.name}"

    return query


RECOVERY_CONFLICTS = [
    asyncpg.exceptions.SerializationError("canceling statement due to conflict with recovery"),
    asyncpg.exceptions.DeadlockDetectedError("canceling statement due to conflict with recovery"),
    asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
    asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"),
    OSError(111, "Connection refused"),
]


@pytest.mark.parametrize("error", RECOVERY_CONFLICTS, ids=lambda e: type(e).__name__)
async def test_a_read_the_replica_fails_is_answered_by_the_primary(error: Exception) -> None:
    read_router = router()
    assert await read_router.read(failing_on("replica", error)) == "answered by the primary"


@pytest.mark.parametrize("error", RECOVERY_CONFLICTS, ids=lambda e: type(e).__name__)
async def test_the_primarys_errors_pass(error: Exception) -> None:
    read_router = router()
    read_router.replica = None  # no replica: every read is the primary's
    with pytest.raises(type(error)):
        await read_router.read(failing_on("primary", error))


async def test_a_replica_statement_that_timed_out_is_not_run_again() -> None:
    read_router = router()
    with pytest.raises(TimeoutError):  # 503: the primary would wait as long on a busy box
        await read_router.read(failing_on("replica", TimeoutError()))


async def test_other_replica_errors_are_bugs_and_pass() -> None:
    read_router = router()
    error = asyncpg.exceptions.UndefinedTableError('relation "orders" does not exist')
    with pytest.raises(asyncpg.exceptions.UndefinedTableError):
        await read_router.read(failing_on("replica", error))
