"""The query API: order screens, a user's history and summary, read from projections."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

import asyncpg
import httpx
import msgspec
from litestar import Litestar, Request, Response, get
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, PathParameter, QueryParameter, SkipValidation

from query_api import projection
from query_api.reads import Reads
from query_api.ride_details import console_handlers
from query_api.screen_lane import order_screen_json, orders_page_json, screen_lane
from query_api.screens import (
    OrderScreen,
    OrdersPage,
    SummaryScreen,
    summary_screen,
)
from query_api.stores import REDIS_DOWN, RedisClient, connect_postgres, connect_redis
from shared.errors import Forbidden, InvalidParameter, OrderNotFound, UserNotFound, echo
from shared.infra.answers import JsonAnswer, json_answer_spec
from shared.infra.auth import (
    TokenVerifier,
    bearer_auth,
    document_public_operations,
    openapi_config,
    principal_of,
    token_verifier,
)
from shared.infra.boundary import IDENTIFIER_MAX_LENGTH, IDENTIFIER_PATTERN, request_class
from shared.infra.db import close_pool
from shared.infra.di import Slot
from shared.infra.logs import configure_logging, with_request_ids
from shared.infra.metrics_server import start_metrics_server
from shared.infra.openapi import READ, Health, finish_document, problem_responses
from shared.infra.outages import redis_unavailable
from shared.infra.problems import exception_handlers
from shared.infra.request_metrics import request_metrics
from shared.settings import Settings, get_settings

UserId = Annotated[
    str,
    PathParameter(
        min_length=1,
        max_length=IDENTIFIER_MAX_LENGTH,
        pattern=IDENTIFIER_PATTERN,
        description="The rider's id: 1..64 of A-Z a-z 0-9 _ . : -",
    ),
]


_encode = msgspec.json.Encoder().encode

# built by the lifespan: not validated per request
ReadsDep = SkipValidation[Reads]


@dataclass(frozen=True, slots=True)
class Stores:
    """The query API's connections, for its readiness check."""

    redis: RedisClient
    db: asyncpg.Pool


Req = Request[Any, Any, Any]


def _may_read(request: Req, user_id: str) -> None:
    """Refuse (403) a caller who is neither ``user_id`` nor support (ADR 0006)."""
    if not principal_of(request.user).may_read(user_id):
        raise Forbidden(f"only {user_id} (or support) may read this")


@get(
    "/orders/{order_id:str}",
    summary="A ride's screen",
    responses={
        200: json_answer_spec(OrderScreen),
        **problem_responses("GetOrder", {**READ, 404: [OrderNotFound]}),
    },
)
async def get_order(request: Req, order_id: FromPath[str], reads: ReadsDep) -> JsonAnswer:
    """The ride screen: status, prices, times, running or final cost, payment status,
    and the receipt of a finished or cancelled ride (refunds included).

    Only its rider (or support) sees it; to anyone else it does not exist (404).
    """
    # served by query_api.screen_lane before routing; here for other spellings of the path
    return JsonAnswer(await order_screen_json(reads, request.user, order_id))


