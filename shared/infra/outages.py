"""What a dependency that is down looks like to our clients, in one place.

A request that needed Postgres or Redis while it was down, restarting or too slow is
answered 503 with ``Retry-After`` and code ``dependency_unavailable`` (issue 8, item 4),
never 500: the caller did nothing wrong and a retry a moment later will likely work.
"""

from __future__ import annotations

import asyncpg
from redis import exceptions as redis_errors

# Postgres unreachable, restarting, shutting down, out of connections, or a statement
# that outlived ``db_command_timeout_seconds`` (asyncpg raises TimeoutError).
POSTGRES_DOWN: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, unreachable
    TimeoutError,
    asyncpg.InterfaceError,  # "connection is closed", pool closing
    asyncpg.PostgresConnectionError,  # SQLSTATE class 08
    asyncpg.exceptions.OperatorInterventionError,  # 57P01 shutdown, 57P03 starting up
    asyncpg.exceptions.InsufficientResourcesError,  # 53300 too many connections
    # a pooled connection caught mid-reconnect while the server restarts ("cannot switch
    # to state 11; another operation (2) is in progress"): found by the Postgres-restart
    # test on a fresh Debian; the connection is broken, not our request
    asyncpg.InternalClientError,
)

# Redis unreachable, timing out, or a cluster without a master for the slot.
REDIS_DOWN: tuple[type[BaseException], ...] = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.ClusterDownError,
    redis_errors.BusyLoadingError,
    OSError,
)


def unavailable_dependency(exc: BaseException) -> str | None:
    """``"postgres"`` or ``"redis"`` when ``exc`` (or what caused it) means that store
    is down; None for any other error (a bug, answered 500)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(
            current, asyncpg.PostgresError | asyncpg.InterfaceError | asyncpg.InternalClientError
        ):
            return "postgres" if isinstance(current, POSTGRES_DOWN) else None
        if isinstance(current, redis_errors.RedisError):
            return "redis" if isinstance(current, REDIS_DOWN) else None
        if isinstance(current, POSTGRES_DOWN):  # OSError/TimeoutError: whose is unknown
            return _named_by_traceback(current)
        current = current.__cause__ or current.__context__
    return None


def _named_by_traceback(exc: BaseException) -> str | None:
    """The store whose client raised ``exc`` (a bare OSError/TimeoutError), if any."""
    tb = exc.__traceback__
    while tb is not None:
        module = tb.tb_frame.f_globals.get("__name__", "")
        if module.startswith("asyncpg"):
            return "postgres"
        if module.startswith("redis"):
            return "redis"
        tb = tb.tb_next
    return None
