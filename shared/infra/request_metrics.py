"""Request latency per route for both APIs, at a few microseconds per request.

Litestar's Prometheus middleware builds a ``Request`` and updates four metric families
per request; on the query API's hot path that was a measurable share of the CPU. This
one records a single histogram (its ``_count`` is the request count) with a cached
child per (method, route template, status).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import Histogram

REQUEST_SECONDS = Histogram(
    "http_request_duration_seconds",
    "Time to answer a request, by route template and status",
    ["app", "method", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)


def route_observer(app_name: str) -> Callable[[str, str, int, float], None]:
    """``observe(method, route template, status, seconds)`` for ``app_name``: one
    ``http_request_duration_seconds`` sample, through a cached child per label set.

    For code that answers requests outside Litestar's routing (command_api/fast_path.py)
    and records them under the same labels as :func:`request_metrics`.
    """
    children: dict[tuple[str, str, int], Any] = {}

    def observe(method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        child = children.get(key)
        if child is None:
            child = children[key] = REQUEST_SECONDS.labels(app_name, *key)
        child.observe(seconds)

    return observe


def request_metrics(app_name: str) -> Any:
    """Litestar middleware factory recording ``http_request_duration_seconds``."""
    children: dict[tuple[str, str, int], Any] = {}

    def middleware(app: ASGIApp) -> ASGIApp:
        async def timed(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != ScopeType.HTTP:
                await app(scope, receive, send)
                return
            started = time.perf_counter()
            status = 500

            async def send_and_note(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            try:
                await app(scope, receive, send_and_note)
            finally:
                key = (scope.get("method", "?"), scope.get("path_template", "?"), status)
                child = children.get(key)
                if child is None:
                    child = children[key] = REQUEST_SECONDS.labels(app_name, *key)
                child.observe(time.perf_counter() - started)

        return timed

    return middleware
