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
import httpx
import msgspec
from litestar import Litestar, Request, Response, get, post
from litestar.params import FromPath, HeaderParameter, JSONBody, SkipValidation

from command_api import rides
from command_api.composition import open_deps
from command_api.idempotency import run_once
from command_api.rate_limit import OfferRateLimit
from command_api.rate_limit import connect as connect_redis
from shared.domain import Order, TrackPoint
from shared.errors import OrderNotFound
from shared.ids import parse_order_id
from shared.infra.admission import admission_control
from shared.infra.auth import (
    TokenVerifier,
    bearer_auth,
    openapi_config,
    principal_of,
    token_verifier,
)
from shared.infra.di import Slot
from shared.infra.metrics_server import start_metrics_server
from shared.infra.problems import exception_handlers
from shared.infra.request_metrics import request_metrics
from shared.infra.serving import cors_config
from shared.settings import Settings, get_settings

JSON = "application/json"
_encoder = msgspec.json.Encoder()

# built by the lifespan (command_api.composition): not validated per request
Deps = SkipValidation[rides.Deps]
RateLimit = SkipValidation[OfferRateLimit]
RiderId = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[\w.:-]+$")]


class CreateOffer(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    scooter_id: RiderId
    user_id: RiderId | None = None  # the rider is the token's sub; if sent, must equal it


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
    request: Request[Any, Any, Any],
    data: JSONBody[CreateOffer],
    deps: Deps,
    offer_rate_limit: RateLimit,
) -> OfferAnswer:
    principal = principal_of(request.user)
    principal.require_rider(data.user_id)
    await offer_rate_limit.check(principal.sub)
    offer, token = await rides.create_offer(deps, principal.sub, data.scooter_id)
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
    deps: rides.Deps,
    scope: str,
    key: str | None,
    run: Callable[[bool], Awaitable[tuple[int, Order]]],
) -> Response[bytes]:
    """Answer ``run(resumed)`` (status, snapshot), once per Idempotency-Key when one is given.

    ``resumed``: this retry took over the claim of a request that died mid-way.
    """

    async def execute(resumed: bool) -> tuple[int, bytes]:
        status, snapshot = await run(resumed)
        return status, _encoder.encode(snapshot)

    if key is None:
        status, body = await execute(False)
    else:
        pool, lease = deps.pool, deps.settings.payments.idempotency_lease_seconds
        status, body = await run_once(pool, scope, key, await request.body(), execute, lease)
    return Response(body, status_code=status, media_type=JSON)


@post("/orders", status_code=201, summary="Start a ride from an offer")
async def start_order(
    request: Request[Any, Any, Any],
    data: JSONBody[StartOrder],
    deps: Deps,
    idempotency_key: Annotated[str | None, HeaderParameter(name="Idempotency-Key")] = None,
) -> Response[bytes]:
    principal = principal_of(request.user)
    principal.require_rider()
    offer = deps.signer.verify(data.offer_token, rides.utcnow())
    principal.require_rider(offer.user_id)  # another rider's offer: 403

    async def run(resumed: bool) -> tuple[int, Order]:
        return 201, await rides.start_ride(deps, offer, resumed=resumed)

    return await _idempotent(request, deps, f"start:{offer.user_id}", idempotency_key, run)


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
    actor = principal_of(request.user)  # the ride's rider, or support (a force-end)

    async def run(resumed: bool) -> tuple[int, Order]:
        # finishing is idempotent by the order's state: a resumed retry answers it
        return 200, await rides.finish_ride(deps, parsed, data.track, actor)

    # the key's scope names the caller: a replay never answers someone else's finish
    scope = f"finish:{actor.sub}:{order_id}"
    return await _idempotent(request, deps, scope, idempotency_key, run)


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
    verifier: Slot[TokenVerifier] = Slot("verifier")
    rate_limit: Slot[OfferRateLimit] = Slot("offer_rate_limit")
    serving = settings.serving

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        app.state.retry_after_seconds = serving.retry_after_seconds
        stop_metrics = start_metrics_server(
            serving.metrics_host, serving.command_metrics_port, serving.command_workers
        )
        redis = connect_redis(settings)
        jwks_client = httpx.AsyncClient(timeout=settings.external.http_timeout_seconds)
        try:
            async with open_deps(settings) as opened:
                deps.fill(opened)
                verifier.fill(token_verifier(settings, jwks_client))
                await verifier.get().warm()
                rate_limit.fill(
                    OfferRateLimit(
                        redis,
                        settings.redis.key_prefix,
                        settings.offers.rate_limit,
                        settings.offers.rate_window_seconds,
                    )
                )
                try:
                    yield
                finally:
                    deps.fill(None)
                    verifier.fill(None)
                    rate_limit.fill(None)
        finally:
            await jwks_client.aclose()
            await redis.aclose()
            stop_metrics()

    logging.basicConfig(level=settings.runtime.log_level)
    return Litestar(
        route_handlers=[create_offer, start_order, finish_order, live, ready],
        lifespan=[lifespan],
        dependencies={"deps": deps.provide(), "offer_rate_limit": rate_limit.provide()},
        exception_handlers=exception_handlers(),
        # outermost first: an overloaded process sheds before any token verification;
        # health checks pass both admission control and sign-in
        middleware=[
            admission_control(
                "command_api",
                settings.serving.command_max_requests_in_flight,
                settings.serving.retry_after_seconds,
            ),
            request_metrics("command_api"),
            bearer_auth(verifier),
        ],
        # the operations console calls from its origin
        cors_config=cors_config(settings.console.cors_origins()),
        openapi_config=openapi_config("SuperScooters command API"),
        request_max_body_size=2 * 1024 * 1024,
        logging_config=None,  # plain stdlib logging at the configured level, off the hot path
    )
