"""The offer's debt check through the riders' debt marks (ADR 0013), end to end: the
start refuses a rider with debt in Postgres whatever the mark in Redis says."""

from __future__ import annotations

from typing import Any

import asyncpg
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from command_api.debt_marks import CLEAR, DebtMarks
from shared.settings import Settings
from tests.e2e.conftest import Ids, new_offer
from tests.e2e.test_failures import assert_nothing_held_for


async def test_a_clear_mark_skips_the_offers_debt_read_but_never_the_starts(
    api: AsyncTestClient[Any], db: asyncpg.Pool, ids: Ids, base_settings: Settings
) -> None:
    rider, scooter = ids.rider(), ids.scooter()
    await new_offer(api, rider, ids.scooter())  # reads the debt (none): marks the rider clear
    redis = Redis.from_url(base_settings.redis.url)
    try:
        marks = DebtMarks(redis, base_settings.redis.key_prefix)
        assert await redis.get(marks.key(rider)) == CLEAR
        # a debt written by hand, not by the worker's settle: the mark does not know it
        await db.execute(
            "INSERT INTO user_summary (user_id, debt) VALUES ($1, 700)"
            " ON CONFLICT (user_id) DO UPDATE SET debt = 700",
            rider,
        )
        offer = await new_offer(api, rider, scooter)  # priced on the mark, without the read

        refused = await api.post("/orders", json={"offer_token": offer["token"]})

        assert refused.status_code == 402, refused.text
        assert refused.json()["code"] == "user_has_debt"
        await assert_nothing_held_for(db, rider, scooter)
        await redis.delete(marks.key(rider))  # without the mark the offer reads it again
        no_offer = await api.post("/offers", json={"user_id": rider, "scooter_id": scooter})
        assert no_offer.status_code == 402
        assert no_offer.json()["code"] == "user_has_debt"
        assert await redis.get(marks.key(rider)) is None  # a read that finds debt marks nothing
    finally:
        await redis.aclose()
