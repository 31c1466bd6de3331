"""OpenAPI documents that tell the truth, for both APIs.

- :func:`problem_responses` documents each refusal status of an operation with the
  problem-details shape (``application/problem+json``) and the exact ``code`` values it
  can carry (an ``enum``), from the same :class:`~shared.errors.DomainError` classes the
  handlers raise.
- :func:`finish_document` adds what Litestar does not derive: ``additionalProperties:
  false`` on request bodies that refuse unknown fields, limits that are settings
  (``maxItems`` of a track), and the headers refusals are sent with (``Retry-After`` of
  a 429 or 503, ``WWW-Authenticate`` of a 401) as response headers.
- :func:`schema_router` serves the documents themselves: JSON and YAML only, no UI page
  (those load scripts from a CDN), and a problem for any other name under ``/schema/``.
- :class:`Health` is the one health answer of both APIs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

import msgspec
from litestar import Litestar, Response, Router
from litestar.openapi import ResponseSpec
from litestar.openapi.plugins import JsonRenderPlugin, OpenAPIRenderPlugin, YamlRenderPlugin
from litestar.openapi.spec import OpenAPIHeader, OpenAPIType, Reference, Schema

from shared.errors import DependencyUnavailable, DomainError, Forbidden, Unauthenticated
from shared.infra.problems import problem

PROBLEM_MEDIA_TYPE = "application/problem+json"

# refusals any operation with a JSON body can answer, besides its own domain errors
INVALID_REQUEST = "invalid_request"  # 400: not UTF-8, not JSON, too deep, wrong shape
INVALID_PARAMETER = "invalid_parameter"  # 422: a path/query/header parameter out of bounds
PAYLOAD_TOO_LARGE = "payload_too_large"  # 413: a body over request_max_body_bytes
DEPENDENCY_UNAVAILABLE = "dependency_unavailable"  # 503 + Retry-After

Code = str | type[DomainError]

SIGNED_IN: Mapping[int, list[Code]] = {
    401: [Unauthenticated],  # no bearer token, or one not accepted (ADR 0006)
    403: [Forbidden],  # a known caller without the role or the ownership
    503: [DependencyUnavailable],  # the identity provider's keys cannot be had
}
"""Refusals of every operation behind sign-in (all but ``/health/*``), before its own."""

READ: Mapping[int, list[Code]] = {
    **SIGNED_IN,
    # a request refused before the handler runs (an invalid ``Host``; break8 saw it for
    # ``GET /orders/a%20b``) is answered by shared.infra.problems like every other 400,
    # never with Litestar's default ``{status_code, detail, extra}`` it documents
    400: [INVALID_REQUEST],
}
"""Refusals of every query (GET) operation behind sign-in, before its own."""


class ValidationDetail(msgspec.Struct, frozen=True, kw_only=True):
    """One failed check of a request (``errors`` of an ``invalid_*`` problem)."""

    message: str
    key: str | None = None
    source: str | None = None


class Health(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The health answer of both APIs: ``ok``, ``degraded`` (serving, a store is down but
    answers stay correct) or ``down``; each store the API uses is ``up`` or ``down``."""

    status: Literal["ok", "degraded", "down"]
    postgres: Literal["up", "down"] | None = None
    redis: Literal["up", "down"] | None = None


_HEADERS = {
    401: " Sent with `WWW-Authenticate: Bearer`.",
    429: " Sent with `Retry-After` (seconds).",
    503: " Sent with `Retry-After` (seconds).",
}

_RETRY_AFTER = OpenAPIHeader(
    schema=Schema(type=OpenAPIType.INTEGER, minimum=0),
    description="Seconds to wait before trying again.",
    required=True,
)
_RESPONSE_HEADERS: Mapping[str, Mapping[str, OpenAPIHeader]] = {
    "401": {
        "WWW-Authenticate": OpenAPIHeader(
            schema=Schema(type=OpenAPIType.STRING, enum=["Bearer"]),
            description="The scheme to sign in with (RFC 6750).",
            required=True,
        )
    },
    "429": {"Retry-After": _RETRY_AFTER},
    "503": {"Retry-After": _RETRY_AFTER},
}


def _code(code: Code) -> str:
    return code if isinstance(code, str) else code.code


def problem_responses(
    operation: str, by_status: Mapping[int, Iterable[Code]]
) -> dict[int, ResponseSpec]:
    """``responses=`` of a route: each status with the problem shape and its ``code`` enum.

    ``operation`` names the generated schemas (``<operation>Problem<status>``).
    """
    literal: Any = Literal
    responses: dict[int, ResponseSpec] = {}
    for status, codes in sorted(by_status.items()):
        names = sorted({_code(c) for c in codes})
        shape = msgspec.defstruct(
            f"{operation}Problem{status}",
            [
                ("type", str),
                ("title", str),
                ("status", literal[status]),
                ("detail", str),
                ("code", literal[tuple(names)]),
                ("errors", list[ValidationDetail] | None, None),
                ("service", str | None, None),
            ],
            kw_only=True,
            frozen=True,
        )
        headers = _HEADERS.get(status, "")
        responses[status] = ResponseSpec(
            data_container=shape,
            media_type=PROBLEM_MEDIA_TYPE,
            description=f"Problem details; `code` is one of: {', '.join(names)}.{headers}",
            generate_examples=False,
        )
    return responses


def finish_document(
    app: Litestar,
    *,
    closed: Iterable[type[msgspec.Struct]] = (),
    max_items: Mapping[tuple[str, str], int] | None = None,
    optional_bodies: Iterable[str] = (),
    parameters: Mapping[str, Schema] | None = None,
) -> None:
    """Add to ``app``'s OpenAPI document what Litestar does not derive.

    ``closed``: request bodies that refuse unknown fields get ``additionalProperties:
    false``. ``max_items``: ``{(schema, property): n}`` array limits that are settings.
    ``optional_bodies``: paths whose POST may come without a body. ``parameters``: the
    schema of each parameter so named, where the handler checks it itself. Every problem
    answer of a status sent with a header (401, 429, 503) declares that header.
    Call before the app serves its first request (the document is built once).
    """
    document = app.openapi_schema
    for path_item in (document.paths or {}).values():
        for operation in (path_item.get, path_item.post):
            for status, response in ((operation.responses or {}) if operation else {}).items():
                headers = _RESPONSE_HEADERS.get(status)
                if (
                    headers
                    and not isinstance(response, Reference)
                    and PROBLEM_MEDIA_TYPE in (response.content or {})
                ):
                    response.headers = {**(response.headers or {}), **headers}
            for parameter in (operation.parameters or []) if operation else []:
                schema = (parameters or {}).get(getattr(parameter, "name", ""))
                if schema is not None and not isinstance(parameter, Reference):
                    parameter.schema = schema
                    parameter.description = schema.description
    for path in optional_bodies:
        item = document.paths.get(path) if document.paths else None
        body = item.post.request_body if item and item.post else None
        if body is not None and not isinstance(body, Reference):
            body.required = False
    schemas = document.components.schemas if document.components else None
    if not schemas:
        return
    for struct in closed:
        schema = schemas.get(struct.__name__)
        if schema is not None:
            schema.additional_properties = False
    for (name, prop), limit in (max_items or {}).items():
        schema = schemas.get(name)
        target = schema.properties.get(prop) if schema and schema.properties else None
        if isinstance(target, Schema):
            target.max_items = limit
        elif isinstance(target, Reference):  # pragma: no cover - arrays are inline
            raise TypeError(f"{name}.{prop} is a reference, not an array")


SCHEMA_PATH = "/schema"


def schema_plugins() -> list[OpenAPIRenderPlugin]:
    """The document as ``/schema/openapi.json`` (also ``/schema``) and
    ``/schema/openapi.yaml`` (``.yml``); no Swagger/ReDoc/Elements/RapiDoc page: they
    load their scripts from a CDN, and nothing we serve loads anything from elsewhere."""
    return [JsonRenderPlugin(), YamlRenderPlugin()]


async def _not_found_as_problem(response: Response[Any]) -> Response[Any]:
    # Litestar answers an unknown name under /schema/ with an HTML page of its own
    if response.status_code == 404 and response.media_type != PROBLEM_MEDIA_TYPE:
        return problem(404, "not_found", "Not Found", "Not Found")
    return response


def schema_router() -> Router:
    """The router Litestar adds the :func:`schema_plugins` routes to (``openapi_router``),
    so that any other name under ``/schema/`` is the 404 ``not_found`` problem an unknown
    route is, not Litestar's HTML page. One per app."""
    return Router(
        SCHEMA_PATH,
        route_handlers=[],
        include_in_schema=False,
        after_request=_not_found_as_problem,
    )
