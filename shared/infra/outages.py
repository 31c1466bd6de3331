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

# What a command on a redis-py asyncio connection that was closed under it raises instead
# of a ConnectionError (see :func:`redis_connection_broken`).
_BROKEN_CONNECTION = (RuntimeError, AttributeError, TypeError)
# where redis-py writes to and reads from the socket
_REDIS_SOCKET_MODULES = ("redis.asyncio.connection", "redis._parsers")


def redis_connection_broken(exc: BaseException) -> bool:
    """Whether ``exc`` is a redis-py connection closed under the command that used it.

    redis-py's asyncio cluster client, after a command on a node times out or fails,
    disconnects that node's idle connections while other tasks may take them from the
    pool (``ClusterNode.disconnect_free_connections``, redis-py 8.1). The command sent
    on such a connection does not raise ``ConnectionError`` but, from the socket
    write, ``RuntimeError: unable to perform operation on <TCPTransport closed=True>;
    the handler is closed`` (uvloop) or ``AttributeError: 'NoneType' object has no
    attribute 'writelines'`` (the writer already dropped); CPython 3.12's transports
    raise ``TypeError`` the same way (redis-py issue #4287). Under overload, when Redis
    replies come late, this answered HTTP 500 (docs/scaling.md). It is the connection
    that is gone, not a bug of ours: such an error counts as one when the last redis-py
    frame it passed through is the connection's socket code.
    """
    if not isinstance(exc, _BROKEN_CONNECTION):
        return False
    last_redis_module = None
    tb = exc.__traceback__
    while tb is not None:
        module = tb.tb_frame.f_globals.get("__name__", "")
        if module == "redis" or module.startswith("redis."):
            last_redis_module = module
        tb = tb.tb_next
    return last_redis_module is not None and last_redis_module.startswith(_REDIS_SOCKET_MODULES)


def redis_unavailable(exc: BaseException) -> bool:
    """Whether ``exc``, raised by a Redis (or Redis Cluster) client, means that Redis
    cannot answer now: down, too slow, a cluster moving slots or without a master for
    one (``RedisClusterException``, not a ``RedisError``), or a connection closed under
    the command (:func:`redis_connection_broken`). Anything else is a bug (500)."""
    return isinstance(
        exc, (*REDIS_DOWN, redis_errors.RedisClusterException)
    ) or redis_connection_broken(exc)


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
        if isinstance(current, redis_errors.RedisError | redis_errors.RedisClusterException):
            return "redis" if redis_unavailable(current) else None
        if redis_connection_broken(current):
            return "redis"
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
