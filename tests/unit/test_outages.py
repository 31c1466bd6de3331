"""Which errors mean "a store is down" (503) and which are bugs (500): shared/infra/outages.py."""

from __future__ import annotations

import asyncpg
import pytest
from redis import exceptions as redis_errors
from redis.asyncio import RedisCluster
from redis.asyncio.connection import Connection

from shared.infra.outages import (
    redis_connection_broken,
    redis_unavailable,
    unavailable_dependency,
)


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


# --- a redis-py connection closed under the command (docs/scaling.md, the replica run) ---


class _ClosedTransportWriter:
    """A stream writer over a transport uvloop has closed: what its ``writelines`` raises."""

    def writelines(self, data: object) -> None:
        raise RuntimeError(
            "unable to perform operation on <TCPTransport closed=True reading=False "
            "0x55f6ccd4e560>; the handler is closed"
        )


async def _raised_by(connection: Connection) -> BaseException:
    try:
        await connection.send_packed_command([b"PING"], check_health=False)
    except BaseException as exc:
        return exc
    raise AssertionError("the write did not fail")


async def test_a_write_on_a_closed_transport_is_redis_unavailable() -> None:
    connection = Connection()
    connection._reader = object()  # type: ignore[assignment]  # "connected"
    connection._writer = _ClosedTransportWriter()  # type: ignore[assignment]
    connection.disconnect = _no_disconnect  # type: ignore[method-assign]
    error = await _raised_by(connection)
    connection._reader = connection._writer = None  # nothing real to close
    assert isinstance(error, RuntimeError)
    assert redis_connection_broken(error)
    assert redis_unavailable(error)
    assert unavailable_dependency(error) == "redis"


async def test_a_write_after_the_writer_was_dropped_is_redis_unavailable() -> None:
    connection = Connection()
    connection._writer = None
    with pytest.raises(AttributeError) as caught:
        await connection._send_packed_command([b"PING"])
    assert redis_connection_broken(caught.value)
    assert unavailable_dependency(caught.value) == "redis"


async def _no_disconnect(*args: object, **kwargs: object) -> None:
    return None


def test_the_same_errors_raised_elsewhere_are_bugs() -> None:
    def ours() -> None:
        raise AttributeError("'NoneType' object has no attribute 'writelines'")

    for raise_it in (ours, lambda: RedisCluster.keyslot(None, "k")):  # type: ignore[arg-type]
        with pytest.raises(AttributeError) as caught:
            raise_it()
        assert not redis_connection_broken(caught.value)
        assert not redis_unavailable(caught.value)
        assert unavailable_dependency(caught.value) is None
    assert not redis_connection_broken(RuntimeError("no traceback at all"))


@pytest.mark.parametrize(
    "error",
    [
        redis_errors.SlotNotCoveredError('Slot "42" is not covered by the cluster.'),
        redis_errors.RedisClusterException("Redis Cluster cannot be connected"),
        redis_errors.MasterDownError("MASTERDOWN"),
        redis_errors.MaxConnectionsError("Too many connections"),
    ],
)
def test_a_cluster_in_flux_is_redis_unavailable(error: BaseException) -> None:
    assert redis_unavailable(error)
    assert unavailable_dependency(error) == "redis"
