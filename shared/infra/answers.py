"""Answers a handler has already encoded, handed to the server without Litestar's
response machinery.

A handler returning a ``msgspec.Struct`` has Litestar build a ``Response``, resolve its
headers and media type and encode the body on every request; on the query API's ride
screen that was about a fifth of the route's CPU (docs/benchmarks.md, "issue 13"). A
handler annotated ``-> JsonAnswer`` returns this ASGI app instead (Litestar passes ASGI
apps through as they are), and documents its 200 answer with :func:`json_answer_spec`.
"""

from __future__ import annotations

from typing import Any

from litestar.openapi import ResponseSpec
from litestar.types import Receive, Scope, Send

_JSON = (b"content-type", b"application/json")


class JsonAnswer:
    """A ``200 application/json`` answer with ``body`` (JSON bytes) as it is."""

    __slots__ = ("_body",)

    def __init__(self, body: bytes) -> None:
        self._body = body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = self._body
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [_JSON, (b"content-length", b"%d" % len(body))],
            }
        )
        await send({"type": "http.response.body", "body": body, "more_body": False})


def json_answer_spec(shape: Any) -> ResponseSpec:
    """The OpenAPI 200 answer of a handler returning :class:`JsonAnswer` of ``shape``
    (what Litestar would document for a handler annotated ``-> shape``)."""
    return ResponseSpec(
        data_container=shape,
        description="Request fulfilled, document follows",
        generate_examples=False,
    )
