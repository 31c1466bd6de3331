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

from shared.errors import DependencyUnavailable, DomainError
from shared.logs import get_logger

MEDIA_TYPE = "application/problem+json"
log = get_logger("problems")

_HTTP_CODES = {
    400: "invalid_request",
    401: "unauthorized",
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
    log.info("request refused", status=status, code=code, path=request.scope["path"])


def _domain_error(request: Request[Any, Any, Any], exc: DomainError) -> Response[dict[str, Any]]:
    _refused(request, exc.status, exc.code)
    headers = None
    if isinstance(exc, DependencyUnavailable):
        retry_after = getattr(request.app.state, "retry_after_seconds", 2)
        headers = {"Retry-After": str(retry_after)}
        return problem(exc.status, exc.code, exc.title, exc.detail, headers, service=exc.service)
    return problem(exc.status, exc.code, exc.title, exc.detail, headers)


def _http_error_handler(invalid_status: int, invalid_code: str) -> Any:
    def handle(request: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, Any]]:
        if isinstance(exc, ValidationException):
            _refused(request, invalid_status, invalid_code)
            # Litestar reports bad bodies and parameters as 400; they are the caller's to fix
            extra: dict[str, Any] = {"errors": exc.extra} if exc.extra else {}
            return problem(
                invalid_status, invalid_code, "Invalid request", _first_error(exc), None, **extra
            )
        status = exc.status_code
        code = _HTTP_CODES.get(status, "http_error")
        _refused(request, status, code)
        return problem(status, code, str(exc.detail), str(exc.detail), exc.headers)

    return handle


def _first_error(exc: ValidationException) -> str:
    """The first validation error as one line, e.g. ``limit: Expected `int```."""
    if isinstance(exc.extra, list) and exc.extra and isinstance(exc.extra[0], dict):
        first = exc.extra[0]
        return f"{first.get('key', 'request')}: {first.get('message', 'invalid')}"
    return str(exc.detail)


def _unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    log.error("unhandled error", method=request.method, path=request.url.path, exc_info=exc)
    return problem(500, "internal_error", "Internal error", "An unexpected error occurred")


def exception_handlers(
    *, invalid_status: int = 400, invalid_code: str = "invalid_request"
) -> ExceptionHandlersMap:
    """Litestar exception handlers that answer every error as problem details.

    ``invalid_status``/``invalid_code`` answer a body or parameter that fails validation.
    """
    return {
        DomainError: _domain_error,
        HTTPException: _http_error_handler(invalid_status, invalid_code),
        Exception: _unexpected,
    }
