"""Writes of projections to Redis: two Lua scripts, each one atomic write.

``PUT_VIEW`` stores a versioned view and lands only when its version is newer than the
stored one, so replays, duplicates and reordering never move a view back in time.
``ADD_RECENT`` merges order ids into a user's bounded recent list. Scripts are run by
EVALSHA (their SHA is computed here, no round trip) and loaded again on NOSCRIPT, e.g.
after a Redis restart. Every writer (projector, query refill, rebuild) goes through here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from datetime import datetime

import msgspec
from redis.asyncio import RedisCluster
from redis.exceptions import NoScriptError, ResponseError

from query_api.stores import RedisClient
from shared.views import (
    COMPLETE_MARK,
    OrderView,
    UserSummaryView,
    order_key,
    user_orders_key,
    user_summary_key,
    view_encoder,
)

# KEYS[1] view hash; ARGV: version, msgpack view, ttl seconds (0 = never expires)
PUT_VIEW = """
local current = redis.call('HGET', KEYS[1], 'v')
if current and tonumber(current) >= tonumber(ARGV[1]) then
  -- same version from a writer that says "never expires" (the projector, for an active
  -- ride): drop the TTL a Postgres refill may have put on it
  if tonumber(current) == tonumber(ARGV[1]) and tonumber(ARGV[3]) == 0 then
    redis.call('PERSIST', KEYS[1])
  end
  return 0
end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'd', ARGV[2])
local ttl = tonumber(ARGV[3])
if ttl > 0 then
  redis.call('EXPIRE', KEYS[1], ttl)
else
  redis.call('PERSIST', KEYS[1])
end
return 1
"""

# KEYS[1] recent-orders sorted set; ARGV: keep, ttl, complete (1/0), then score, id pairs.
# The complete mark (scored -inf) says the set was filled from Postgres; trimming by rank
# keeps it and the newest ``keep`` orders.
ADD_RECENT = """
local key = KEYS[1]
local keep = tonumber(ARGV[1])
if ARGV[3] == '1' then
  redis.call('ZADD', key, '-inf', ARGV[4])
end
for i = 5, #ARGV, 2 do
  redis.call('ZADD', key, ARGV[i], ARGV[i + 1])
end
local first = 0
if redis.call('ZSCORE', key, ARGV[4]) then
  first = 1
end
redis.call('ZREMRANGEBYRANK', key, first, -(keep + 1))
local ttl = tonumber(ARGV[2])
if ttl > 0 then
  redis.call('EXPIRE', key, ttl)
end
return redis.call('ZCARD', key)
"""

_SCRIPTS = {
    name: hashlib.sha1(body.encode(), usedforsecurity=False).hexdigest()
    for name, body in (("put_view", PUT_VIEW), ("add_recent", ADD_RECENT))
}
_BODIES = {"put_view": PUT_VIEW, "add_recent": ADD_RECENT}


class Write(msgspec.Struct, frozen=True):
    """One script call: which script, on which keys, with which arguments."""

    script: str
    keys: tuple[str, ...]
    args: tuple[str | int | bytes, ...]


def put_order(prefix: str, view: OrderView, ttl: int) -> Write:
    """Store ``view`` unless a newer version is there; ``ttl`` 0 keeps it forever."""
    return Write(
        "put_view", (order_key(prefix, view.id),), (view.version, view_encoder.encode(view), ttl)
    )


def put_summary(prefix: str, view: UserSummaryView) -> Write:
    """Store the user's summary unless a newer version is there; it never expires."""
    return Write(
        "put_view",
        (user_summary_key(prefix, view.user_id),),
        (view.version, view_encoder.encode(view), 0),
    )


def add_recent(
    prefix: str,
    user_id: str,
    orders: Iterable[tuple[str, int]],
    *,
    keep: int,
    ttl: int,
    complete: bool,
) -> Write:
    """Merge ``(order id, created_at ms)`` pairs into the user's recent list.

    ``complete`` says the pairs are the user's newest orders read from Postgres, which
    makes the list authoritative; the projector's merges alone never do.
    """
    args: list[str | int | bytes] = [keep, ttl, "1" if complete else "0", COMPLETE_MARK]
    for order_id, score in orders:
        args += [score, order_id]
    return Write("add_recent", (user_orders_key(prefix, user_id),), tuple(args))


def finished_ttl(finished_at: datetime | None, now: datetime, keep_seconds: int, floor: int) -> int:
    """Seconds a done order's view still lives: ``keep_seconds`` after it finished,
    at least ``floor`` so that a view written late is still worth writing."""
    if finished_at is None:
        return max(keep_seconds, floor)
    left = keep_seconds - int((now - finished_at).total_seconds())
    return max(left, floor)


async def load_scripts(redis: RedisClient) -> None:
    """Register both scripts (idempotent); done at start and after NOSCRIPT."""
    for name, body in _BODIES.items():
        sha = await redis.script_load(body)
        assert sha == _SCRIPTS[name]


async def forget_topology(redis: RedisClient) -> None:
    """After a connection error, make a cluster client ask the live nodes for the slot
    map on its next call. redis-py does so itself for single commands, but a pipeline
    that fails without retries leaves the client pointing at a dead master forever
    (a failover would never be noticed by the projector). Closes the client's
    connections: only for a client nothing else is using at that moment."""
    if isinstance(redis, RedisCluster):
        await redis.aclose()


async def apply(redis: RedisClient, writes: Sequence[Write]) -> list[int]:
    """Run ``writes`` in one pipeline (no MULTI: each script is atomic on its own); on
    a cluster, one pipeline per node, sent concurrently.

    Every write is idempotent, so the whole batch is simply run again after the
    scripts were reloaded.
    """
    if not writes:
        return []
    for attempt in (1, 2):
        pipe = redis.pipeline(transaction=False)
        for write in writes:
            # execute_command, not pipe.evalsha, which redis-py refuses in a cluster
            # pipeline; each script touches one key, so the cluster routes it by that key
            pipe.execute_command(
                "EVALSHA", _SCRIPTS[write.script], len(write.keys), *write.keys, *write.args
            )
        try:
            results = await pipe.execute()
        except NoScriptError:
            if attempt == 2:
                raise
            await load_scripts(redis)
            continue
        except ResponseError as exc:
            if "NOSCRIPT" not in str(exc) or attempt == 2:
                raise
            await load_scripts(redis)
            continue
        return [int(r) for r in results]
    raise AssertionError("unreachable")
