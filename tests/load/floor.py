"""The floor of the command API's design for a ride flow (issue 13, docs/benchmarks.md
"i13floor"): the three ride commands and nothing else.

Two apps answer ``POST /offers``, ``POST /orders`` and ``POST /orders/{id}/finish``
(and ``GET /health/live``, so the load test can start them) with the least the design
requires, through our own code for all of it:

- sign-in on every request: :class:`shared.infra.auth.TokenVerifier` with its cache;
- the body decoded by msgspec into the same Structs (``command_api.app``);
- the same commands: ``command_api.app._offer`` / ``_start`` / ``_finish``, so the same
  offer token (ADR 0001), the same external calls through ``ExternalServices`` on our
  transport (ADR 0009/0018/0022), the same Redis round trip of the offer (rate limit and
  debt mark, ADR 0018), the same statements through ``command_api.repository`` on an
  asyncpg pool (where the payment and one-ride guarantees live), the same answers;
- the same process tuning (``command_api.app._tuned_collector``).

Left out: request ids, metrics, logging set-up, admission control, Idempotency-Keys (a
key given is ignored), CORS, OpenAPI, the problem mapping (any error is a bare 500),
Litestar's DI and middleware.

- ``litestar``: three Litestar handlers (body as a typed ``data`` parameter, the order id
  as a path parameter, the dependencies in a closure), no middleware;
- ``raw``: one ASGI callable routing the three paths itself (no framework).

``python -m tests.load.floor`` serves the app named by ``FLOOR_APP`` (``litestar`` or
``raw``) as the command API is served (uvicorn, httptools, uvloop; no admission
control), on the command API's settings: ``python -m tests.load command --floor raw``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import msgspec
from litestar import Litestar, Request, Response, get, post

from command_api import app as ours
from command_api.composition import open_deps
from command_api.rate_limit import OfferRateLimit
from command_api.rate_limit import connect as connect_redis
from command_api.rate_limit import lane as redis_lane
from command_api.rides import Deps
from shared.infra.auth import Principal, TokenVerifier, bearer_token, token_verifier
from shared.settings import Settings, get_settings

APPS = ("litestar", "raw")
JSON = "application/json"
_encoder = msgspec.json.Encoder()
_offer_decoder = msgspec.json.Decoder(ours.CreateOffer)
_start_decoder = msgspec.json.Decoder(ours.StartOrder)
_finish_decoder = msgspec.json.Decoder(ours.FinishOrder)
_FINISH_PREFIX, _FINISH_SUFFIX = "/orders/", "/finish"
# ASGI as the raw app sees it: plain dicts
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Floor:
    """What the three commands need, open: the token verifier, the commands' ``Deps``
    and the offer's Redis round trip (rate limit and debt mark)."""

    verifier: TokenVerifier
    deps: Deps
    rate_limit: OfferRateLimit

    async def offer(self, principal: Principal, data: ours.CreateOffer) -> tuple[int, bytes]:
        """(201, the offer's JSON), as ours answers it."""
        answer = await ours._offer(principal, data, self.deps, self.rate_limit)
        return 201, _encoder.encode(answer)

    async def start(self, principal: Principal, data: ours.StartOrder) -> tuple[int, bytes]:
        """(201, the started order's JSON)."""
        return await ours._start(principal, data, self.deps, b"", None)

    async def finish(
        self, principal: Principal, order_id: str, data: ours.FinishOrder | None
    ) -> tuple[int, bytes]:
        """(200, the ended order's JSON with its receipt)."""
        return await ours._finish(principal, data, order_id, self.deps, b"", None)


@asynccontextmanager
async def open_floor(settings: Settings) -> AsyncIterator[Floor]:
    """The floor's dependencies, opened as the command API's lifespan opens them (one
    Postgres pool, one HTTP client, one Redis lane, the JWKS fetched once)."""
    async with AsyncExitStack() as stack:
        redis = connect_redis(settings)
        stack.push_async_callback(redis.aclose)
        connection = redis_lane(settings)
        if connection is not None:
            stack.push_async_callback(connection.aclose)
        jwks_client = httpx.AsyncClient(timeout=settings.external.http_timeout_seconds)
        stack.push_async_callback(jwks_client.aclose)
        deps = await stack.enter_async_context(
            open_deps(settings, redis=redis, redis_connection=connection)
        )
        verifier = token_verifier(settings, jwks_client)
        await verifier.warm()
        offers = settings.offers
        rate_limit = OfferRateLimit(
            redis,
            settings.redis.key_prefix,
            offers.rate_limit,
            offers.rate_window_seconds,
            deps.debt_marks,
            connection,
        )
        stack.enter_context(ours._tuned_collector())
        yield Floor(verifier, deps, rate_limit)


class _Holder:
    """The open :class:`Floor` while the app serves (filled by its lifespan)."""

    floor: Floor | None = None

    def get(self) -> Floor:
        assert self.floor is not None, "the floor app is not serving"
        return self.floor


