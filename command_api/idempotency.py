"""``Idempotency-Key`` (IETF draft): replay the first result, 409 while in flight,
422 when the key comes back with a different request.

Only successful results are stored; a refused or failed request forgets its key so
the client can retry it once the cause is fixed. A claim is a lease: when its request
died without an answer (the process was killed), a retry of the same request takes it
over after ``lease_seconds`` and runs again with ``resumed=True``, so the command can
answer what the order's state implies instead of "in flight" until the key expires.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable

import asyncpg

from command_api import repository as repo
from shared.errors import IdempotencyKeyInFlight, IdempotencyKeyReused, InvalidIdempotencyKey

MAX_KEY_LENGTH = 255


async def run_once(
    pool: asyncpg.Pool,
    scope: str,
    key: str,
    request: bytes,
    execute: Callable[[bool], Awaitable[tuple[int, bytes]]],
    lease_seconds: float,
) -> tuple[int, bytes]:
    """Run ``execute(resumed)`` once per (scope, key) and live claim; returns (status, body).

    Raises :class:`IdempotencyKeyInFlight` while another request holds the claim,
    :class:`IdempotencyKeyReused` for another request under the same key.
    """
    if not key or len(key) > MAX_KEY_LENGTH or not (key.isascii() and key.isprintable()):
        raise InvalidIdempotencyKey(
            f"Idempotency-Key must be 1..{MAX_KEY_LENGTH} printable ASCII characters"
        )
    digest = hashlib.sha256(request).digest()
    async with pool.acquire() as conn:
        resumed, stored = await repo.claim_idempotency_key(conn, scope, key, digest, lease_seconds)
    if stored is not None:
        if bytes(stored["request_hash"]) != digest:
            raise IdempotencyKeyReused("this Idempotency-Key was used with a different request")
        if stored["status_code"] is None:
            raise IdempotencyKeyInFlight("the first request with this key is still in progress")
        return stored["status_code"], bytes(stored["response"])
    try:
        status, body = await execute(resumed)
    except BaseException:
        async with pool.acquire() as conn:
            await repo.forget_idempotency_key(conn, scope, key)
        raise
    async with pool.acquire() as conn:
        await repo.complete_idempotency_key(conn, scope, key, status, body)
    return status, body
