"""Where the offer keys come from: the environment, or (development) Postgres.

Production takes its keys only from ``SCOOTERS_OFFER_KEYS`` (settings refuse to start
without). A development stack has no secret in its code or configuration: the first
command API process (or worker) creates one random key in the ``offer_keys`` table
(migration 0006) under an advisory lock, and every process reads the same keys from
there, so an offer priced by one process starts a ride on any other (ADR 0006).
"""

from __future__ import annotations

import asyncpg

from shared.offer_token import OfferSigner, key_id, new_offer_key
from shared.settings import Settings

_LOCK_ID = 0x0FFE2C01  # advisory lock key: "offer keys"


async def development_offer_keys(
    conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy,
) -> list[bytes]:
    """The development keys from Postgres, newest first; creates one if there is none."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_ID)
        rows = await conn.fetch("SELECT secret FROM offer_keys ORDER BY created_at DESC, kid")
        if not rows:
            key = new_offer_key()
            await conn.execute(
                "INSERT INTO offer_keys (kid, secret) VALUES ($1, $2)", key_id(key), key
            )
            return [key]
    return [bytes(row["secret"]) for row in rows]


async def offer_signer(settings: Settings, pool: asyncpg.Pool) -> OfferSigner:
    """The offer signer of this process: keys from settings, else (development) Postgres.

    Raises asyncpg errors when Postgres cannot be read in development.
    """
    keys = settings.offers.key_bytes()
    if keys:
        return OfferSigner(keys)
    if settings.runtime.environment == "production":  # Settings.check refuses this already
        raise RuntimeError("production needs SCOOTERS_OFFER_KEYS")
    async with pool.acquire() as conn:
        return OfferSigner(await development_offer_keys(conn))
