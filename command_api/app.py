"""The command API: offers and rides.

Its dependencies are built by ``command_api.composition`` in the app's lifespan and reach
the handlers through Litestar's dependency injection (``deps: Deps``).
"""

from __future__ import annotations

import gc
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime
from typing import Annotated, Any

import asyncpg
import httpx
import msgspec
from litestar import Litestar, Request, Response, get, post
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import OpenAPIType, Schema
from litestar.params import FromPath, HeaderParameter, JSONBody, PathParameter, SkipValidation

from command_api import operator, rides
from command_api.composition import open_deps
from command_api.fast_path import FastRoute, serve_ride_commands
from command_api.idempotency import MAX_KEY_LENGTH, run_once
from command_api.rate_limit import OfferRateLimit
from command_api.rate_limit import connect as connect_redis
from command_api.rate_limit import lane as redis_lane
from shared.domain import MAX_AMOUNT, Order, TrackPoint
from shared.errors import (
    DependencyUnavailable,
    EndBeforeStart,
    EndInFuture,
    IdempotencyKeyInFlight,
    IdempotencyKeyRequired,
    IdempotencyKeyReused,
    InvalidIdempotencyKey,
    InvalidParameter,
    InvalidRefund,
    InvalidRequest,
    OfferAlreadyUsed,
    OfferExpired,
    OfferInvalid,
    OfferNotYours,
    OrderNotCharged,
    OrderNotFound,
    PaymentDeclined,
    RateLimited,
    RefundExceedsCharge,
    ScooterBusy,
    ScooterNotFound,
    TooManyActiveRides,
    TrackTooLong,
    UnsupportedMediaType,
    UserHasDebt,
    UserNotFound,
    echo,
)
from shared.ids import parse_order_id
from shared.infra.auth import (
    Principal,
    TokenVerifier,
    bearer_auth,
    document_public_operations,
    openapi_config,
    principal_of,
    token_verifier,
)
from shared.infra.boundary import (
    IDENTIFIER_MAX_LENGTH,
    IDENTIFIER_PATTERN,
    Identifier,
    request_class,
    shows_something,
)
from shared.infra.di import Slot
from shared.infra.logs import configure_logging, with_request_ids
from shared.infra.metrics_server import start_metrics_server
from shared.infra.openapi import (
    PAYLOAD_TOO_LARGE,
    SIGNED_IN,
    Code,
    Health,
    finish_document,
    problem_responses,
)
from shared.infra.outages import redis_unavailable
from shared.infra.problems import exception_handlers
from shared.infra.request_metrics import request_metrics
from shared.infra.serving import cors_config, cors_refusals_as_problems
from shared.settings import Settings, get_settings

JSON = "application/json"
_encoder = msgspec.json.Encoder()

# built by the lifespan (command_api.composition): not validated per request
Deps = SkipValidation[rides.Deps]
RateLimit = SkipValidation[OfferRateLimit]


