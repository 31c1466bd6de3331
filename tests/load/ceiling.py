"""The framework's ceiling: a bare Litestar endpoint with a body like the order view.

``python -m tests.load.ceiling PORT WORKERS`` serves it with the query API's server
settings (``shared.infra.serving.serve``), so the query side's throughput
can be given as a ratio to what Litestar itself reaches on this machine at that moment.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime

import msgspec
from litestar import Litestar, get
from litestar.params import FromPath

from shared.infra.serving import serve


class View(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    offer_id: str
    user_id: str
    scooter_id: str
    zone_id: str
    status: str
    payment_status: str
    price_per_minute: int
    price_unlock: int
    deposit: int
    created_at: datetime
    started_at: datetime
    finished_at: datetime | None
    duration_seconds: int | None
    total_amount: int | None
    current_amount: int | None
    elapsed_seconds: int | None
    distance_meters: int | None
    version: int


NOW = datetime.now(UTC)


@get("/orders/{order_id:str}")
async def order(order_id: FromPath[str]) -> View:
    return View(
        id=order_id,
        offer_id=order_id,
        user_id="user-12345",
        scooter_id="scooter-1234",
        zone_id="zone-3",
        status="active",
        payment_status="held",
        price_per_minute=24,
        price_unlock=45,
        deposit=300,
        created_at=NOW,
        started_at=NOW,
        finished_at=None,
        duration_seconds=None,
        total_amount=None,
        current_amount=93,
        elapsed_seconds=120,
        distance_meters=None,
        version=2,
    )


@get("/health/live")
async def live() -> dict[str, str]:
    return {"status": "ok"}


def create_app() -> Litestar:
    return Litestar([order, live], logging_config=None, openapi_config=None)


if __name__ == "__main__":
    serve(
        "tests.load.ceiling:create_app",
        host="127.0.0.1",
        port=int(sys.argv[1]),
        workers=int(sys.argv[2]),
        log_level="warning",
    )