@get(
    "/users/{user_id:str}/orders",
    summary="A rider's orders, newest first",
    responses={
        200: json_answer_spec(OrdersPage),
        **problem_responses(
            "ListUserOrders",
            {**READ, 404: [UserNotFound], 422: [InvalidParameter]},
        ),
    },
)
async def list_user_orders(
    request: Req,
    user_id: UserId,
    reads: ReadsDep,
    limit: Annotated[int, QueryParameter(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, QueryParameter(max_length=200)] = None,
) -> JsonAnswer:
    """The user's orders, newest first; pass ``next_cursor`` back for the next page.

    A rider with no rides yet gets an empty page (200), not a 404: the list exists,
    it is just empty. Only the user (or support) may read it (403 otherwise)."""
    # plain requests are answered by query_api.screen_lane before routing (ADR 0028)
    return JsonAnswer(await orders_page_json(reads, request.user, user_id, limit, cursor))


@get(
    "/users/{user_id:str}/summary",
    summary="A rider's summary",
    responses=problem_responses(
        "GetUserSummary",
        {**READ, 404: [UserNotFound], 422: [InvalidParameter]},
    ),
)
async def get_user_summary(request: Req, user_id: UserId, reads: ReadsDep) -> SummaryScreen:
    """Rides count, total charged, debt and last payment status."""
    _may_read(request, user_id)
    view = await reads.summary(user_id)
    if view is None:
        raise UserNotFound(f"no user {echo(user_id)}")
    return summary_screen(view)


@get("/health/live", summary="The process is up")
async def live() -> Health:
    return Health(status="ok")


@get(
    "/health/ready",
    summary="Whether answers are correct: Redis and Postgres",
    responses={
        503: ResponseSpec(
            Health, description="Neither Redis nor Postgres answers", generate_examples=False
        )
    },
)
async def ready(stores: SkipValidation[Stores]) -> Response[Health]:
    """200 while answers are correct (``degraded``: Redis down, served from Postgres);
    503 only when neither store answers."""
    redis_up, postgres_up = await asyncio.gather(_redis_up(stores.redis), _postgres_up(stores.db))
    health = Health(
        status="ok"
        if redis_up and postgres_up
        else "degraded"
        if redis_up or postgres_up
        else "down",
        redis="up" if redis_up else "down",
        postgres="up" if postgres_up else "down",
    )
    return Response(health, status_code=503 if health.status == "down" else 200)


async def _redis_up(redis: RedisClient) -> bool:
    try:
        await redis.ping()
    except Exception as exc:
        if not redis_unavailable(exc):
            raise
        return False
    return True


async def _postgres_up(db: asyncpg.Pool) -> bool:
    try:
        async with asyncio.timeout(1.0):
            await db.fetchval("SELECT 1")
    except Exception:  # any failure means "not ready"
        return False
    return True


def create_app(settings: Settings | None = None) -> Litestar:
    """The query API; resources are opened in its lifespan and handed to the handlers
    through Litestar's dependency injection (``reads``, ``stores``)."""
    settings = settings or get_settings()
    configure_logging(settings)
    reads: Slot[Reads] = Slot("reads")
    stores: Slot[Stores] = Slot("stores")
    verifier: Slot[TokenVerifier] = Slot("verifier")
    serving = settings.serving

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        app.state.retry_after_seconds = serving.retry_after_seconds
        redis = connect_redis(settings)
        db = await connect_postgres(settings)
        replica = await connect_postgres(settings, replica=True)
        with contextlib.suppress(*REDIS_DOWN):  # else loaded on NOSCRIPT when Redis is back
            await projection.load_scripts(redis)
        reads.fill(Reads(settings, redis, db, replica))
        stores.fill(Stores(redis, replica or db))
        jwks_client = httpx.AsyncClient(timeout=settings.external.http_timeout_seconds)
        verifier.fill(token_verifier(settings, jwks_client))
        await verifier.get().warm()
        stop_metrics = start_metrics_server(
            serving.metrics_host, serving.query_metrics_port, serving.query_workers
        )
        try:
            yield
        finally:
            stop_metrics()
            await reads.get().aclose()
            reads.fill(None)
            stores.fill(None)
            verifier.fill(None)
            await jwks_client.aclose()
            try:
                await redis.aclose()
            except Exception as exc:  # a busy node: closing can time out; stop anyway
                if not redis_unavailable(exc):
                    raise
            await close_pool(db)
            if replica is not None:
                await close_pool(replica)

    handlers: list[Any] = [
        get_order,
        list_user_orders,
        get_user_summary,
        live,
        ready,
        *console_handlers(settings),
    ]
    app = Litestar(
        route_handlers=handlers,
        exception_handlers=exception_handlers(),
        # an overloaded process sheds before the app is called (shared/infra/admission.py,
        # served by shared/infra/serving.py); health checks pass sign-in. The ride
        # screen's lane (query_api/screen_lane.py) does what these two do itself: a
        # middleware added here must be added there too (ADR 0011, ADR 0028)
        middleware=[
            request_metrics("query_api"),
            bearer_auth(verifier),
        ],
        lifespan=[lifespan],
        openapi_config=openapi_config("SuperScooters query API"),
        dependencies={"reads": reads.provide(), "stores": stores.provide()},
        debug=False,
        request_class=request_class(serving.json_max_depth),
        request_max_body_size=serving.request_max_body_bytes,
        logging_config=None,  # shared.infra.logs configures logging, off the hot path
    )
    finish_document(app)  # the headers refusals are sent with
    document_public_operations(app)  # health checks need no bearer token
    app = with_request_ids(app)
    # the ride screen, most of the traffic, answered before routing (ADR 0011) and
    # before the request-id layer, which it does itself (ADR 0028)
    app.asgi_handler = screen_lane(app.asgi_handler, reads, verifier)
    return app
