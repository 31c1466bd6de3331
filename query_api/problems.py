"""Problem details (RFC 9457) of the query API, each with a stable ``code``.

Bad parameters are the caller's to fix: 422 ``invalid_parameter``, never 400 or 500.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, NotFoundException, ValidationException
from litestar.types import ExceptionHandlersMap

from shared.errors import DependencyUnavailable, DomainError

MEDIA_TYPE = "application/problem+json"
log = logging.getLogger("query_api")


class Problem(msgspec.Struct, frozen=True, kw_only=True):
    type: str
    title: str
    status: int
    detail: str
    code: str


class InvalidParameter(DomainError):
    code, status, title = "invalid_parameter", 422, "A parameter is invalid"


def problem(
    status: int, code: str, title: str, detail: str, headers: dict[str, str] | None = None
) -> Response[Problem]:
    body = Problem(
        type=f"https://superscooters.dev/problems/{code}",
        title=title,
        status=status,
        detail=detail,
        code=code,
    )
    return Response(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def _domain(request: Request[Any, Any, Any], exc: DomainError) -> Response[Problem]:
    headers = {"Retry-After": "1"} if isinstance(exc, DependencyUnavailable) else None
    return problem(exc.status, exc.code, exc.title, exc.detail, headers)


def _http(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Problem]:
    if isinstance(exc, ValidationException):
        return problem(422, "invalid_parameter", InvalidParameter.title, _first_error(exc))
    if isinstance(exc, NotFoundException):
        return problem(404, "not_found", "Not found", str(exc.detail))
    return problem(exc.status_code, "http_error", str(exc.detail), str(exc.detail), exc.headers)


def _unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Problem]:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem(500, "internal_error", "Internal error", "An unexpected error occurred")


def _first_error(exc: ValidationException) -> str:
    if isinstance(exc.extra, list) and exc.extra:
        first = exc.extra[0]
        if isinstance(first, dict):
            return f"{first.get('key', 'parameter')}: {first.get('message', 'invalid')}"
    return str(exc.detail)


def exception_handlers() -> ExceptionHandlersMap:
    """Every error answered as problem details."""
    return {DomainError: _domain, HTTPException: _http, Exception: _unexpected}
