"""The query API's own Redis read connection judges error replies as redis-py does."""

from __future__ import annotations

import hiredis
import pytest
from redis import exceptions as redis_errors

from query_api.read_connection import _reply_error
from shared.infra.outages import redis_unavailable


@pytest.mark.parametrize(
    ("reply", "kind", "down"),
    [
        ("LOADING Redis is loading the dataset in memory", redis_errors.BusyLoadingError, True),
        ("ERR max number of clients reached", redis_errors.ConnectionError, True),
        ("NOAUTH Authentication required.", redis_errors.AuthenticationError, True),
        ("WRONGPASS invalid username-password pair", redis_errors.AuthenticationError, True),
        (
            "WRONGTYPE Operation against a key holding the wrong kind of value",
            redis_errors.ResponseError,
            False,
        ),
    ],
)
def test_error_replies_map_to_redis_pys_exceptions(
    reply: str, kind: type[Exception], down: bool
) -> None:
    error = _reply_error(hiredis.ReplyError(reply))
    assert type(error) is kind
    assert redis_unavailable(error) is down
