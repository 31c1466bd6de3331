"""The three ride commands answered without Litestar's per-request cycle (ADR 0012).

``POST /offers``, ``POST /orders`` and ``POST /orders/{order_id}/finish`` are each
asked once per ride flow; Litestar's routing, middleware chain, signature model and
response building cost more per request than the commands' own Python (issue 13,
docs/benchmarks.md "i13cmd"). :func:`serve_ride_commands` puts one ASGI layer in front
of the app's handler that answers a *plain* request for one of them itself:

- sign-in exactly as :func:`shared.infra.auth.bearer_auth` does it (same verifier, same
  401/503 answers), then the body decoded into the route's type by
  :func:`shared.infra.boundary.decode_as` (the request class Litestar uses does the same),
  then the same command function the Litestar handler calls;
- the answer with the same status, headers and bytes; an error answered by the same
  problem mapping as the app's exception handlers (shared/infra/problems.py);
- ``http_request_duration_seconds`` recorded under the route template Litestar gives.

Anything that is not plain goes to Litestar unchanged, which answers it as before: a
CORS request (``Origin``), a chunked, oversized or missing body (where one is
required), more than one ``Idempotency-Key``, an invalid ``Host``, another method or
path. The routes stay registered with Litestar, so the OpenAPI document (and its
security requirement) is the same, and the fallback answers exactly what the fast path
would (tests/e2e/test_fast_path.py compares the two, byte for byte).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

import msgspec
from litestar import Litestar, Request
from litestar.enums import ScopeType
from litestar.types import Message, Receive, Scope, Send

from shared.infra.auth import Principal, TokenVerifier, bearer_token
from shared.infra.boundary import decode_as, is_json_media_type, is_valid_host
from shared.infra.di import Slot
from shared.infra.logs import REQUEST_ID_HEADER, bind_request_id, unbind_request_id
from shared.infra.problems import error_answer
from shared.infra.request_metrics import route_observer

# (principal, decoded body, path parameter or "", raw body, Idempotency-Key or None)
Run = Callable[[Principal, Any, str, bytes, str | None], Awaitable[tuple[int, bytes]]]

_JSON_HEADERS = b"application/json"
_NOT_PLAIN = frozenset({b"origin", b"transfer-encoding"})  # CORS, a chunked body
_FINISH_PREFIX, _FINISH_SUFFIX = "/orders/", "/finish"


class FastRoute(NamedTuple):
    """One command served by the fast path: the Litestar route ``path`` it stands for
    (its template labels the metrics), the body's type and the command.
    ``optional_body``: an empty body is ``None``; else Litestar refuses it (400)."""

    path: str
    body_type: Any
    run: Run
    optional_body: bool = False


def serve_ride_commands(
    app: Litestar,
    verifier: Slot[TokenVerifier],
    *,
    offers: FastRoute,
    start: FastRoute,
    finish: FastRoute,
    app_name: str,
    max_body_bytes: int,
) -> None:
    """Answer plain requests of ``offers`` (``POST /offers``), ``start`` (``POST
    /orders``) and ``finish`` (``POST /orders/{id}/finish``) in front of ``app``'s
    handler; every other request goes to it. Call after the app is built and before it
    serves (it wraps ``app.asgi_handler``; :func:`shared.infra.logs.with_request_ids`
    wraps it afterwards, so request ids are given as for any route).
    """
    templates = {route.path: route.path_format for route in app.routes}
    decoders = {
        id(route): msgspec.json.Decoder(route.body_type) for route in (offers, start, finish)
    }
    labels = {id(route): templates[route.path] for route in (offers, start, finish)}
    observe = route_observer(app_name)
    litestar = app.asgi_handler

    def plain(scope: Scope, route: FastRoute) -> tuple[int, str | None] | None:
        """(content length, Idempotency-Key) of a request the fast path may answer."""
        length, key, keys = 0, None, 0
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit() or int(value) > max_body_bytes:
                    return None
                length = int(value)
            elif name == b"idempotency-key":
                key, keys = value.decode("latin-1"), keys + 1
            elif name == b"content-type" and value != b"application/json":
                if not is_json_media_type(value.decode("latin-1")):
                    return None  # Litestar refuses it (415)
            elif name in _NOT_PLAIN or (name == b"host" and not is_valid_host(value)):
                return None
        if keys > 1 or (length == 0 and not route.optional_body):
            return None
        return length, key

    async def answer(
        scope: Scope, receive: Receive, send: Send, route: FastRoute, param: str, head: Any
    ) -> None:
        started = time.perf_counter()
        length, key = head
        request_id, bound = bind_request_id(scope)
        status = 500
        try:
            status = await respond(scope, receive, send, route, param, length, key, request_id)
        finally:
            unbind_request_id(bound)
            observe("POST", labels[id(route)], status, time.perf_counter() - started)

    async def respond(
        scope: Scope,
        receive: Receive,
        send: Send,
        route: FastRoute,
        param: str,
        length: int,
        key: str | None,
        request_id: bytes,
    ) -> int:
        """Answer the request; returns the answer's status."""
        try:
            principal = await verifier.get().verify(bearer_token(scope))
            body = b""
            if length:
                chunks: list[bytes] = []
                more = True
                while more:
                    message = await receive()
                    if message["type"] != "http.request":
                        return 499  # the client went away: nobody to answer
                    chunks.append(message.get("body", b""))
                    more = message.get("more_body", False)
                body = b"".join(chunks)
            data = decode_as(body or b"null", decoders[id(route)])
            status, content = await route.run(principal, data, param, body, key)
        except Exception as exc:  # the app's exception handlers' answer, as Litestar gives it
            request: Request[Any, Any, Any] = Request(scope, receive, send)
            problem = error_answer(request, exc)

            async def send_with_id(message: Message) -> None:
                if message["type"] == "http.response.start":
                    headers = [*message.get("headers", ()), (REQUEST_ID_HEADER, request_id)]
                    message["headers"] = headers
                await send(message)

            await problem.to_asgi_response(None, request)(scope, receive, send_with_id)
            return problem.status_code or 500
        start_message: Message = {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", _JSON_HEADERS),
                (b"content-length", b"%d" % len(content)),
                (REQUEST_ID_HEADER, request_id),
            ],
        }
        await send(start_message)
        await send({"type": "http.response.body", "body": content, "more_body": False})
        return status

    async def ride_commands(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == ScopeType.HTTP and scope["method"] == "POST":
            path: str = scope["path"]
            route, param = None, ""
            if path == "/offers":
                route = offers
            elif path == "/orders":
                route = start
            elif path.startswith(_FINISH_PREFIX) and path.endswith(_FINISH_SUFFIX):
                param = path[len(_FINISH_PREFIX) : -len(_FINISH_SUFFIX)]
                if param and "/" not in param:
                    route = finish
            if route is not None and not scope.get("root_path"):
                head = plain(scope, route)
                if head is not None:
                    await answer(scope, receive, send, route, param, head)
                    return
        await litestar(scope, receive, send)

    app.asgi_handler = ride_commands
