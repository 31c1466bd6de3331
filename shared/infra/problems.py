"""Problem details (RFC 9457) for both APIs: one mapping from errors to answers.

Every refusal carries a stable machine-readable ``code``; the app switches on it.
Unexpected errors are logged with their traceback and answered as a bare 500
problem, never with the traceback itself.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.types import ExceptionHandlersMap

from shared.errors import DependencyUnavailable, DomainError, RateLimited, Unauthenticated, echo
from shared.infra.logs import get_logger
from shared.infra.outages import unavailable_dependency

MEDIA_TYPE = "application/problem+json"
log = get_logger("problems")

_HTTP_CODES = {
    400: "invalid_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "too_many_requests",
    503: "service_unavailable",
}


def problem(
    status: int,
    code: str,
    title: str,
    detail: str,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response[dict[str, Any]]:
    """A problem-details response."""
    body: dict[str, Any] = {
        "type": f"https://superscooters.dev/problems/{code}",
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        **extra,
    }
    return Response(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def _refused(request: Request[Any, Any, Any], status: int, code: str) -> None:
    # INFO: silent at the default level; the path is the caller's text, rendered escaped
    log.info("request refused", status=status, code=code, path=echo(request.scope["path"]))


def _domain_error(request: Request[Any, Any, Any], exc: DomainError) -> Response[dict[str, Any]]:
    _refused(request, exc.status, exc.code)
    headers = None
    if isinstance(exc, Unauthenticated):
        headers = {"WWW-Authenticate": "Bearer"}  # RFC 6750 section 3
    elif isinstance(exc, RateLimited):
        headers = {"Retry-After": str(exc.retry_after)}
    elif isinstance(exc, DependencyUnavailable):
        retry_after = getattr(request.app.state, "retry_after_seconds", 2)
        headers = {"Retry-After": str(retry_after)}
        return problem(exc.status, exc.code, exc.title, exc.detail, headers, service=exc.service)
    return problem(exc.status, exc.code, exc.title, exc.detail, headers)


def domain_error_answer(
    request: Request[Any, Any, Any], exc: DomainError
) -> Response[dict[str, Any]]:
    """The problem answer of a domain error (for middleware that answers on its own)."""
    return _domain_error(request, exc)


def _http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, Any]]:
    if isinstance(exc, ValidationException):
        # the same answer on both APIs: a body that is not what the operation takes is
        # 400 invalid_request; a path/query/header parameter out of bounds is 422
        # invalid_parameter
        if _from_body(exc):
            status, code, title = 400, "invalid_request", "Invalid request"
        else:
            status, code, title = 422, "invalid_parameter", "A parameter is invalid"
        _refused(request, status, code)
        extra: dict[str, Any] = {"errors": exc.extra} if exc.extra else {}
        return problem(status, code, title, _first_error(exc), None, **extra)
    status = exc.status_code
    code = _HTTP_CODES.get(status, "http_error")
    _refused(request, status, code)
    return problem(status, code, str(exc.detail), str(exc.detail), exc.headers)


def _from_body(exc: ValidationException) -> bool:
    errors = exc.extra if isinstance(exc.extra, list) else []
    sources = {e.get("source") for e in errors if isinstance(e, dict)}
    return not sources or "body" in sources


def _first_error(exc: ValidationException) -> str:
    """The first validation error as one line, e.g. ``limit: Expected `int```."""
    if isinstance(exc.extra, list) and exc.extra and isinstance(exc.extra[0], dict):
        first = exc.extra[0]
        return f"{first.get('key', 'request')}: {first.get('message', 'invalid')}"
    return str(exc.detail)


def _unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    service = unavailable_dependency(exc)
    if service is not None:  # a store is down or restarting: 503, not our bug
        log.warning(
            "dependency unavailable",
            service=service,
            method=request.method,
            path=echo(request.url.path),
            error=repr(exc),
        )
        return _domain_error(request, DependencyUnavailable(service))
    log.error("unhandled error", method=request.method, path=echo(request.url.path), exc_info=exc)
    return problem(500, "internal_error", "Internal error", "An unexpected error occurred")


def error_answer(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    """The answer :func:`exception_handlers` gives ``exc`` (for code that answers requests
    outside Litestar's routing, command_api/fast_path.py)."""
    if isinstance(exc, DomainError):
        return _domain_error(request, exc)
    if isinstance(exc, HTTPException):
        return _http_error(request, exc)
    return _unexpected(request, exc)


def exception_handlers() -> ExceptionHandlersMap:
    """Litestar exception handlers that answer every error as problem details.

    A body that fails validation is 400 ``invalid_request``, a parameter 422
    ``invalid_parameter`` (the same on both APIs).
    """
    return {
        DomainError: _domain_error,
        HTTPException: _http_error,
        Exception: _unexpected,
    }
