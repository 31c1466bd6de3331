"""The command API: offers and rides.

Its dependencies are built by ``command_api.composition`` in the app's lifespan and reach
the handlers through Litestar's dependency injection (``deps: Deps``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Any

import asyncpg
import msgspec
from litestar import Litestar, Request, Response, get, post
from litestar.openapi import OpenAPIConfig
from litestar.params import FromPath, HeaderParameter, JSONBody, SkipValidation
from litestar.plugins.prometheus import PrometheusController

from command_api import rides
from command_api.composition import open_deps
from command_api.idempotency import run_once
from command_api.identity import resolve_rider
from shared.domain import Order, TrackPoint
from shared.errors import OrderNotFound
from shared.ids import parse_order_id
from shared.infra.di import Slot
from shared.infra.problems import exception_handlers
from shared.infra.request_metrics import request_metrics
from shared.infra.serving import cors_config
from shared.settings import Settings, get_settings

JSON = "application/json"
_encoder = msgspec.json.Encoder()

# built by the lifespan (command_api.composition): not validated per request
Deps = SkipValidation[rides.Deps]
RiderId = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[\w.:-]+$")]


class CreateOffer(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    user_id: RiderId
    scooter_id: RiderId


class OfferAnswer(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    user_id: str
    scooter_id: str
    zone_id: str
    price_per_minute: int
    price_unlock: int
    deposit: int
    created_at: datetime
    expires_at: datetime
    token: str


class StartOrder(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    offer_token: Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]


class FinishOrder(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    track: list[TrackPoint] = []


@post("/offers", status_code=201, summary="Price a personal offer for a scooter")
async def create_offer(
    request: Request[Any, Any, Any], data: JSONBody[CreateOffer], deps: Deps
) -> OfferAnswer:
    rider = resolve_rider(request, data.user_id) or data.user_id
    offer, token = await rides.create_offer(deps, rider, data.scooter_id)
    return OfferAnswer(
        id=str(offer.id),
        user_id=offer.user_id,
        scooter_id=offer.scooter_id,
        zone_id=offer.zone_id,
        price_per_minute=offer.price_per_minute,
        price_unlock=offer.price_unlock,
        deposit=offer.deposit,
        created_at=offer.created_at,
        expires_at=offer.expires_at,
        token=token,
    )


async def _idempotent(
    request: Request[Any, Any, Any],
    pool: asyncpg.Pool,
    scope: str,
    key: str | None,
    run: Callable[[], Awaitable[tuple[int, Order]]],
) -> Response[bytes]:
    """Answer ``run()`` (status, order), once per Idempotency-Key when one is given."""

    async def execute() -> tuple[int, bytes]:
        status, order = await run()
        return status, _encoder.encode(order)

    if key is None:
        status, body = await execute()
    else:
        status, body = await run_once(pool, scope, key, await request.body(), execute)
    return Response(body, status_code=status, media_type=JSON)


@post("/orders", status_code=201, summary="Start a ride from an offer")
async def start_order(
    request: Request[Any, Any, Any],
    data: JSONBody[StartOrder],
    deps: Deps,
    idempotency_key: Annotated[str | None, HeaderParameter(name="Idempotency-Key")] = None,
) -> Response[bytes]:
    offer = deps.signer.verify(data.offer_token, rides.utcnow())
    resolve_rider(request, offer.user_id)  # once auth lands: refuses another rider's offer

    async def run() -> tuple[int, Order]:
        return 201, await rides.start_ride(deps, offer)

    return await _idempotent(request, deps.pool, f"start:{offer.user_id}", idempotency_key, run)


@post("/orders/{order_id:str}/finish", status_code=200, summary="Finish a ride and charge it")
async def finish_order(
    request: Request[Any, Any, Any],
    order_id: FromPath[str],
    data: JSONBody[FinishOrder],
    deps: Deps,
    idempotency_key: Annotated[str | None, HeaderParameter(name="Idempotency-Key")] = None,
) -> Response[bytes]:
    parsed = parse_order_id(order_id)
    if parsed is None:
        raise OrderNotFound(f"no ride {order_id}")
    rider = resolve_rider(request, None)

    async def run() -> tuple[int, Order]:
        return 200, await rides.finish_ride(deps, parsed, data.track, rider)

    return await _idempotent(request, deps.pool, f"finish:{order_id}", idempotency_key, run)


@get("/health/live", summary="The process is up")
async def live() -> dict[str, str]:
    return {"status": "ok"}


@get("/health/ready", summary="Postgres answers", status_code=200)
async def ready(deps: Deps) -> Response[dict[str, str]]:
    try:
        async with deps.pool.acquire() as conn:
            await conn.fetchval("SELECT 1")
    except (OSError, asyncpg.PostgresError) as exc:
        return Response({"status": "unavailable", "postgres": str(exc)}, status_code=503)
    return Response({"status": "ok", "postgres": "ok"})


def create_app(settings: Settings | None = None) -> Litestar:
    """The command API wired to real Postgres, payments and the external services."""
    settings = settings or get_settings()
    deps: Slot[rides.Deps] = Slot("deps")

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        app.state.retry_after_seconds = settings.serving.retry_after_seconds
        async with open_deps(settings) as opened:
            deps.fill(opened)
            try:
                yield
            finally:
                deps.fill(None)

    logging.basicConfig(level=settings.runtime.log_level)
    return Litestar(
        route_handlers=[create_offer, start_order, finish_order, live, ready, PrometheusController],
        lifespan=[lifespan],
        dependencies={"deps": deps.provide()},
        exception_handlers=exception_handlers(),
        middleware=[request_metrics("command_api")],
        cors_config=cors_config(
            settings.console.cors_origins()
        ),  # the operations console calls from its origin
        openapi_config=OpenAPIConfig(title="SuperScooters command API", version="1"),
        request_max_body_size=2 * 1024 * 1024,
        logging_config=None,  # plain stdlib logging at the configured level, off the hot path
    )
