"""The read lane: the ride screen and plain history pages answered before Litestar's
routing, in one layer (ADR 0011, ADR 0028).

The ride screen is most of the query API's traffic (a rider's app refreshes it while
riding). Through Litestar, routing, the exception middleware, the handler's signature
and dependency machinery and the response wrappers cost about as much CPU as the read
itself (docs/benchmarks.md, "i13read"). :func:`screen_lane` answers ``GET
/orders/<one path segment>`` and ``GET /users/<identifier>/orders`` with a plain query
string (:func:`plain_page_query`) with the same work and the same guards, and hands
every other request to Litestar unchanged:

- the same **request id**, **request metrics** and **sign-in** as every other route,
  done by the lane itself with the functions their middleware use
  (:func:`shared.infra.logs.bind_request_id`, :func:`shared.infra.request_metrics.route_observer`
  under the route template Litestar gives, :func:`shared.infra.auth.bearer_token` and the
  verifier with :func:`shared.infra.problems.domain_error_answer`), so a token is
  verified, refused (401) and counted, and every answer carries ``x-request-id``, exactly
  as elsewhere, without a coroutine layer and ``send`` wrapper per middleware
  (ADR 0028);
- the same **answer**: :func:`order_screen_json` and :func:`orders_page_json`, which
  the Litestar handlers (``query_api.app.get_order``, ``list_user_orders``: still the
  documented operations, and the ones serving other spellings of the paths) call too;
- the same **errors**: any exception is answered by the app's exception handlers
  (``shared.infra.problems``: 404 ``order_not_found``, 403 ``forbidden``, 422
  ``invalid_parameter`` for a cursor that is not ours, 503 ``service_unavailable`` when
  neither Redis nor Postgres answers, 500 for a bug, logged), as Litestar would;
- the same **Host check** Litestar makes before routing (an invalid ``Host`` goes to
  Litestar, which refuses it 400).

The lane is the outermost layer of the app's ``asgi_handler`` (``query_api.app``);
admission control runs before the app (``shared.infra.admission``).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from query_api.reads import Reads
from query_api.screens import InvalidCursor, OrdersPage, decode_cursor, encode_cursor, order_screen
from shared.errors import DomainError, Forbidden, InvalidParameter, OrderNotFound, echo
from shared.ids import parse_order_id
from shared.infra.auth import TokenVerifier, bearer_token, principal_of
from shared.infra.boundary import is_identifier, is_valid_host
from shared.infra.di import Slot
from shared.infra.logs import REQUEST_ID_HEADER, bind_request_id, unbind_request_id
from shared.infra.problems import domain_error_answer, exception_handlers
from shared.infra.request_metrics import route_observer

ROUTE = "/orders/{order_id}"  # the template Litestar gives the route (metrics label)
PAGE_ROUTE = "/users/{user_id}/orders"  # the history page's (ADR 0028)
_PREFIX = "/orders/"
_START = len(_PREFIX)
_USERS, _ORDERS = "/users/", "/orders"
_DEFAULT_LIMIT, _MAX_LIMIT, _MAX_CURSOR = 20, 100, 200  # list_user_orders' parameters
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


async def orders_page_json(
    reads: Reads, user: Any, user_id: str, limit: int, cursor: str | None
) -> bytes:
    """A page of ``user_id``'s orders, newest first, as JSON, for the signed-in ``user``
    (``limit`` 1..100; ``cursor``: the previous page's ``next_cursor``).

    Raises :class:`~shared.errors.Forbidden` when the caller is neither the user nor
    support (ADR 0006), :class:`~shared.errors.InvalidParameter` for a cursor that is
    not one of ours, and :class:`~shared.errors.DependencyUnavailable` when neither
    Redis nor Postgres answers.
    """
    if not principal_of(user).may_read(user_id):
        raise Forbidden(f"only {user_id} (or support) may read this")
    try:
        after = None if cursor is None else decode_cursor(cursor)
    except InvalidCursor as exc:
        raise InvalidParameter(f"cursor: {exc}") from exc
    page = await reads.user_orders(user_id, limit, after)
    now = datetime.now(UTC)
    answer = OrdersPage(
        items=[order_screen(v, now, reads.max_charged_seconds, reads.max_cost) for v in page.items],
        next_cursor=None if page.next_entry is None else encode_cursor(*page.next_entry),
    )
    return _encode(answer)


def plain_page_query(query: bytes) -> tuple[int, str | None] | None:
    """(limit, cursor) of a history page's query string when it is plain: nothing but
    ``limit`` (1..100, no leading zero) and ``cursor`` (1..200 characters, nothing
    percent-encoded), each at most once; else None (Litestar parses it, and answers 422
    what is out of bounds)."""
    limit, cursor = _DEFAULT_LIMIT, None
    if not query:
        return limit, cursor
    seen: set[bytes] = set()
    for part in query.split(b"&"):
        name, eq, value = part.partition(b"=")
        if not eq or name in seen:
            return None
        seen.add(name)
        if name == b"limit":
            if not value.isdigit() or len(value) > 3 or value[:1] == b"0":
                return None
            limit = int(value)
            if limit > _MAX_LIMIT:
                return None
        elif name == b"cursor":
            if not value or len(value) > _MAX_CURSOR or not value.isascii():
                return None
            if b"%" in value or b"+" in value:
                return None
            cursor = value.decode("ascii")
        else:
            return None
    return limit, cursor


def _handler_for(exc: Exception) -> Any:
    """The app's exception handler for ``exc`` (the most specific class it names)."""
    handlers = exception_handlers()
    for cls in type(exc).__mro__:
        handler = handlers.get(cls)
        if handler is not None:
            return handler
    return handlers[Exception]  # pragma: no cover - every exception is an Exception


def screen_lane(app: ASGIApp, reads: Slot[Reads], verifier: Slot[TokenVerifier]) -> ASGIApp:
    """``app`` (Litestar's ASGI handler, wrapped by :func:`shared.infra.logs.request_ids`)
    with ``GET /orders/{id}`` answered in front of it, in one layer (ADR 0028): the
    request id, the request metrics and sign-in as their middleware give them, without
    their coroutine layers and ``send`` wrappers."""
    observe = route_observer("query_api")

    async def screen(
        scope: Scope,
        receive: Receive,
        send: Send,
        request_id: bytes,
        page: tuple[str, int, str | None] | None,
    ) -> int:
        """Answer the screen (``page`` None) or the history page (``page``: user id,
        limit, cursor); returns the status the metrics record (noted before the answer
        is sent, as :func:`request_metrics` notes it)."""
        try:
            # sign-in as shared.infra.auth.bearer_auth does it: 401 / 503 on its own
            user = await verifier.get().verify(bearer_token(scope))
        except DomainError as exc:
            request: Request[Any, Any, Any] = Request(scope, receive, send)
            return await _answer(domain_error_answer(request, exc), request, request_id)
        scope["user"] = user
        try:
            if page is None:
                body = await order_screen_json(reads.get(), user, scope["path"][_START:])
            else:
                body = await orders_page_json(reads.get(), user, *page)
        except Exception as exc:
            request = Request(scope, receive, send)
            return await _answer(_handler_for(exc)(request, exc), request, request_id)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    _JSON,
                    (b"content-length", b"%d" % len(body)),
                    (REQUEST_ID_HEADER, request_id),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body, "more_body": False})
        return 200

    async def answer(
        scope: Scope,
        receive: Receive,
        send: Send,
        route: str,
        page: tuple[str, int, str | None] | None,
    ) -> None:
        scope["path_template"] = route
        started = time.perf_counter()
        request_id, bound = bind_request_id(scope)
        status = 500  # an exception out of the answer: as request_metrics records it
        try:
            status = await screen(scope, receive, send, request_id, page)
        finally:
            unbind_request_id(bound)
            observe("GET", route, status, time.perf_counter() - started)

    async def lane(scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == ScopeType.HTTP
            and scope["method"] == "GET"
            and not scope.get("root_path")
        ):
            path: str = scope["path"]
            if path.startswith(_PREFIX):
                if len(path) > _START and path.find("/", _START) < 0 and _valid_host(scope):
                    scope["path_params"] = {"order_id": path[_START:]}
                    await answer(scope, receive, send, ROUTE, None)
                    return
            elif path.startswith(_USERS) and path.endswith(_ORDERS):
                user_id = path[len(_USERS) : -len(_ORDERS)]
                if is_identifier(user_id) and _valid_host(scope):
                    query = plain_page_query(scope["query_string"])
                    if query is not None:
                        scope["path_params"] = {"user_id": user_id}
                        await answer(scope, receive, send, PAGE_ROUTE, (user_id, *query))
                        return
        await app(scope, receive, send)

    return lane


async def _answer(
    response: Response[Any], request: Request[Any, Any, Any], request_id: bytes
) -> int:
    """Send ``response`` (a problem answer) with the request's id, as the request-id
    middleware would add it; returns its status."""
    send = request.send  # the server's

    async def send_with_id(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", ()), (REQUEST_ID_HEADER, request_id)]
        await send(message)

    status = response.status_code or 500
    await response.to_asgi_response(None, request)(request.scope, request.receive, send_with_id)
    return status


def _valid_host(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"host":
            return is_valid_host(value)
    return True