class CreateOffer(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    scooter_id: Annotated[Identifier, msgspec.Meta(examples=["scooter-1"])]
    # the rider is the token's sub; if sent, must equal it
    user_id: Annotated[Identifier, msgspec.Meta(examples=["user-1"])] | None = None


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
    offer_token: Annotated[
        str, msgspec.Meta(min_length=1, max_length=4096, pattern=r"^[A-Za-z0-9_.-]+$")
    ]


class FinishOrder(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The end of a ride; no body at all is the same as ``{}`` (no track)."""

    track: list[TrackPoint] = []


NO_TRACK = FinishOrder()

# why support acted (docs/operator-api.md): 1-500 characters, one line, something
# visible. A reason is text for people and logs, so it may not hold a control character
# (C0, C1: Postgres refuses NUL; line breaks forge log lines), a line or paragraph
# separator, or an explicit bidirectional embedding, override or isolate (they reorder
# what the console and a terminal show: CVE-2021-42574). "Something visible" is
# shared.infra.boundary.shows_something, checked after decoding (Reasoned).
# (?!\n): Python's "$" also matches before a final line break (see IDENTIFIER_PATTERN).
_REASON_FORBIDDEN = r"\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069"
REASON_PATTERN = rf"^[^{_REASON_FORBIDDEN}]*(?!\n)$"
Reason = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=500,
        pattern=REASON_PATTERN,
        description="Why support acted: one line with something visible, no control "
        "characters, no bidirectional embeddings, overrides or isolates",
        examples=["app crashed, scooter parked"],
    ),
]


UserId = Annotated[
    str,
    PathParameter(
        min_length=1,
        max_length=IDENTIFIER_MAX_LENGTH,
        pattern=IDENTIFIER_PATTERN,
        description="The rider's id: 1..64 of A-Z a-z 0-9 _ . : -",
    ),
]


class Reasoned(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A support command's body: ``reason`` says why support acted (stored with the act)."""

    reason: Reason

    def __post_init__(self) -> None:
        if not shows_something(self.reason):
            raise ValueError("reason: nothing in it is visible")


class EndRide(Reasoned, frozen=True, forbid_unknown_fields=True):
    """Support ends a ride as of ``ended_at`` (RFC 3339 with its offset)."""

    ended_at: Annotated[datetime, msgspec.Meta(tz=True)]


class RefundOrder(Reasoned, frozen=True, forbid_unknown_fields=True):
    """Support refunds ``amount`` (currency units, > 0) of an order's charge."""

    amount: Annotated[int, msgspec.Meta(ge=-MAX_AMOUNT, le=MAX_AMOUNT, examples=[100])]


class SettleDebt(Reasoned, frozen=True, forbid_unknown_fields=True):
    """Support charges the rider's debts again (each order whose charge became debt)."""


_BODY: dict[int, list[Code]] = {
    **SIGNED_IN,
    400: [InvalidRequest],
    413: [PAYLOAD_TOO_LARGE],
    415: [UnsupportedMediaType],
    503: [DependencyUnavailable],
}
_KEYED: dict[int, list[Code]] = {  # with an Idempotency-Key
    400: [InvalidRequest, InvalidIdempotencyKey],
    409: [IdempotencyKeyInFlight],
    422: [IdempotencyKeyReused],
}


def _merge(*parts: dict[int, list[Code]]) -> dict[int, list[Code]]:
    merged: dict[int, list[Code]] = {}
    for part in parts:
        for status, codes in part.items():
            merged.setdefault(status, []).extend(codes)
    return merged


@post(
    "/offers",
    status_code=201,
    summary="Price a personal offer for a scooter",
    responses=problem_responses(
        "CreateOffer",
        _merge(
            _BODY,
            {402: [UserHasDebt], 404: [ScooterNotFound, UserNotFound], 429: [RateLimited]},
        ),
    ),
)
async def create_offer(
    request: Request[Any, Any, Any],
    data: JSONBody[CreateOffer],
    deps: Deps,
    offer_rate_limit: RateLimit,
) -> OfferAnswer:
    return await _offer(principal_of(request.user), data, deps, offer_rate_limit)


async def _offer(
    principal: Principal, data: CreateOffer, deps: rides.Deps, offer_rate_limit: OfferRateLimit
) -> OfferAnswer:
    principal.require_rider(data.user_id)
    owes_nothing = await offer_rate_limit.check_and_read_debt_mark(principal.sub)
    offer, token = await rides.create_offer(
        deps, principal.sub, data.scooter_id, owes_nothing=owes_nothing
    )
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


async def _offered(
    principal: Principal, data: CreateOffer, deps: rides.Deps, offer_rate_limit: OfferRateLimit
) -> tuple[int, bytes]:
    """:func:`_offer` as the fast path answers it (command_api/fast_path.py)."""
    return 201, _encoder.encode(await _offer(principal, data, deps, offer_rate_limit))


def _order_id(text: str) -> uuid.UUID:
    """The order id in a path; anything that is not one of ours is an unknown order (404)."""
    parsed = parse_order_id(text)
    if parsed is None:
        raise OrderNotFound(f"no ride {echo(text)}")
    return parsed


async def _idempotent(
    deps: rides.Deps,
    scope: str,
    key: str | None,
    body: bytes,
    run: Callable[[bool], Awaitable[tuple[int, msgspec.Struct]]],
) -> tuple[int, bytes]:
    """(status, JSON) of ``run(resumed)`` (status, snapshot), once per Idempotency-Key
    when one is given (``body``: the request's bytes, which the key is bound to).

    ``resumed``: this retry took over the claim of a request that died mid-way.
    """

    async def execute(resumed: bool) -> tuple[int, bytes]:
        status, snapshot = await run(resumed)
        return status, _encoder.encode(snapshot)

    if key is None:
        return await execute(False)
    pool, lease = deps.pool, deps.settings.payments.idempotency_lease_seconds
    return await run_once(pool, scope, key, body, execute, lease)


async def _answer(
    request: Request[Any, Any, Any],
    deps: rides.Deps,
    scope: str,
    key: str | None,
    run: Callable[[bool], Awaitable[tuple[int, msgspec.Struct]]],
) -> Response[bytes]:
    """:func:`_idempotent` as a Litestar response."""
    body = b"" if key is None else await request.body()
    status, content = await _idempotent(deps, scope, key, body, run)
    return Response(content, status_code=status, media_type=JSON)


@post(
    "/orders",
    status_code=201,
    summary="Start a ride from an offer",
    responses={
        201: ResponseSpec(Order, description="The ride, started", generate_examples=False),
        **problem_responses(
            "StartOrder",
            _merge(
                _BODY,
                _KEYED,
                {
                    402: [UserHasDebt, PaymentDeclined],
                    403: [OfferNotYours],
                    409: [OfferAlreadyUsed, ScooterBusy, TooManyActiveRides],
                    410: [OfferExpired],
                    422: [OfferInvalid],
                },
            ),
        ),
    },
)
async def start_order(
    request: Request[Any, Any, Any],
    data: JSONBody[StartOrder],
    deps: Deps,
    idempotency_key: Annotated[str | None, HeaderParameter(name="Idempotency-Key")] = None,
) -> Response[bytes]:
    body = b"" if idempotency_key is None else await request.body()
    status, content = await _start(principal_of(request.user), data, deps, body, idempotency_key)
    return Response(content, status_code=status, media_type=JSON)


async def _start(
    principal: Principal, data: StartOrder, deps: rides.Deps, body: bytes, key: str | None
) -> tuple[int, bytes]:
    principal.require_rider()
    offer = deps.signer.verify(data.offer_token, rides.utcnow())
    principal.require_rider(offer.user_id)  # another rider's offer: 403

    async def run(resumed: bool) -> tuple[int, msgspec.Struct]:
        return 201, await rides.start_ride(deps, offer, resumed=resumed)

    return await _idempotent(deps, f"start:{offer.user_id}", key, body, run)


@post(
    "/orders/{order_id:str}/finish",
    status_code=200,
    summary="Finish a ride and charge it (no body: no track)",
    responses={
        200: ResponseSpec(
            rides.OrderAnswer,
            description="The ride, ended (or as it ended), with its receipt",
            generate_examples=False,
        ),
        **problem_responses(
            "FinishOrder",
            _merge(_BODY, _KEYED, {404: [OrderNotFound], 413: [TrackTooLong]}),
        ),
    },
)
async def finish_order(
    request: Request[Any, Any, Any],
    order_id: FromPath[str],
    deps: Deps,
    data: JSONBody[FinishOrder | None] = None,
    idempotency_key: Annotated[str | None, HeaderParameter(name="Idempotency-Key")] = None,
) -> Response[bytes]:
    body = b"" if idempotency_key is None else await request.body()
    status, content = await _finish(
        principal_of(request.user), data, order_id, deps, body, idempotency_key
    )
    return Response(content, status_code=status, media_type=JSON)


async def _finish(
    actor: Principal,  # the ride's rider, or support (a force-end)
    data: FinishOrder | None,
    order_id: str,
    deps: rides.Deps,
    body: bytes,
    key: str | None,
) -> tuple[int, bytes]:
    parsed = _order_id(order_id)

    async def run(resumed: bool) -> tuple[int, msgspec.Struct]:
        # finishing is idempotent by the order's state: a resumed retry answers it
        track = (data or NO_TRACK).track
        return 200, await rides.finish_ride(deps, parsed, track, actor)

    # the key's scope names the caller: a replay never answers someone else's finish
    scope = f"finish:{actor.sub}:{order_id}"
    return await _idempotent(deps, scope, key, body, run)


# --- operator commands (role support; docs/operator-api.md) ------------------------------------


@post(
    "/orders/{order_id:str}/end",
    status_code=200,
    summary="Support: end a ride on the rider's behalf as of a given time",
    responses={
        200: ResponseSpec(
            rides.OrderAnswer,
            description="The ride, ended as of ended_at (or as it ended), with its receipt",
            generate_examples=False,
        ),
        **problem_responses(
            "EndRide",
            _merge(_BODY, _KEYED, {404: [OrderNotFound], 422: [EndBeforeStart, EndInFuture]}),
        ),
    },
)
async def end_ride(
    request: Request[Any, Any, Any],
    order_id: FromPath[str],
    data: JSONBody[EndRide],
    deps: Deps,
    idempotency_key: Annotated[str | None, HeaderParameter(name="Idempotency-Key")] = None,
) -> Response[bytes]:
    actor = principal_of(request.user)
    actor.require_support()
    parsed = _order_id(order_id)

    async def run(resumed: bool) -> tuple[int, msgspec.Struct]:
        ended = await rides.finish_ride(
            deps, parsed, (), actor, ended_at=data.ended_at, reason=data.reason
        )
        return 200, ended

    scope = f"end:{actor.sub}:{order_id}"
    return await _answer(request, deps, scope, idempotency_key, run)


@post(
    "/orders/{order_id:str}/refunds",
    status_code=201,
    summary="Support: refund all or part of a ride's charge (Idempotency-Key required)",
    responses={
        201: ResponseSpec(
            operator.RefundAnswer,
            description="The refund, and the receipt with it",
            generate_examples=False,
        ),
        **problem_responses(
            "RefundOrder",
            _merge(
                _BODY,
                _KEYED,
                {
                    400: [IdempotencyKeyRequired],
                    404: [OrderNotFound],
                    409: [OrderNotCharged, RefundExceedsCharge],
                    422: [InvalidRefund],
                },
            ),
        ),
    },
)
async def refund_order(
    request: Request[Any, Any, Any],
    order_id: FromPath[str],
    data: JSONBody[RefundOrder],
    deps: Deps,
    idempotency_key: Annotated[str | None, HeaderParameter(name="Idempotency-Key")] = None,
) -> Response[bytes]:
    actor = principal_of(request.user)
    actor.require_support()
    if idempotency_key is None:
        raise IdempotencyKeyRequired("a refund needs an Idempotency-Key (its refund key)")
    parsed = _order_id(order_id)
    key = idempotency_key

    async def run(resumed: bool) -> tuple[int, msgspec.Struct]:
        answer = await operator.refund(deps, parsed, data.amount, data.reason, key, actor)
        return 201, answer

    # the key is the refund's key at payments: one per order, whoever sends it
    return await _answer(request, deps, f"refund:{order_id}", key, run)


@post(
    "/users/{user_id:str}/debt/settle",
    status_code=200,
    summary="Support: charge a rider's debt through payments and release holds left behind",
    responses=problem_responses(
        "SettleDebt", _merge(_BODY, {404: [UserNotFound], 422: [InvalidParameter]})
    ),
)
async def settle_debt(
    request: Request[Any, Any, Any],
    user_id: UserId,
    data: JSONBody[SettleDebt],
    deps: Deps,
) -> operator.SettleAnswer:
    actor = principal_of(request.user)
    actor.require_support()
    return await operator.settle_debt(deps, user_id, data.reason, actor)


@get("/health/live", summary="The process is up")
async def live() -> Health:
    return Health(status="ok")


@get(
    "/health/ready",
    summary="Whether commands can run: Postgres answers",
    responses={
        503: ResponseSpec(Health, description="Postgres does not answer", generate_examples=False)
    },
)
async def ready(deps: Deps) -> Response[Health]:
    try:
        async with deps.pool.acquire() as conn:
            await conn.fetchval("SELECT 1")
    except (OSError, asyncpg.PostgresError):
        return Response(Health(status="down", postgres="down"), status_code=503)
    return Response(Health(status="ok", postgres="up"))


@contextmanager
def _tuned_collector() -> Iterator[None]:
    """While the app serves: what startup built lives as long as the process, so it is
    out of the cyclic collector's way (``gc.freeze``, after a collection so no garbage is
    frozen), and young collections run every 10,000 net allocations instead of 700. The
    collector's CPU per ride flow: ≈ 90 µs → ≈ 2 µs (docs/benchmarks.md, "i13api"); the
    garbage it finds waits a little longer. Undone when the app stops (tests start many)."""
    threshold = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, *threshold[1:])
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()


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
        connection = redis_lane(settings)  # the offer's commands, on a single Redis
        jwks_client = httpx.AsyncClient(timeout=settings.external.http_timeout_seconds)
        try:
            async with open_deps(settings, redis=redis, redis_connection=connection) as opened:
                deps.fill(opened)
                verifier.fill(token_verifier(settings, jwks_client))
                await verifier.get().warm()
                rate_limit.fill(
                    OfferRateLimit(
                        redis,
                        settings.redis.key_prefix,
                        settings.offers.rate_limit,
                        settings.offers.rate_window_seconds,
                        opened.debt_marks,
                        connection,
                    )
                )
                try:
                    with _tuned_collector():
                        yield
                finally:
                    deps.fill(None)
                    verifier.fill(None)
                    rate_limit.fill(None)
        finally:
            await jwks_client.aclose()
            if connection is not None:
                await connection.aclose()
            try:
                await redis.aclose()
            except Exception as exc:  # a busy node: closing can time out; stop anyway
                if not redis_unavailable(exc):
                    raise
            stop_metrics()

    configure_logging(settings)
    app = Litestar(
        route_handlers=[
            create_offer,
            start_order,
            finish_order,
            end_ride,
            refund_order,
            settle_debt,
            live,
            ready,
        ],
        lifespan=[lifespan],
        dependencies={"deps": deps.provide(), "offer_rate_limit": rate_limit.provide()},
        exception_handlers=exception_handlers(),
        # an overloaded process sheds before the app is called (shared/infra/admission.py,
        # served by shared/infra/serving.py); health checks pass sign-in
        middleware=[
            request_metrics("command_api"),
            bearer_auth(verifier),
        ],
        # the operations console calls from its origin
        cors_config=cors_config(settings.console.cors_origins()),
        openapi_config=openapi_config("SuperScooters command API"),
        request_class=request_class(serving.json_max_depth),
        request_max_body_size=serving.request_max_body_bytes,
        logging_config=None,  # shared.infra.logs configures logging, off the hot path
    )
    cors_refusals_as_problems(app)  # before anything wraps its ASGI handler
    finish_document(
        app,
        closed=[CreateOffer, StartOrder, FinishOrder, TrackPoint, EndRide, RefundOrder, SettleDebt],
        max_items={("FinishOrder", "track"): settings.rides.track_max_points},
        optional_bodies=["/orders/{order_id}/finish"],
        parameters={
            "Idempotency-Key": Schema(
                type=OpenAPIType.STRING,
                min_length=1,
                max_length=MAX_KEY_LENGTH,
                pattern=r"^[\x20-\x7e]+$",
                description="Replays the first answer for a repeated request "
                "(400 invalid_idempotency_key when malformed)",
            )
        },
    )
    document_public_operations(app)  # health checks need no bearer token
    app = with_request_ids(app)
    if serving.command_fast_path:  # the ride commands without Litestar's cycle (ADR 0012)
        serve_ride_commands(
            app,
            verifier,
            offers=FastRoute(
                "/offers",
                CreateOffer,
                lambda who, data, _, __, ___: _offered(who, data, deps.get(), rate_limit.get()),
            ),
            start=FastRoute(
                "/orders",
                StartOrder,
                lambda who, data, _, body, key: _start(who, data, deps.get(), body, key),
            ),
            finish=FastRoute(
                "/orders/{order_id:str}/finish",
                FinishOrder | None,
                lambda who, data, order_id, body, key: _finish(
                    who, data, order_id, deps.get(), body, key
                ),
                optional_body=True,
            ),
            app_name="command_api",
            max_body_bytes=serving.request_max_body_bytes,
        )
    return app
