"""The ride screen's lane: ``GET /orders/{id}`` answered before Litestar's routing (ADR 0011).

The ride screen is most of the query API's traffic (a rider's app refreshes it while
riding). Through Litestar, routing, the exception middleware, the handler's signature
and dependency machinery and the response wrappers cost about as much CPU as the read
itself (docs/benchmarks.md, "i13read"). :func:`screen_lane` answers exactly that
request, ``GET`` of ``/orders/<one path segment>``, with the same work and the same
guards and hands every other request to Litestar unchanged:

- the same **sign-in** and **request metrics** middleware as every other route (the
  factories the app gives Litestar: :func:`shared.infra.auth.bearer_auth`,
  :func:`shared.infra.request_metrics.request_metrics`), with the route template
  Litestar gives (``/orders/{order_id}``), so a token is verified, refused
  (401) and counted exactly as elsewhere;
- the same **answer**: :func:`order_screen_json`, which the Litestar handler
  (``query_api.app.get_order``, still the documented operation and the one serving
  ``/orders/{id}/`` and other spellings) calls too;
- the same **errors**: any exception is answered by the app's exception handlers
  (``shared.infra.problems``: 404 ``order_not_found``, 503 ``service_unavailable`` when
  neither Redis nor Postgres answers, 500 for a bug, logged), as Litestar would;
- the same **Host check** Litestar makes before routing (an invalid ``Host`` goes to
  Litestar, which refuses it 400).

Request ids are given outside it (``shared.infra.logs.with_request_ids`` stays the
outermost layer), admission control before the app (``shared.infra.admission``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
from litestar import Request
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, Scope, Send

from query_api.reads import Reads
from query_api.screens import order_screen
from shared.errors import OrderNotFound, echo
from shared.ids import parse_order_id
from shared.infra.auth import TokenVerifier, bearer_auth, principal_of
from shared.infra.boundary import is_valid_host
from shared.infra.di import Slot
from shared.infra.problems import exception_handlers
from shared.infra.request_metrics import request_metrics

ROUTE = "/orders/{order_id}"  # the template Litestar gives the route (metrics label)
_PREFIX = "/orders/"
_START = len(_PREFIX)
_JSON = (b"content-type", b"application/json")
_encode = msgspec.json.Encoder().encode


async def order_screen_json(reads: Reads, user: Any, order_id: str) -> bytes:
    """The ride screen of ``order_id`` as JSON, for the signed-in ``user``.

    Raises :class:`~shared.errors.OrderNotFound` when there is no such order or the
    caller is neither its rider nor support (to anyone else it does not exist), and
    :class:`~shared.errors.DependencyUnavailable` when neither Redis nor Postgres
    answers (``Reads.order``).
    """
    parsed = parse_order_id(order_id)
    view = None if parsed is None else await reads.order(parsed)
    if view is None or not principal_of(user).may_read(view.user_id):
        raise OrderNotFound(f"no order {echo(order_id)}")
    screen = order_screen(view, datetime.now(UTC), reads.max_charged_seconds, reads.max_cost)
    return _encode(screen)


def _handler_for(exc: Exception) -> Any:
    """The app's exception handler for ``exc`` (the most specific class it names)."""
    handlers = exception_handlers()
    for cls in type(exc).__mro__:
        handler = handlers.get(cls)
        if handler is not None:
            return handler
    return handlers[Exception]  # pragma: no cover - every exception is an Exception


async def answer_error(scope: Scope, receive: Receive, send: Send, exc: Exception) -> None:
    """Answer ``exc`` as the app's exception handlers do (problem details, logged)."""
    request: Request[Any, Any, Any] = Request(scope, receive, send)
    response = _handler_for(exc)(request, exc)
    await response.to_asgi_response(None, request)(scope, receive, send)


def screen_lane(app: ASGIApp, reads: Slot[Reads], verifier: Slot[TokenVerifier]) -> ASGIApp:
    """``app`` (Litestar's ASGI handler) with ``GET /orders/{id}`` answered in front of it."""

    async def screen(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            body = await order_screen_json(reads.get(), scope["user"], scope["path"][_START:])
        except Exception as exc:
            await answer_error(scope, receive, send, exc)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [_JSON, (b"content-length", b"%d" % len(body))],
            }
        )
        await send({"type": "http.response.body", "body": body, "more_body": False})

    # the same middleware, in the same order, as Litestar runs for the route
    signed_in = request_metrics("query_api")(bearer_auth(verifier)(screen))

    async def lane(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == ScopeType.HTTP and scope["method"] == "GET":
            path = scope["path"]
            if (
                path.startswith(_PREFIX)
                and len(path) > _START
                and path.find("/", _START) < 0
                and not scope.get("root_path")
                and _valid_host(scope)
            ):
                scope["path_template"] = ROUTE
                scope["path_params"] = {"order_id": path[_START:]}
                await signed_in(scope, receive, send)
                return
        await app(scope, receive, send)

    return lane


def _valid_host(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"host":
            return is_valid_host(value)
    return True
