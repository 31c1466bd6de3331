"""Writes of projections to Redis: two Lua scripts, each one atomic write, and a third
that runs several such writes in one call.

``PUT_VIEW`` stores a versioned view and lands only when its version is newer than the
stored one, so replays, duplicates and reordering never move a view back in time.
``ADD_RECENT`` merges order ids into a user's bounded recent list. ``APPLY`` runs a
batch of both kinds (the same Lua functions) on one Redis server. Scripts are run by
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

from query_api.read_connection import ReadConnection
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

# put_view(key, version, msgpack view, ttl seconds (0 = never expires)): store a versioned
# view unless the stored one is as new
_PUT_VIEW_FUNCTION = """
local function put_view(key, version, view, ttl)
  local current = redis.call('HGET', key, 'v')
  if current and tonumber(current) >= tonumber(version) then
    -- same version from a writer that says "never expires" (the projector, for an active
    -- ride): drop the TTL a Postgres refill may have put on it
    if tonumber(current) == tonumber(version) and tonumber(ttl) == 0 then
      redis.call('PERSIST', key)
    end
    return 0
  end
  redis.call('HSET', key, 'v', version, 'd', view)
  ttl = tonumber(ttl)
  if ttl > 0 then
    redis.call('EXPIRE', key, ttl)
  else
    redis.call('PERSIST', key)
  end
  return 1
end
"""

# add_recent(key, argv, o, last): argv[o + 1 .. last] are keep, ttl, complete (1/0), the
# complete mark, then score, id pairs. The complete mark (scored -inf) says the set was
# filled from Postgres; trimming by rank keeps it and the newest ``keep`` orders.
_ADD_RECENT_FUNCTION = """
local function add_recent(key, argv, o, last)
  local keep = tonumber(argv[o + 1])
  if argv[o + 3] == '1' then
    redis.call('ZADD', key, '-inf', argv[o + 4])
  end
  for i = o + 5, last, 2 do
    redis.call('ZADD', key, argv[i], argv[i + 1])
  end
  local first = 0
  if redis.call('ZSCORE', key, argv[o + 4]) then
    first = 1
  end
  redis.call('ZREMRANGEBYRANK', key, first, -(keep + 1))
  local ttl = tonumber(argv[o + 2])
  if ttl > 0 then
    redis.call('EXPIRE', key, ttl)
  end
  return redis.call('ZCARD', key)
end
"""

# KEYS[1] view hash; ARGV: version, msgpack view, ttl seconds (0 = never expires)
PUT_VIEW = _PUT_VIEW_FUNCTION + "return put_view(KEYS[1], ARGV[1], ARGV[2], ARGV[3])\n"

# KEYS[1] recent-orders sorted set; ARGV: keep, ttl, complete (1/0), then score, id pairs
ADD_RECENT = _ADD_RECENT_FUNCTION + "return add_recent(KEYS[1], ARGV, 0, #ARGV)\n"

# Several writes in one call (one Redis server, not a cluster): KEYS[i] is the i-th write's
# key; ARGV holds, for each write in turn, its script ('v' put_view, 'r' add_recent), its
# argument count, then its arguments. Answers each write's result, in order. The writes
# run in order within one atomic call, each exactly as its own script would.
APPLY = (
    _PUT_VIEW_FUNCTION
    + _ADD_RECENT_FUNCTION
    + """
local results = {}
local a = 1
for i = 1, #KEYS do
  local n = tonumber(ARGV[a + 1])
  if ARGV[a] == 'v' then
    results[i] = put_view(KEYS[i], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4])
  else
    results[i] = add_recent(KEYS[i], ARGV, a + 1, a + 1 + n)
  end
  a = a + 2 + n
end
return results
"""
)

_SCRIPTS = {
    name: hashlib.sha1(body.encode(), usedforsecurity=False).hexdigest()
    for name, body in (("put_view", PUT_VIEW), ("add_recent", ADD_RECENT), ("apply", APPLY))
}
_BODIES = {"put_view": PUT_VIEW, "add_recent": ADD_RECENT, "apply": APPLY}
_CODES = {"put_view": "v", "add_recent": "r"}
# writes per APPLY call: a rebuild's thousands of writes do not hold Redis in one call
_APPLY_CHUNK = 128


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


async def load_scripts(redis: RedisClient, connection: ReadConnection | None = None) -> None:
    """Register the scripts (idempotent), over ``connection`` when given; done at start
    and after NOSCRIPT."""
    for name, body in _BODIES.items():
        if connection is not None:
            (sha,) = await connection.execute((b"SCRIPT", b"LOAD", body.encode()))
            sha = sha.decode()
        else:
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


async def apply(
    redis: RedisClient, writes: Sequence[Write], connection: ReadConnection | None = None
) -> list[int]:
    """Run ``writes`` in one pipeline (no MULTI: each write is atomic on its own) and
    answer each one's result, in order. On one Redis server the writes go as ``APPLY``
    calls of up to 128 writes each (one command, one reply, one script run for many
    writes; issue 13), over ``connection`` when given (the projector's: one pipelined
    connection, ADR 0008) or else ``redis``; on a cluster each write is its own
    ``EVALSHA``, one pipeline per node, sent concurrently.

    Every write is idempotent, so the whole batch is simply run again after the
    scripts were reloaded.
    """
    if not writes:
        return []
    cluster = isinstance(redis, RedisCluster)
    chunks = [writes[at : at + _APPLY_CHUNK] for at in range(0, len(writes), _APPLY_CHUNK)]
    for attempt in (1, 2):
        try:
            if cluster:
                pipe = redis.pipeline(transaction=False)
                for write in writes:
                    # execute_command, not pipe.evalsha, which redis-py refuses in a cluster
                    # pipeline; each script touches one key: the cluster routes it by that key
                    pipe.execute_command(
                        "EVALSHA", _SCRIPTS[write.script], len(write.keys), *write.keys, *write.args
                    )
                return [int(r) for r in await pipe.execute()]
            if connection is not None:
                results = await connection.execute(*(_apply_parts(c) for c in chunks))
            elif len(chunks) == 1:  # one command: no pipeline's machinery
                results = [await redis.execute_command(*_apply_command(chunks[0]))]
            else:
                pipe = redis.pipeline(transaction=False)
                for chunk in chunks:
                    pipe.execute_command(*_apply_command(chunk))
                results = await pipe.execute()
        except NoScriptError:
            if attempt == 2:
                raise
            await load_scripts(redis, connection)
            continue
        except ResponseError as exc:
            if "NOSCRIPT" not in str(exc) or attempt == 2:
                raise
            await load_scripts(redis, connection)
            continue
        return [int(r) for chunk in results for r in chunk]
    raise AssertionError("unreachable")


def _apply_command(writes: Sequence[Write]) -> list[str | int | bytes]:
    """The ``EVALSHA`` of ``APPLY`` for ``writes`` (each of one key)."""
    keys: list[str | int | bytes] = []
    args: list[str | int | bytes] = []
    for write in writes:
        keys += write.keys
        args += (_CODES[write.script], len(write.args), *write.args)
    return ["EVALSHA", _SCRIPTS["apply"], len(keys), *keys, *args]


def _apply_parts(writes: Sequence[Write]) -> tuple[bytes, ...]:
    """:func:`_apply_command` as the bytes a :class:`ReadConnection` sends."""
    return tuple(
        part
        if isinstance(part, bytes)
        else part.encode()
        if isinstance(part, str)
        else b"%d" % part
        for part in _apply_command(writes)
    )