def litestar_floor(settings: Settings) -> Litestar:
    """The floor as three Litestar handlers: no middleware, no DI, no exception handlers."""
    holder = _Holder()

    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        async with open_floor(settings) as floor:
            holder.floor = floor
            try:
                yield
            finally:
                holder.floor = None

    async def principal(request: Request[Any, Any, Any]) -> Principal:
        return await holder.get().verifier.verify(bearer_token(request.scope))

    @post("/offers", status_code=201)
    async def offers(request: Request[Any, Any, Any], data: ours.CreateOffer) -> Response[bytes]:
        floor = holder.get()
        status, content = await floor.offer(await principal(request), data)
        return Response(content, status_code=status, media_type=JSON)

    @post("/orders", status_code=201)
    async def orders(request: Request[Any, Any, Any], data: ours.StartOrder) -> Response[bytes]:
        floor = holder.get()
        status, content = await floor.start(await principal(request), data)
        return Response(content, status_code=status, media_type=JSON)

    @post("/orders/{order_id:str}/finish", status_code=200)
    async def finish(
        request: Request[Any, Any, Any], order_id: str, data: ours.FinishOrder | None = None
    ) -> Response[bytes]:
        floor = holder.get()
        status, content = await floor.finish(await principal(request), order_id, data)
        return Response(content, status_code=status, media_type=JSON)

    @get("/health/live")
    async def live() -> dict[str, str]:
        return {"status": "ok"}

    return Litestar(
        route_handlers=[offers, orders, finish, live],
        lifespan=[lifespan],
        openapi_config=None,
        logging_config=None,
    )


class RawFloor:
    """The floor as one ASGI callable: routes the three paths, reads the bearer token
    and the body, answers with the command's status and bytes (any error: a bare 500).
    Serves ASGI lifespan events itself; :meth:`lifespan` opens it in-process."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._floor: Floor | None = None

    @asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        """The app's dependencies open for the ``async with`` (as Litestar's
        ``app.lifespan()``)."""
        async with open_floor(self._settings) as floor:
            self._floor = floor
            try:
                yield
            finally:
                self._floor = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._serve_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        if scope["method"] == "GET" and path == "/health/live":
            await _answer(send, 200, b'{"status":"ok"}')
            return
        floor = self._floor
        assert floor is not None, "the floor app is not serving"
        run: Callable[[Principal, bytes], Awaitable[tuple[int, bytes]]] | None = None
        if scope["method"] == "POST":
            if path == "/offers":

                def run(who: Principal, body: bytes) -> Awaitable[tuple[int, bytes]]:
                    return floor.offer(who, _offer_decoder.decode(body))
            elif path == "/orders":

                def run(who: Principal, body: bytes) -> Awaitable[tuple[int, bytes]]:
                    return floor.start(who, _start_decoder.decode(body))
            elif path.startswith(_FINISH_PREFIX) and path.endswith(_FINISH_SUFFIX):
                order_id = path[len(_FINISH_PREFIX) : -len(_FINISH_SUFFIX)]

                def run(who: Principal, body: bytes) -> Awaitable[tuple[int, bytes]]:
                    data = _finish_decoder.decode(body) if body else None
                    return floor.finish(who, order_id, data)

        if run is None:
            await _answer(send, 404, b"")
            return
        try:
            principal = await floor.verifier.verify(bearer_token(scope))  # type: ignore[arg-type]
            chunks: list[bytes] = []
            more = True
            while more:
                message = await receive()
                if message["type"] != "http.request":
                    return  # the client went away
                chunks.append(message.get("body", b""))
                more = message.get("more_body", False)
            status, content = await run(principal, b"".join(chunks))
        except Exception:
            await _answer(send, 500, b"")
            return
        await _answer(send, status, content)

    async def _serve_lifespan(self, receive: Receive, send: Send) -> None:
        message = await receive()
        assert message["type"] == "lifespan.startup"
        async with self.lifespan():
            await send({"type": "lifespan.startup.complete"})
            await receive()  # lifespan.shutdown
        await send({"type": "lifespan.shutdown.complete"})


async def _answer(send: Send, status: int, content: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(content)),
            ],
        }
    )
    await send({"type": "http.response.body", "body": content, "more_body": False})


# answers of the sizes ours gives (offer, start, finish with its receipt; tests.load.floor_parts
# prints the real ones)
_CANNED = {"/offers": (201, 886), "/orders": (201, 469), "finish": (200, 709)}


async def canned_app(scope: Scope, receive: Receive, send: Send) -> None:
    """A raw ASGI app that reads each request's body and answers the ride commands with
    bytes of their real sizes, doing nothing else: uvicorn's share of a flow is what it
    costs served against called in process (``tests.load.floor_parts --served``)."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    path = scope["path"]
    if scope["method"] == "GET":
        await _answer(send, 200, b'{"status":"ok"}')
        return
    status, size = _CANNED.get(path) or _CANNED["finish"]
    await _answer(send, status, b"{" + b" " * (size - 2) + b"}")


def floor_app(name: str, settings: Settings | None = None) -> Litestar | RawFloor:
    """The floor app ``name`` (one of :data:`APPS`) on ``settings`` (default: the
    environment's)."""
    settings = settings or get_settings()
    if name == "litestar":
        return litestar_floor(settings)
    if name == "raw":
        return RawFloor(settings)
    raise ValueError(f"no floor app {name!r}: one of {', '.join(APPS)}")


def create_floor_app() -> Litestar | RawFloor | Callable[[Scope, Receive, Send], Awaitable[None]]:
    """Factory for uvicorn: the floor app named by ``FLOOR_APP`` (default ``raw``), or
    ``canned`` (:func:`canned_app`)."""
    name = os.environ.get("FLOOR_APP", "raw")
    return canned_app if name == "canned" else floor_app(name)


def main() -> None:
    from shared.infra.serving import serve

    settings = get_settings()
    serving = settings.serving
    serve(
        "tests.load.floor:create_floor_app",
        host=serving.command_host,
        port=serving.command_port,
        workers=serving.command_workers,
        healthcheck_seconds=serving.worker_healthcheck_seconds,
        log_level=settings.runtime.log_level,
    )


if __name__ == "__main__":
    main()
